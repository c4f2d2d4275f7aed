"""PresenceService's privacy RPCs: audience, precisions, per-friend rules
and the caller's view of it all (GetSharingSettings).

Every RPC acts on the caller (identity from the token), checks everything
before it changes anything, and answers with the settings now in force. The
change itself is a SharingStore transaction that mirrors the new policy into
Redis and publishes it to the caller's friends' streams before it commits.
"""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2
from nearby.v1 import presence_service_pb2 as pb
from nearby.v1 import sharing_pb2

from mesh import sharing
from mesh.clock import now_ms
from mesh.errors import invalid_field
from mesh.identity import caller_id, check_user_id, check_user_ids
from mesh.sharing import LEVEL_OF, PRECISION_OF, Policy
from mesh.types import Context
from presence_svc import metrics
from presence_svc.friends import FriendCheck
from presence_svc.sharing_cache import SharingCache
from presence_svc.sharing_store import SharingStore
from presence_svc.store import VisibilityStore

AUDIENCES = (sharing.ALL_FRIENDS, sharing.ONLY, sharing.ALL_EXCEPT)


def timestamp(t: dt.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(t)
    return ts


def settings_message(
    policy: Policy, hidden: bool, until: dt.datetime | None, now_ms: int
) -> sharing_pb2.SharingSettings:
    out = sharing_pb2.SharingSettings(
        audience=policy.audience,  # type: ignore[arg-type]
        audience_user_ids=sorted(policy.members) if policy.audience != sharing.ALL_FRIENDS else [],
        default_precision=PRECISION_OF[policy.default],
        hidden=hidden,
    )
    for fid, (level, expire_ms) in sorted(policy.rules.items()):
        if expire_ms and expire_ms <= now_ms:
            continue  # ended; the timers remove it within a second
        rule = out.friend_precisions.add(friend_id=fid, precision=PRECISION_OF[level])
        if expire_ms:
            rule.expire_time.FromMilliseconds(expire_ms)
    if hidden and until is not None:
        out.hidden_until.CopyFrom(timestamp(until))
    return out


def precision_level(value: int, field: str) -> int:
    level = LEVEL_OF.get(value)
    if level is None:
        raise invalid_field(field, "must be PRECISION_PRECISE or PRECISION_APPROXIMATE")
    return int(level)


class SharingRpcs:
    """Mixed into PresenceServicer (one gRPC service)."""

    store: VisibilityStore
    sharing_store: SharingStore
    sharing_cache: SharingCache
    friends: FriendCheck
    friend_cap: int

    async def _settings(
        self, user_id: str, policy: Policy | None = None
    ) -> sharing_pb2.SharingSettings:
        if policy is None:
            policy = await self.sharing_store.policy(user_id)
        hidden, until = await self.store.visibility(user_id)
        return settings_message(policy, hidden, until, now_ms())

    async def SetAudience(
        self, request: pb.SetAudienceRequest, context: Context
    ) -> pb.SetAudienceResponse:
        user_id = caller_id(context)
        if request.audience not in AUDIENCES:
            raise invalid_field(
                "audience", "must be AUDIENCE_ALL_FRIENDS, AUDIENCE_ONLY or AUDIENCE_ALL_EXCEPT"
            )
        ids = check_user_ids(request.user_ids, self.friend_cap)
        if request.audience == sharing.ALL_FRIENDS and ids:
            raise invalid_field("user_ids", "must be empty with AUDIENCE_ALL_FRIENDS")
        members = sorted(set(ids))
        await self.friends.require_friends(user_id, members, "user_ids")
        policy = await self.sharing_store.set_audience(
            user_id, request.audience, members, self.sharing_cache.publish
        )
        metrics.SHARING_CHANGES.labels("SetAudience").inc()
        return pb.SetAudienceResponse(settings=await self._settings(user_id, policy))

    async def SetDefaultPrecision(
        self, request: pb.SetDefaultPrecisionRequest, context: Context
    ) -> pb.SetDefaultPrecisionResponse:
        user_id = caller_id(context)
        precision_level(request.precision, "precision")
        policy = await self.sharing_store.set_default(
            user_id, request.precision, self.sharing_cache.publish
        )
        metrics.SHARING_CHANGES.labels("SetDefaultPrecision").inc()
        return pb.SetDefaultPrecisionResponse(settings=await self._settings(user_id, policy))

    async def SetFriendPrecision(
        self, request: pb.SetFriendPrecisionRequest, context: Context
    ) -> pb.SetFriendPrecisionResponse:
        user_id = caller_id(context)
        fid = check_user_id(request.friend_id, "friend_id")
        precision_level(request.precision, "precision")
        kind = request.WhichOneof("expiration")
        end = sharing.expiry(
            "",
            request.expire_time if kind == "expire_time" else None,
            request.ttl if kind == "ttl" else None,
            dt.datetime.now(dt.UTC),
        )
        await self.friends.require_friends(user_id, [fid], "friend_id")
        policy = await self.sharing_store.set_rule(
            user_id, fid, request.precision, end, self.sharing_cache.publish
        )
        metrics.SHARING_CHANGES.labels("SetFriendPrecision").inc()
        return pb.SetFriendPrecisionResponse(settings=await self._settings(user_id, policy))

    async def ClearFriendPrecision(
        self, request: pb.ClearFriendPrecisionRequest, context: Context
    ) -> pb.ClearFriendPrecisionResponse:
        user_id = caller_id(context)
        fid = check_user_id(request.friend_id, "friend_id")
        policy = await self.sharing_store.clear_rule(user_id, fid, self.sharing_cache.publish)
        metrics.SHARING_CHANGES.labels("ClearFriendPrecision").inc()
        return pb.ClearFriendPrecisionResponse(settings=await self._settings(user_id, policy))

    async def GetSharingSettings(
        self, request: pb.GetSharingSettingsRequest, context: Context
    ) -> pb.GetSharingSettingsResponse:
        user_id = caller_id(context)
        return pb.GetSharingSettingsResponse(settings=await self._settings(user_id))

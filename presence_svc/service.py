"""The servicers of presence_svc: public PresenceService (ghost mode of the
caller) and internal PresenceQueryService (user ids in the request body)."""

from __future__ import annotations

import datetime as dt

from nearby.v1 import presence_service_pb2, presence_service_pb2_grpc

from mesh import sharing
from mesh.errors import invalid_field
from mesh.identity import caller_id, check_user_id, check_user_ids
from mesh.internal.v1 import (
    presence_query_service_pb2,
    presence_query_service_pb2_grpc,
    user_data_service_pb2,
    user_data_service_pb2_grpc,
)
from mesh.types import Context
from presence_svc import metrics
from presence_svc.cache import PresenceCache
from presence_svc.friends import FriendCheck
from presence_svc.sharing import SharingRpcs, timestamp
from presence_svc.sharing_cache import SharingCache
from presence_svc.sharing_store import SharingStore
from presence_svc.store import VisibilityStore

VISIBLE = presence_service_pb2.VISIBILITY_VISIBLE
HIDDEN = presence_service_pb2.VISIBILITY_HIDDEN


class PresenceServicer(SharingRpcs, presence_service_pb2_grpc.PresenceServiceServicer):
    def __init__(
        self,
        store: VisibilityStore,
        cache: PresenceCache,
        privacy: tuple[SharingStore, SharingCache, FriendCheck, int],
    ) -> None:
        self.store = store
        self.cache = cache
        self.sharing_store, self.sharing_cache, self.friends, self.friend_cap = privacy

    async def SetVisibility(
        self, request: presence_service_pb2.SetVisibilityRequest, context: Context
    ) -> presence_service_pb2.SetVisibilityResponse:
        user_id = caller_id(context)
        if request.visibility not in (VISIBLE, HIDDEN):
            raise invalid_field("visibility", "must be VISIBILITY_VISIBLE or VISIBILITY_HIDDEN")
        hidden = request.visibility == HIDDEN
        kind = request.WhichOneof("expiration")
        if kind is not None and not hidden:
            raise invalid_field(kind, "is only allowed with VISIBILITY_HIDDEN")
        until = sharing.expiry(
            "",
            request.expire_time if kind == "expire_time" else None,
            request.ttl if kind == "ttl" else None,
            dt.datetime.now(dt.UTC),
        )
        # Postgres first (the source of truth), then the Redis mirror + event.
        await self.store.set_hidden(user_id, hidden, until)
        if hidden:
            await self.cache.hide(user_id)
        else:
            await self.cache.show(user_id)
        metrics.VISIBILITY_CHANGES.labels("hidden" if hidden else "visible").inc()
        resp = presence_service_pb2.SetVisibilityResponse(visibility=request.visibility)
        if until is not None:
            resp.expire_time.CopyFrom(timestamp(until))
        return resp

    async def GetVisibility(
        self, request: presence_service_pb2.GetVisibilityRequest, context: Context
    ) -> presence_service_pb2.GetVisibilityResponse:
        user_id = caller_id(context)
        hidden, until = await self.store.visibility(user_id)
        resp = presence_service_pb2.GetVisibilityResponse(visibility=HIDDEN if hidden else VISIBLE)
        if until is not None:
            resp.expire_time.CopyFrom(timestamp(until))
        return resp


class UserDataServicer(user_data_service_pb2_grpc.UserDataServiceServicer):
    """Internal: friend_svc erases a deleted account's ghost-mode setting and
    sharing policy (and the account's place in other users' policies)."""

    def __init__(
        self,
        store: VisibilityStore,
        cache: PresenceCache,
        sharing_store: SharingStore,
        sharing_cache: SharingCache,
    ) -> None:
        self.store = store
        self.cache = cache
        self.sharing_store = sharing_store
        self.sharing_cache = sharing_cache

    async def DeleteUserData(
        self, request: user_data_service_pb2.DeleteUserDataRequest, context: Context
    ) -> user_data_service_pb2.DeleteUserDataResponse:
        user_id = check_user_id(request.user_id)
        # Postgres first: a flag reload in between cannot bring the flag back.
        rows = await self.store.delete(user_id)
        rows += await self.sharing_store.forget(user_id, self.sharing_cache.publish)
        flags = await self.cache.forget(user_id) + await self.sharing_cache.forget(user_id)
        return user_data_service_pb2.DeleteUserDataResponse(deleted_count=rows + flags)


class PresenceQueryServicer(presence_query_service_pb2_grpc.PresenceQueryServiceServicer):
    def __init__(self, cache: PresenceCache, friend_cap: int) -> None:
        self.cache = cache
        self.friend_cap = friend_cap

    async def BatchGetPresence(
        self, request: presence_query_service_pb2.BatchGetPresenceRequest, context: Context
    ) -> presence_query_service_pb2.BatchGetPresenceResponse:
        ids = check_user_ids(request.user_ids, self.friend_cap)
        resp = presence_query_service_pb2.BatchGetPresenceResponse()
        for info in await self.cache.batch_presence(ids):
            resp.presences.add(
                user_id=info.user_id,
                active=info.active,
                last_active_ms=info.last_active_ms,
                hidden=info.hidden,
            )
        return resp

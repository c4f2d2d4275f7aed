"""Whose reports may be recorded: users with an account.

friend_svc owns accounts. The report script (cache.py) records a report only
while the user's `acct:{uid}` marker exists, so the hot path pays one EXISTS
in a script it runs anyway. A missing marker (a user's first report, after
ACCOUNT_CONFIRM_MS, or after Redis lost its data) makes the script record
nothing and answer UNKNOWN; the ingest then asks friend_svc here and runs the
script again for the users it confirmed. Everyone else's report is rejected
(NOT_FOUND): an unknown or deleted user's report changes nothing.

A confirmation that races an account deletion must not bring the marker
back: the marker is set (NX) and friend_svc is asked a second time; a user
gone by then loses the marker again. Deletion marks the user first
(friend_svc answers "gone" from then on) and deletes the marker after
(erase.py), so either the deletion's DEL comes after the SET, or the second
question comes after the mark.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import grpc

from mesh import keys, resp
from mesh.internal.v1 import friend_graph_service_pb2 as fg
from mesh.internal.v1 import friend_graph_service_pb2_grpc as fg_grpc
from mesh.redis import RedisEngine, check
from mesh.upstream import upstream_error

PER_CALL = 2000  # ids per ExistingUsers call (friend_svc's limit)
TIMEOUT_S = 2.0


class Accounts:
    def __init__(
        self,
        engine: RedisEngine,
        friend: grpc.aio.Channel,
        confirm_ms: int = keys.ACCOUNT_CONFIRM_MS,
    ) -> None:
        self.engine = engine
        self.friends = fg_grpc.FriendGraphServiceStub(friend)
        self.confirm_ms = confirm_ms

    async def confirm(self, user_ids: Iterable[str]) -> set[str]:
        """The users among these that have an account, their markers set.
        Raises UNAVAILABLE (a ServiceError) when friend_svc cannot answer."""
        ids = sorted(set(user_ids))
        found = await self._existing(ids)
        if not found:
            return set()
        ttl = self.confirm_ms
        check(
            await self.engine.execute(
                [
                    (k, resp.command(b"SET", k, b"1", b"NX", b"PX", ttl))
                    for k in (keys.account(u) for u in sorted(found))
                ]
            )
        )
        still = await self._existing(sorted(found))
        gone = found - still
        if gone:
            check(
                await self.engine.execute(
                    [(k, resp.command(b"DEL", k)) for k in (keys.account(u) for u in sorted(gone))]
                )
            )
        return still

    async def _existing(self, ids: Sequence[str]) -> set[str]:
        chunks = [ids[i : i + PER_CALL] for i in range(0, len(ids), PER_CALL)]
        try:
            replies = await asyncio.gather(
                *(
                    self.friends.ExistingUsers(
                        fg.ExistingUsersRequest(user_ids=chunk), timeout=TIMEOUT_S
                    )
                    for chunk in chunks
                )
            )
        except grpc.aio.AioRpcError as exc:
            raise upstream_error(exc, "checking the reporting users' accounts") from exc
        return {u for r in replies for u in r.user_ids}

"""Account deletion (FriendService.DeleteUser), step by step.

friend_svc owns users, so it runs the deletion; the data other services keep
about a user is theirs to delete, through the internal UserDataService that
each of them serves (location_svc: history, buffered history, cached
location, presence index; presence_svc: ghost-mode setting and flag). No
service touches another's tables or keys.

The steps, in this order:

1. mark the user row `deleting_since` (Postgres). From here on the user is
   invisible to every call of friend_svc: GetUser, friend lists (the
   fan-out's ListAllFriends too), request lists, new requests and accepts;
2. publish on the inboxes: FriendRemoved(user) to each friend (their live
   streams push FriendGone(UNFRIENDED)), AccountDeleted to the user (their
   streams end with NOT_FOUND, reason ACCOUNT_DELETED);
3. DeleteUserData on location_svc and on presence_svc;
4. delete friendships (both directions), friend requests (both directions)
   and the user row, in one transaction.

Each step is idempotent and the user row goes last, so a call that failed
part way (UNAVAILABLE) leaves a user marked and invisible, and a retry runs
every step again and finishes. A retry that never comes is made by
friend_svc itself (`resume`, every minute, for deletions older than a
minute). NOT_FOUND means there is no such user: never created, or deleted
completely.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
from prometheus_client import Counter

from mesh.errors import Unavailable
from mesh.internal.v1 import user_data_service_pb2 as ud
from mesh.internal.v1 import user_data_service_pb2_grpc as ud_grpc
from mesh.outages import RETRY_AFTER_S

from .inbox import Inbox
from .store import FriendStore

log = logging.getLogger("friend_svc.erasure")

CALL_TIMEOUT_S = 10.0
RESUME_AFTER_S = 60.0

DELETIONS = Counter(
    "friend_user_deletions_total", "Account deletions by outcome (done, failed)", ["outcome"]
)


class UserDataClient:
    """A service that keeps per-user data, reached by its UserDataService."""

    def __init__(self, name: str, channel: grpc.aio.Channel) -> None:
        self.name = name
        self.stub = ud_grpc.UserDataServiceStub(channel)

    async def delete(self, user_id: str) -> int:
        try:
            resp = await self.stub.DeleteUserData(
                ud.DeleteUserDataRequest(user_id=user_id), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"deleting the user's data in {self.name} failed ({exc.code().name}): retry; "
                "the user stays invisible meanwhile",
                reason="UPSTREAM_UNAVAILABLE",
                retry_after_s=RETRY_AFTER_S,
                service=self.name,
            ) from exc
        return resp.deleted_count


class AccountEraser:
    def __init__(self, store: FriendStore, inbox: Inbox, others: Sequence[UserDataClient]) -> None:
        self.store = store
        self.inbox = inbox
        self.others = list(others)

    async def erase(self, user_id: str) -> None:
        """Run every step (see the module docstring); raises NOT_FOUND for an
        unknown user and UNAVAILABLE when a step failed (retry)."""
        await self.store.mark_deleting(user_id)
        try:
            await self._finish(user_id)
        except Exception:
            DELETIONS.labels("failed").inc()
            raise
        DELETIONS.labels("done").inc()

    async def _finish(self, user_id: str) -> None:
        friends = await self.store.friend_ids(user_id)
        await self.inbox.account_deleted(user_id, friends)
        counts = await asyncio.gather(*(other.delete(user_id) for other in self.others))
        rows = await self.store.purge_user(user_id)
        log.info(
            "user deleted",
            extra={"user": user_id, "friends": len(friends), "rows": rows + sum(counts)},
        )

    async def resume(self) -> int:
        """Finish deletions that failed part way and were not retried."""
        done = 0
        for user_id in await self.store.unfinished_deletions(RESUME_AFTER_S):
            try:
                await self._finish(user_id)
                done += 1
            except Exception as exc:
                log.warning("deletion of %s still unfinished: %s", user_id, exc)
        return done

    async def run(self, interval_s: float = RESUME_AFTER_S) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.resume()
            except Exception:
                log.exception("resuming unfinished deletions failed; retrying later")

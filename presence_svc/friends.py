"""Who the caller's friends are (friend_svc's internal FriendGraphService),
to check the ids of an audience list or a friend rule."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from mesh.errors import NotFound
from mesh.internal.v1 import friend_graph_service_pb2 as fg
from mesh.internal.v1 import friend_graph_service_pb2_grpc as fg_grpc
from mesh.upstream import upstream_error

CALL_TIMEOUT_S = 5.0


class FriendCheck:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = fg_grpc.FriendGraphServiceStub(channel)

    async def require_friends(self, user_id: str, ids: Sequence[str], field: str) -> None:
        """NOT_FOUND naming every id that is not a friend of `user_id`."""
        if not ids:
            return
        try:
            resp = await self.stub.ListAllFriends(
                fg.ListAllFriendsRequest(user_id=user_id), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise upstream_error(exc, "loading your friend list") from exc
        friends = {r.user_id for r in resp.friends}
        unknown = [i for i in ids if i not in friends]
        if unknown:
            shown = ", ".join(unknown[:20]) + (
                f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
            )
            raise NotFound(
                f"{field}: not your friends: {shown}; nothing was changed",
                reason="NOT_A_FRIEND",
                field=field,
                ids=",".join(unknown[:100]),
            )

"""The friend service's gRPC doors: the public FriendService and the internal
FriendGraphService used by the fan-out service."""

from __future__ import annotations

import uuid
from datetime import datetime

from google.protobuf import timestamp_pb2
from nearby.v1 import friend_service_pb2 as pb2
from nearby.v1 import friend_service_pb2_grpc as pb2_grpc
from nearby.v1 import user_pb2

from mesh.errors import InvalidArgument, PermissionDenied, invalid_field
from mesh.identity import caller_id, check_user_id, check_user_ids, is_admin, require_admin
from mesh.internal.v1 import friend_graph_service_pb2 as graph_pb2
from mesh.internal.v1 import friend_graph_service_pb2_grpc as graph_grpc
from mesh.paging import page_size
from mesh.settings import Settings
from mesh.types import Context

from . import store as st
from .erasure import AccountEraser
from .inbox import Inbox
from .validation import (
    check_display_name,
    friends_position,
    friends_token,
    requests_position,
    requests_token,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

_INCOMING = (
    pb2.FRIEND_REQUEST_DIRECTION_UNSPECIFIED,
    pb2.FRIEND_REQUEST_DIRECTION_INCOMING,
)


class FriendService(pb2_grpc.FriendServiceServicer):
    def __init__(
        self, store: st.FriendStore, inbox: Inbox, settings: Settings, eraser: AccountEraser
    ) -> None:
        self.store, self.inbox, self.settings = store, inbox, settings
        self.eraser = eraser

    async def CreateUser(
        self, request: pb2.CreateUserRequest, context: Context
    ) -> pb2.CreateUserResponse:
        require_admin(context)
        user_id = check_user_id(request.user_id, "user_id") if request.user_id else uuid.uuid4().hex
        name = check_display_name(request.display_name)
        user = await self.store.create_user(user_id, name)
        return pb2.CreateUserResponse(user=_user(user))

    async def GetUser(self, request: pb2.GetUserRequest, context: Context) -> pb2.GetUserResponse:
        me = caller_id(context)
        if not request.user_id:
            return pb2.GetUserResponse(user=_user(await self.store.get_user(me, caller=True)))
        user_id = check_user_id(request.user_id, "user_id")
        return pb2.GetUserResponse(user=_user(await self.store.get_user(user_id)))

    async def SendFriendRequest(
        self, request: pb2.SendFriendRequestRequest, context: Context
    ) -> pb2.SendFriendRequestResponse:
        me = caller_id(context)
        to_id = check_user_id(request.to_user_id, "to_user_id")
        if to_id == me:
            raise InvalidArgument(
                "to_user_id: you cannot send a friend request to yourself",
                reason="SELF_FRIEND_REQUEST",
                field="to_user_id",
            )
        req = await self.store.send_request(me, to_id)
        return pb2.SendFriendRequestResponse(friend_request=_request(req))

    async def AcceptFriendRequest(
        self, request: pb2.AcceptFriendRequestRequest, context: Context
    ) -> pb2.AcceptFriendRequestResponse:
        me = caller_id(context)
        from_id = _other(request.from_user_id, "from_user_id", me)
        done = await self.store.accept_request(from_id, me, self.settings.friend_cap)
        a, b = done.accepter, done.requester
        await self.inbox.friends_added(a.user_id, a.display_name, b.user_id, b.display_name)
        return pb2.AcceptFriendRequestResponse(
            friend=pb2.Friend(user=_user(b), friends_since=_ts(done.since))
        )

    async def DeclineFriendRequest(
        self, request: pb2.DeclineFriendRequestRequest, context: Context
    ) -> pb2.DeclineFriendRequestResponse:
        me = caller_id(context)
        from_id = _other(request.from_user_id, "from_user_id", me)
        await self.store.decline_request(from_id, me)
        return pb2.DeclineFriendRequestResponse()

    async def ListFriendRequests(
        self, request: pb2.ListFriendRequestsRequest, context: Context
    ) -> pb2.ListFriendRequestsResponse:
        me = caller_id(context)
        if request.direction not in (*_INCOMING, pb2.FRIEND_REQUEST_DIRECTION_OUTGOING):
            raise invalid_field("direction", "must be INCOMING or OUTGOING")
        incoming = request.direction in _INCOMING
        size = page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = requests_position(request.page_token, incoming)
        page, more = await self.store.list_requests(me, incoming=incoming, after=after, limit=size)
        token = ""
        if more:
            last = page[-1]
            other = last.from_user if incoming else last.to_user
            token = requests_token(incoming, (last.created_at, other.user_id))
        return pb2.ListFriendRequestsResponse(
            friend_requests=[_request(r) for r in page], next_page_token=token
        )

    async def RemoveFriend(
        self, request: pb2.RemoveFriendRequest, context: Context
    ) -> pb2.RemoveFriendResponse:
        me = caller_id(context)
        friend_id = _other(request.friend_user_id, "friend_user_id", me)
        await self.store.remove_friend(me, friend_id)
        await self.inbox.friends_removed(me, friend_id)
        return pb2.RemoveFriendResponse()

    async def ListFriends(
        self, request: pb2.ListFriendsRequest, context: Context
    ) -> pb2.ListFriendsResponse:
        me = caller_id(context)
        size = page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = friends_position(request.page_token)
        page, more = await self.store.list_friends(me, after=after, limit=size)
        return pb2.ListFriendsResponse(
            friends=[pb2.Friend(user=_user(f.user), friends_since=_ts(f.since)) for f in page],
            next_page_token=friends_token(page[-1].user.user_id) if more else "",
        )

    async def DeleteUser(
        self, request: pb2.DeleteUserRequest, context: Context
    ) -> pb2.DeleteUserResponse:
        me = caller_id(context)
        user_id = check_user_id(request.user_id, "user_id") if request.user_id else me
        if user_id != me and not is_admin(context):
            raise PermissionDenied(
                "you can only delete your own account (another user's needs a token with "
                "the admin claim)",
                reason="NOT_OWNER",
            )
        await self.eraser.erase(user_id)
        return pb2.DeleteUserResponse(user_id=user_id)


class FriendGraphService(graph_grpc.FriendGraphServiceServicer):
    """Internal: the whole friend list in one call (the user id is in the body)."""

    def __init__(self, store: st.FriendStore) -> None:
        self.store = store

    async def ListAllFriends(
        self, request: graph_pb2.ListAllFriendsRequest, context: Context
    ) -> graph_pb2.ListAllFriendsResponse:
        user_id = check_user_id(request.user_id, "user_id")
        friends = await self.store.all_friends(user_id)
        return graph_pb2.ListAllFriendsResponse(
            friends=[
                graph_pb2.FriendRef(user_id=f.user_id, display_name=f.display_name) for f in friends
            ]
        )

    async def ExistingUsers(
        self, request: graph_pb2.ExistingUsersRequest, context: Context
    ) -> graph_pb2.ExistingUsersResponse:
        ids = check_user_ids(request.user_ids, MAX_EXISTING_USERS, limit_is="per call")
        found = await self.store.existing(sorted(set(ids))) if ids else []
        return graph_pb2.ExistingUsersResponse(user_ids=found)


MAX_EXISTING_USERS = 2000
"""Ids per ExistingUsers call (location_svc asks for one batch of reports)."""


def _other(value: str, field: str, me: str) -> str:
    """Another user's id given in the body; naming oneself is INVALID_ARGUMENT."""
    user_id = check_user_id(value, field)
    if user_id == me:
        raise invalid_field(field, "must be another user, not you")
    return user_id


def _ts(at: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


def _user(user: st.User) -> user_pb2.User:
    return user_pb2.User(
        user_id=user.user_id, display_name=user.display_name, create_time=_ts(user.created_at)
    )


def _request(req: st.FriendRequest) -> pb2.FriendRequest:
    return pb2.FriendRequest(
        from_user=_user(req.from_user), to_user=_user(req.to_user), create_time=_ts(req.created_at)
    )

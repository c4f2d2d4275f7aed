"""``NearbyClient``: one gRPC channel to the nearby edge (Envoy) and every call."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Literal, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from nearby.backoff import BackoffPolicy
from nearby.errors import from_rpc_error
from nearby.events import Page
from nearby.models import Friend, FriendRequest, Location, ReportResult, SharingSettings, User
from nearby.session import NearbySession, check_position
from nearby.v1 import (
    friend_service_pb2,
    friend_service_pb2_grpc,
    geo_pb2,
    location_service_pb2,
    location_service_pb2_grpc,
    nearby_service_pb2,
    nearby_service_pb2_grpc,
    presence_service_pb2,
    presence_service_pb2_grpc,
)

__all__ = ["DEFAULT_OPTIONS", "NearbyClient"]

SDK_VERSION = "0.1.0"

_T = TypeVar("_T")

# Unary calls are retried by gRPC itself when the server was not reached
# (UNAVAILABLE); the stream does its own reconnecting in NearbySession.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "nearby.v1.FriendService"},
                    {"service": "nearby.v1.LocationService"},
                    {"service": "nearby.v1.PresenceService"},
                    {"service": "nearby.v1.NearbyService", "method": "ListNearbyFriends"},
                ],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)

DEFAULT_OPTIONS: Sequence[tuple[str, int | str]] = (
    # HTTP/2 pings keep an idle stream's connection alive through NATs and
    # detect a dead peer; Envoy's listener is configured to accept them.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC's own reconnect backoff of the connection (under the session's):
    # capped like the session's so an edge that comes back is found quickly.
    ("grpc.max_reconnect_backoff_ms", 30_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", _SERVICE_CONFIG),
    ("grpc.primary_user_agent", f"nearby-python-sdk/{SDK_VERSION}"),
)
"""Channel options of every NearbyClient (``options=`` entries override them)."""

TokenSource = str | Callable[[], str]

Direction = Literal["incoming", "outgoing"]


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware (e.g. datetime.now(UTC))")
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


class NearbyClient:
    """An async client of the nearby API, through the edge.

    Use it as an async context manager::

        async with NearbyClient("localhost:8080", token, secure=False) as client:
            session = client.connect(52.52, 13.405)
            async for event in session: ...

    Args:
        target: the edge address, "host:port".
        token: the user's bearer token (a JWT), or a function returning the
            current one (called for every call and every reconnect, so it
            can refresh). Sent as ``authorization: Bearer <token>``.
        secure: TLS with the system roots (default) or plaintext (local).
        credentials: custom channel credentials (implies ``secure``).
        timeout: deadline of each unary call, in seconds.
        backoff: reconnect policy of the sessions this client opens.
        options: extra gRPC channel options (override :data:`DEFAULT_OPTIONS`).
    """

    def __init__(
        self,
        target: str,
        token: TokenSource | None = None,
        *,
        secure: bool = True,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 10.0,
        backoff: BackoffPolicy | None = None,
        options: Sequence[tuple[str, int | str]] = (),
    ) -> None:
        self.target = target
        self._token = token
        self._secure = secure or credentials is not None
        self._credentials = credentials
        self.timeout = timeout
        self.backoff = backoff or BackoffPolicy()
        overridden = {k for k, _ in options}
        self._options = [o for o in DEFAULT_OPTIONS if o[0] not in overridden] + list(options)
        self._channel: grpc.aio.Channel | None = None
        self._sessions: set[NearbySession] = set()

    # -- lifecycle ----------------------------------------------------------

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying channel (created on first use)."""
        if self._channel is None:
            if self._secure:
                creds = self._credentials or grpc.ssl_channel_credentials()
                self._channel = grpc.aio.secure_channel(self.target, creds, options=self._options)
            else:
                self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
        return self._channel

    async def __aenter__(self) -> NearbyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes every open session and the channel."""
        for session in list(self._sessions):
            await session.close()
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    def metadata(self, token: str | None = None) -> tuple[tuple[str, str], ...]:
        """The call metadata: the bearer token, if any."""
        value = token if token is not None else self._current_token()
        return (("authorization", f"Bearer {value}"),) if value else ()

    def _current_token(self) -> str:
        token = self._token
        if token is None:
            return ""
        return token if isinstance(token, str) else token()

    async def _call(self, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None

    # -- the live stream ----------------------------------------------------

    def connect(
        self,
        latitude: float,
        longitude: float,
        *,
        backoff: BackoffPolicy | None = None,
        token: TokenSource | None = None,
    ) -> NearbySession:
        """A live session starting at this location (opens on first use).

        ``token`` overrides the client's token for this session (e.g. a load
        generator multiplexing many users over one channel). Raises
        ValueError for coordinates out of range.
        """
        stub = nearby_service_pb2_grpc.NearbyServiceStub(self.channel)

        def metadata() -> tuple[tuple[str, str], ...]:
            if token is None:
                return self.metadata()
            return self.metadata(token if isinstance(token, str) else token())

        session = NearbySession(
            stub,
            metadata,
            latitude,
            longitude,
            backoff=backoff or self.backoff,
            on_close=self._sessions.discard,
            refreshable=callable(token if token is not None else self._token),
        )
        self._sessions.add(session)
        return session

    async def list_nearby_friends(self, page_token: str = "", page_size: int = 0) -> Page:
        """One page of your nearby friends, from your last reported location.

        Raises NearbyError FAILED_PRECONDITION when you have no recent location.
        """
        stub = nearby_service_pb2_grpc.NearbyServiceStub(self.channel)
        request = nearby_service_pb2.ListNearbyFriendsRequest(
            page_token=page_token, page_size=page_size
        )
        response = await self._call(
            stub.ListNearbyFriends(request, metadata=self.metadata(), timeout=self.timeout)
        )
        return Page.from_proto(response)

    # -- users and friends --------------------------------------------------

    def _friends(self) -> friend_service_pb2_grpc.FriendServiceAsyncStub:
        return friend_service_pb2_grpc.FriendServiceStub(self.channel)

    async def create_user(
        self, display_name: str, user_id: str = "", *, token: str | None = None
    ) -> User:
        """Creates a user (needs an admin token: this client's or ``token``).

        An empty ``user_id`` lets the server choose one.
        """
        request = friend_service_pb2.CreateUserRequest(user_id=user_id, display_name=display_name)
        response = await self._call(
            self._friends().CreateUser(request, metadata=self.metadata(token), timeout=self.timeout)
        )
        return User.from_proto(response.user)

    async def get_user(self, user_id: str = "") -> User:
        """A user's profile; empty ``user_id`` means you."""
        response = await self._call(
            self._friends().GetUser(
                friend_service_pb2.GetUserRequest(user_id=user_id),
                metadata=self.metadata(),
                timeout=self.timeout,
            )
        )
        return User.from_proto(response.user)

    async def send_friend_request(self, to_user_id: str) -> FriendRequest:
        """Asks ``to_user_id`` to be your friend."""
        response = await self._call(
            self._friends().SendFriendRequest(
                friend_service_pb2.SendFriendRequestRequest(to_user_id=to_user_id),
                metadata=self.metadata(),
                timeout=self.timeout,
            )
        )
        return FriendRequest.from_proto(response.friend_request)

    async def accept_friend_request(self, from_user_id: str) -> Friend:
        """Accepts the pending request ``from_user_id`` sent you."""
        response = await self._call(
            self._friends().AcceptFriendRequest(
                friend_service_pb2.AcceptFriendRequestRequest(from_user_id=from_user_id),
                metadata=self.metadata(),
                timeout=self.timeout,
            )
        )
        return Friend.from_proto(response.friend)

    async def decline_friend_request(self, from_user_id: str) -> None:
        """Declines (deletes) the pending request ``from_user_id`` sent you."""
        await self._call(
            self._friends().DeclineFriendRequest(
                friend_service_pb2.DeclineFriendRequestRequest(from_user_id=from_user_id),
                metadata=self.metadata(),
                timeout=self.timeout,
            )
        )

    async def list_friend_requests(
        self, direction: Direction = "incoming", *, page_size: int = 0
    ) -> AsyncIterator[FriendRequest]:
        """Your pending requests, newest first, fetched page by page."""
        value = (
            friend_service_pb2.FRIEND_REQUEST_DIRECTION_OUTGOING
            if direction == "outgoing"
            else friend_service_pb2.FRIEND_REQUEST_DIRECTION_INCOMING
        )
        token = ""
        while True:
            response = await self._call(
                self._friends().ListFriendRequests(
                    friend_service_pb2.ListFriendRequestsRequest(
                        direction=value, page_size=page_size, page_token=token
                    ),
                    metadata=self.metadata(),
                    timeout=self.timeout,
                )
            )
            for item in response.friend_requests:
                yield FriendRequest.from_proto(item)
            token = response.next_page_token
            if not token:
                return

    async def remove_friend(self, friend_user_id: str) -> None:
        """Ends a friendship (both directions)."""
        await self._call(
            self._friends().RemoveFriend(
                friend_service_pb2.RemoveFriendRequest(friend_user_id=friend_user_id),
                metadata=self.metadata(),
                timeout=self.timeout,
            )
        )

    async def list_friends(self, *, page_size: int = 0) -> AsyncIterator[Friend]:
        """Your friends, ordered by user id, fetched page by page."""
        token = ""
        while True:
            response = await self._call(
                self._friends().ListFriends(
                    friend_service_pb2.ListFriendsRequest(page_size=page_size, page_token=token),
                    metadata=self.metadata(),
                    timeout=self.timeout,
                )
            )
            for item in response.friends:
                yield Friend.from_proto(item)
            token = response.next_page_token
            if not token:
                return

    async def delete_user(self, user_id: str = "", *, token: str | None = None) -> str:
        """Deletes an account and all its data; empty ``user_id`` means you
        (another user needs an admin token: this client's or ``token``).
        Your own open sessions then end with NOT_FOUND. Returns the id."""
        response = await self._call(
            self._friends().DeleteUser(
                friend_service_pb2.DeleteUserRequest(user_id=user_id),
                metadata=self.metadata(token),
                timeout=self.timeout,
            )
        )
        return response.user_id

    # -- location and visibility --------------------------------------------

    async def report_location(
        self, latitude: float, longitude: float, *, recorded_at: datetime | None = None
    ) -> ReportResult:
        """Reports your location without a stream (``recorded_at``: now if None)."""
        check_position(latitude, longitude)
        stub = location_service_pb2_grpc.LocationServiceStub(self.channel)
        request = location_service_pb2.ReportLocationRequest(
            position=geo_pb2.LatLng(latitude=latitude, longitude=longitude),
            recorded_at=_timestamp(recorded_at),
        )
        response = await self._call(
            stub.ReportLocation(request, metadata=self.metadata(), timeout=self.timeout)
        )
        return ReportResult.from_proto(response)

    async def list_location_history(
        self,
        *,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        page_size: int = 0,
    ) -> AsyncIterator[Location]:
        """Your location history in [start_time, end_time), newest first."""
        stub = location_service_pb2_grpc.LocationServiceStub(self.channel)
        token = ""
        while True:
            request = location_service_pb2.ListLocationHistoryRequest(
                start_time=_timestamp(start_time),
                end_time=_timestamp(end_time),
                page_size=page_size,
                page_token=token,
            )
            response = await self._call(
                stub.ListLocationHistory(request, metadata=self.metadata(), timeout=self.timeout)
            )
            for item in response.locations:
                yield Location.from_proto(item)
            token = response.next_page_token
            if not token:
                return

    async def delete_location_history(
        self,
        *,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        all: bool = False,
        user_id: str = "",
    ) -> int:
        """Deletes your location history in [start_time, end_time) (either
        bound may be left open), or all of it with ``all=True``; returns how
        many locations were deleted. Another user's (``user_id``) needs an
        admin token."""
        stub = location_service_pb2_grpc.LocationServiceStub(self.channel)
        request = location_service_pb2.DeleteLocationHistoryRequest(
            user_id=user_id,
            start_time=_timestamp(start_time),
            end_time=_timestamp(end_time),
            all=all,
        )
        response = await self._call(
            stub.DeleteLocationHistory(request, metadata=self.metadata(), timeout=self.timeout)
        )
        return response.deleted_count

    async def set_visibility(
        self, visible: bool, *, ttl: timedelta | None = None, until: datetime | None = None
    ) -> bool:
        """Shares your location with friends (True) or hides it: ghost mode
        (False), until turned off or, with ``ttl``/``until`` (at most 7 days
        away), until then. Returns the setting now in force."""
        stub = presence_service_pb2_grpc.PresenceServiceStub(self.channel)
        value = (
            presence_service_pb2.VISIBILITY_VISIBLE
            if visible
            else presence_service_pb2.VISIBILITY_HIDDEN
        )
        request = presence_service_pb2.SetVisibilityRequest(visibility=value)
        _expiration(request, ttl, until)
        response = await self._call(
            stub.SetVisibility(request, metadata=self.metadata(), timeout=self.timeout)
        )
        return response.visibility == presence_service_pb2.VISIBILITY_VISIBLE

    async def get_sharing_settings(self) -> SharingSettings:
        """Your sharing settings: audience, precisions, ghost mode and timers."""
        response = await self._call(
            self._presence().GetSharingSettings(
                presence_service_pb2.GetSharingSettingsRequest(),
                metadata=self.metadata(),
                timeout=self.timeout,
            )
        )
        return SharingSettings.from_proto(response.settings)

    async def set_audience(self, audience: str, user_ids: Sequence[str] = ()) -> SharingSettings:
        """Who sees you: "ALL_FRIENDS", "ONLY" the listed friends or
        "ALL_EXCEPT" them. Ids that are not your friends raise NearbyError
        (NOT_FOUND) and change nothing."""
        request = presence_service_pb2.SetAudienceRequest(
            audience=f"AUDIENCE_{audience}", user_ids=user_ids
        )
        response = await self._call(
            self._presence().SetAudience(request, metadata=self.metadata(), timeout=self.timeout)
        )
        return SharingSettings.from_proto(response.settings)

    async def set_default_precision(self, precision: str) -> SharingSettings:
        """ "PRECISE" or "APPROXIMATE" for the friends in your audience."""
        request = presence_service_pb2.SetDefaultPrecisionRequest(
            precision=f"PRECISION_{precision}"
        )
        response = await self._call(
            self._presence().SetDefaultPrecision(
                request, metadata=self.metadata(), timeout=self.timeout
            )
        )
        return SharingSettings.from_proto(response.settings)

    async def set_friend_precision(
        self,
        friend_id: str,
        precision: str,
        *,
        ttl: timedelta | None = None,
        until: datetime | None = None,
    ) -> SharingSettings:
        """How precisely one friend sees you ("PRECISE" or "APPROXIMATE"),
        whatever the audience, until cleared or for ``ttl`` / until ``until``
        (at most 7 days): e.g. precise for Bob for the next hour."""
        request = presence_service_pb2.SetFriendPrecisionRequest(
            friend_id=friend_id, precision=f"PRECISION_{precision}"
        )
        _expiration(request, ttl, until)
        response = await self._call(
            self._presence().SetFriendPrecision(
                request, metadata=self.metadata(), timeout=self.timeout
            )
        )
        return SharingSettings.from_proto(response.settings)

    async def clear_friend_precision(self, friend_id: str) -> SharingSettings:
        """Removes one friend's rule (the audience decides again)."""
        response = await self._call(
            self._presence().ClearFriendPrecision(
                presence_service_pb2.ClearFriendPrecisionRequest(friend_id=friend_id),
                metadata=self.metadata(),
                timeout=self.timeout,
            )
        )
        return SharingSettings.from_proto(response.settings)

    def _presence(self) -> presence_service_pb2_grpc.PresenceServiceAsyncStub:
        return presence_service_pb2_grpc.PresenceServiceStub(self.channel)

    async def get_visibility(self) -> bool:
        """True when your location is shared with friends (not in ghost mode)."""
        stub = presence_service_pb2_grpc.PresenceServiceStub(self.channel)
        response = await self._call(
            stub.GetVisibility(
                presence_service_pb2.GetVisibilityRequest(),
                metadata=self.metadata(),
                timeout=self.timeout,
            )
        )
        return response.visibility != presence_service_pb2.VISIBILITY_HIDDEN


def _expiration(
    request: presence_service_pb2.SetVisibilityRequest
    | presence_service_pb2.SetFriendPrecisionRequest,
    ttl: timedelta | None,
    until: datetime | None,
) -> None:
    """Sets a request's `expiration` oneof from ttl or until (not both)."""
    if ttl is not None and until is not None:
        raise ValueError("give ttl or until, not both")
    if ttl is not None:
        request.ttl.FromTimedelta(ttl)
    elif until is not None:
        request.expire_time.FromDatetime(until)

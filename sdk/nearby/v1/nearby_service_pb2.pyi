import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from nearby.v1 import geo_pb2 as _geo_pb2
from nearby.v1 import sharing_pb2 as _sharing_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FriendGoneReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRIEND_GONE_REASON_UNSPECIFIED: _ClassVar[FriendGoneReason]
    FRIEND_GONE_REASON_OUT_OF_RANGE: _ClassVar[FriendGoneReason]
    FRIEND_GONE_REASON_OFFLINE: _ClassVar[FriendGoneReason]
    FRIEND_GONE_REASON_UNFRIENDED: _ClassVar[FriendGoneReason]
    FRIEND_GONE_REASON_HIDDEN: _ClassVar[FriendGoneReason]
    FRIEND_GONE_REASON_NOT_SHARED: _ClassVar[FriendGoneReason]
FRIEND_GONE_REASON_UNSPECIFIED: FriendGoneReason
FRIEND_GONE_REASON_OUT_OF_RANGE: FriendGoneReason
FRIEND_GONE_REASON_OFFLINE: FriendGoneReason
FRIEND_GONE_REASON_UNFRIENDED: FriendGoneReason
FRIEND_GONE_REASON_HIDDEN: FriendGoneReason
FRIEND_GONE_REASON_NOT_SHARED: FriendGoneReason

class ConnectRequest(_message.Message):
    __slots__ = ("location", "page_request")
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    PAGE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    location: LocationUpdate
    page_request: PageRequest
    def __init__(self, location: _Optional[_Union[LocationUpdate, _Mapping]] = ..., page_request: _Optional[_Union[PageRequest, _Mapping]] = ...) -> None: ...

class LocationUpdate(_message.Message):
    __slots__ = ("position", "recorded_at")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    position: _geo_pb2.LatLng
    recorded_at: _timestamp_pb2.Timestamp
    def __init__(self, position: _Optional[_Union[_geo_pb2.LatLng, _Mapping]] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PageRequest(_message.Message):
    __slots__ = ("page_token", "page_size")
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    page_token: str
    page_size: int
    def __init__(self, page_token: _Optional[str] = ..., page_size: _Optional[int] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("snapshot", "page", "events", "heartbeat", "reconnect")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    page: NearbyFriendsPage
    events: NearbyEvents
    heartbeat: Heartbeat
    reconnect: Reconnect
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., page: _Optional[_Union[NearbyFriendsPage, _Mapping]] = ..., events: _Optional[_Union[NearbyEvents, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., reconnect: _Optional[_Union[Reconnect, _Mapping]] = ...) -> None: ...

class NearbyFriend(_message.Message):
    __slots__ = ("user_id", "display_name", "position", "distance_meters", "update_time", "precision")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_METERS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    display_name: str
    position: _geo_pb2.LatLng
    distance_meters: float
    update_time: _timestamp_pb2.Timestamp
    precision: _sharing_pb2.Precision
    def __init__(self, user_id: _Optional[str] = ..., display_name: _Optional[str] = ..., position: _Optional[_Union[_geo_pb2.LatLng, _Mapping]] = ..., distance_meters: _Optional[float] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., precision: _Optional[_Union[_sharing_pb2.Precision, str]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("friends", "total_size", "next_page_token", "radius_meters")
    FRIENDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RADIUS_METERS_FIELD_NUMBER: _ClassVar[int]
    friends: _containers.RepeatedCompositeFieldContainer[NearbyFriend]
    total_size: int
    next_page_token: str
    radius_meters: float
    def __init__(self, friends: _Optional[_Iterable[_Union[NearbyFriend, _Mapping]]] = ..., total_size: _Optional[int] = ..., next_page_token: _Optional[str] = ..., radius_meters: _Optional[float] = ...) -> None: ...

class NearbyFriendsPage(_message.Message):
    __slots__ = ("friends", "total_size", "next_page_token")
    FRIENDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    friends: _containers.RepeatedCompositeFieldContainer[NearbyFriend]
    total_size: int
    next_page_token: str
    def __init__(self, friends: _Optional[_Iterable[_Union[NearbyFriend, _Mapping]]] = ..., total_size: _Optional[int] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class NearbyEvents(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[NearbyEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[NearbyEvent, _Mapping]]] = ...) -> None: ...

class NearbyEvent(_message.Message):
    __slots__ = ("friend_update", "friend_gone")
    FRIEND_UPDATE_FIELD_NUMBER: _ClassVar[int]
    FRIEND_GONE_FIELD_NUMBER: _ClassVar[int]
    friend_update: FriendUpdate
    friend_gone: FriendGone
    def __init__(self, friend_update: _Optional[_Union[FriendUpdate, _Mapping]] = ..., friend_gone: _Optional[_Union[FriendGone, _Mapping]] = ...) -> None: ...

class FriendUpdate(_message.Message):
    __slots__ = ("friend",)
    FRIEND_FIELD_NUMBER: _ClassVar[int]
    friend: NearbyFriend
    def __init__(self, friend: _Optional[_Union[NearbyFriend, _Mapping]] = ...) -> None: ...

class FriendGone(_message.Message):
    __slots__ = ("user_id", "reason")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    reason: FriendGoneReason
    def __init__(self, user_id: _Optional[str] = ..., reason: _Optional[_Union[FriendGoneReason, str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("server_time",)
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    server_time: _timestamp_pb2.Timestamp
    def __init__(self, server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Reconnect(_message.Message):
    __slots__ = ("reason", "retry_after")
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    reason: str
    retry_after: _duration_pb2.Duration
    def __init__(self, reason: _Optional[str] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ListNearbyFriendsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListNearbyFriendsResponse(_message.Message):
    __slots__ = ("friends", "total_size", "next_page_token")
    FRIENDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    friends: _containers.RepeatedCompositeFieldContainer[NearbyFriend]
    total_size: int
    next_page_token: str
    def __init__(self, friends: _Optional[_Iterable[_Union[NearbyFriend, _Mapping]]] = ..., total_size: _Optional[int] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("snapshot", "events", "heartbeat", "reconnect")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    events: NearbyEvents
    heartbeat: Heartbeat
    reconnect: Reconnect
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., events: _Optional[_Union[NearbyEvents, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., reconnect: _Optional[_Union[Reconnect, _Mapping]] = ...) -> None: ...

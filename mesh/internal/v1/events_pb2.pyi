from nearby.v1 import sharing_pb2 as _sharing_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PositionFix(_message.Message):
    __slots__ = ("latitude", "longitude", "recorded_at_ms")
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    latitude: float
    longitude: float
    recorded_at_ms: int
    def __init__(self, latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., recorded_at_ms: _Optional[int] = ...) -> None: ...

class LocationEvent(_message.Message):
    __slots__ = ("user_id", "moved", "offline", "hidden", "sharing", "published_at_ms", "traceparent")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    SHARING_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    moved: PositionFix
    offline: UserOffline
    hidden: UserHidden
    sharing: SharingPolicy
    published_at_ms: int
    traceparent: str
    def __init__(self, user_id: _Optional[str] = ..., moved: _Optional[_Union[PositionFix, _Mapping]] = ..., offline: _Optional[_Union[UserOffline, _Mapping]] = ..., hidden: _Optional[_Union[UserHidden, _Mapping]] = ..., sharing: _Optional[_Union[SharingPolicy, _Mapping]] = ..., published_at_ms: _Optional[int] = ..., traceparent: _Optional[str] = ...) -> None: ...

class UserOffline(_message.Message):
    __slots__ = ("last_active_ms",)
    LAST_ACTIVE_MS_FIELD_NUMBER: _ClassVar[int]
    last_active_ms: int
    def __init__(self, last_active_ms: _Optional[int] = ...) -> None: ...

class UserHidden(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InboxEvent(_message.Message):
    __slots__ = ("friend_added", "friend_removed", "account_deleted", "published_at_ms")
    FRIEND_ADDED_FIELD_NUMBER: _ClassVar[int]
    FRIEND_REMOVED_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_DELETED_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    friend_added: FriendAdded
    friend_removed: FriendRemoved
    account_deleted: AccountDeleted
    published_at_ms: int
    def __init__(self, friend_added: _Optional[_Union[FriendAdded, _Mapping]] = ..., friend_removed: _Optional[_Union[FriendRemoved, _Mapping]] = ..., account_deleted: _Optional[_Union[AccountDeleted, _Mapping]] = ..., published_at_ms: _Optional[int] = ...) -> None: ...

class FriendAdded(_message.Message):
    __slots__ = ("friend_id", "display_name")
    FRIEND_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    friend_id: str
    display_name: str
    def __init__(self, friend_id: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class FriendRemoved(_message.Message):
    __slots__ = ("friend_id",)
    FRIEND_ID_FIELD_NUMBER: _ClassVar[int]
    friend_id: str
    def __init__(self, friend_id: _Optional[str] = ...) -> None: ...

class AccountDeleted(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SharingPolicy(_message.Message):
    __slots__ = ("version", "audience", "audience_user_ids", "default_precision", "rules")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_USER_IDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PRECISION_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    version: int
    audience: _sharing_pb2.Audience
    audience_user_ids: _containers.RepeatedScalarFieldContainer[str]
    default_precision: _sharing_pb2.Precision
    rules: _containers.RepeatedCompositeFieldContainer[FriendRule]
    def __init__(self, version: _Optional[int] = ..., audience: _Optional[_Union[_sharing_pb2.Audience, str]] = ..., audience_user_ids: _Optional[_Iterable[str]] = ..., default_precision: _Optional[_Union[_sharing_pb2.Precision, str]] = ..., rules: _Optional[_Iterable[_Union[FriendRule, _Mapping]]] = ...) -> None: ...

class FriendRule(_message.Message):
    __slots__ = ("friend_id", "precision", "expire_at_ms")
    FRIEND_ID_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_AT_MS_FIELD_NUMBER: _ClassVar[int]
    friend_id: str
    precision: _sharing_pb2.Precision
    expire_at_ms: int
    def __init__(self, friend_id: _Optional[str] = ..., precision: _Optional[_Union[_sharing_pb2.Precision, str]] = ..., expire_at_ms: _Optional[int] = ...) -> None: ...

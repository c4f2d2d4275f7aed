import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from nearby.v1 import sharing_pb2 as _sharing_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Visibility(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VISIBILITY_UNSPECIFIED: _ClassVar[Visibility]
    VISIBILITY_VISIBLE: _ClassVar[Visibility]
    VISIBILITY_HIDDEN: _ClassVar[Visibility]
VISIBILITY_UNSPECIFIED: Visibility
VISIBILITY_VISIBLE: Visibility
VISIBILITY_HIDDEN: Visibility

class SetVisibilityRequest(_message.Message):
    __slots__ = ("visibility", "expire_time", "ttl")
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    visibility: Visibility
    expire_time: _timestamp_pb2.Timestamp
    ttl: _duration_pb2.Duration
    def __init__(self, visibility: _Optional[_Union[Visibility, str]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SetVisibilityResponse(_message.Message):
    __slots__ = ("visibility", "expire_time")
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    visibility: Visibility
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, visibility: _Optional[_Union[Visibility, str]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetVisibilityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetVisibilityResponse(_message.Message):
    __slots__ = ("visibility", "expire_time")
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    visibility: Visibility
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, visibility: _Optional[_Union[Visibility, str]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SetAudienceRequest(_message.Message):
    __slots__ = ("audience", "user_ids")
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    audience: _sharing_pb2.Audience
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, audience: _Optional[_Union[_sharing_pb2.Audience, str]] = ..., user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SetAudienceResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: _sharing_pb2.SharingSettings
    def __init__(self, settings: _Optional[_Union[_sharing_pb2.SharingSettings, _Mapping]] = ...) -> None: ...

class SetDefaultPrecisionRequest(_message.Message):
    __slots__ = ("precision",)
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    precision: _sharing_pb2.Precision
    def __init__(self, precision: _Optional[_Union[_sharing_pb2.Precision, str]] = ...) -> None: ...

class SetDefaultPrecisionResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: _sharing_pb2.SharingSettings
    def __init__(self, settings: _Optional[_Union[_sharing_pb2.SharingSettings, _Mapping]] = ...) -> None: ...

class SetFriendPrecisionRequest(_message.Message):
    __slots__ = ("friend_id", "precision", "expire_time", "ttl")
    FRIEND_ID_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    friend_id: str
    precision: _sharing_pb2.Precision
    expire_time: _timestamp_pb2.Timestamp
    ttl: _duration_pb2.Duration
    def __init__(self, friend_id: _Optional[str] = ..., precision: _Optional[_Union[_sharing_pb2.Precision, str]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SetFriendPrecisionResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: _sharing_pb2.SharingSettings
    def __init__(self, settings: _Optional[_Union[_sharing_pb2.SharingSettings, _Mapping]] = ...) -> None: ...

class ClearFriendPrecisionRequest(_message.Message):
    __slots__ = ("friend_id",)
    FRIEND_ID_FIELD_NUMBER: _ClassVar[int]
    friend_id: str
    def __init__(self, friend_id: _Optional[str] = ...) -> None: ...

class ClearFriendPrecisionResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: _sharing_pb2.SharingSettings
    def __init__(self, settings: _Optional[_Union[_sharing_pb2.SharingSettings, _Mapping]] = ...) -> None: ...

class GetSharingSettingsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSharingSettingsResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: _sharing_pb2.SharingSettings
    def __init__(self, settings: _Optional[_Union[_sharing_pb2.SharingSettings, _Mapping]] = ...) -> None: ...

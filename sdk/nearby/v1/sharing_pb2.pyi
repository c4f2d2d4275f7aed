import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Audience(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIENCE_UNSPECIFIED: _ClassVar[Audience]
    AUDIENCE_ALL_FRIENDS: _ClassVar[Audience]
    AUDIENCE_ONLY: _ClassVar[Audience]
    AUDIENCE_ALL_EXCEPT: _ClassVar[Audience]

class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRECISION_UNSPECIFIED: _ClassVar[Precision]
    PRECISION_PRECISE: _ClassVar[Precision]
    PRECISION_APPROXIMATE: _ClassVar[Precision]
AUDIENCE_UNSPECIFIED: Audience
AUDIENCE_ALL_FRIENDS: Audience
AUDIENCE_ONLY: Audience
AUDIENCE_ALL_EXCEPT: Audience
PRECISION_UNSPECIFIED: Precision
PRECISION_PRECISE: Precision
PRECISION_APPROXIMATE: Precision

class FriendPrecision(_message.Message):
    __slots__ = ("friend_id", "precision", "expire_time")
    FRIEND_ID_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    friend_id: str
    precision: Precision
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, friend_id: _Optional[str] = ..., precision: _Optional[_Union[Precision, str]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SharingSettings(_message.Message):
    __slots__ = ("audience", "audience_user_ids", "default_precision", "friend_precisions", "hidden", "hidden_until")
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_USER_IDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PRECISION_FIELD_NUMBER: _ClassVar[int]
    FRIEND_PRECISIONS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_UNTIL_FIELD_NUMBER: _ClassVar[int]
    audience: Audience
    audience_user_ids: _containers.RepeatedScalarFieldContainer[str]
    default_precision: Precision
    friend_precisions: _containers.RepeatedCompositeFieldContainer[FriendPrecision]
    hidden: bool
    hidden_until: _timestamp_pb2.Timestamp
    def __init__(self, audience: _Optional[_Union[Audience, str]] = ..., audience_user_ids: _Optional[_Iterable[str]] = ..., default_precision: _Optional[_Union[Precision, str]] = ..., friend_precisions: _Optional[_Iterable[_Union[FriendPrecision, _Mapping]]] = ..., hidden: _Optional[bool] = ..., hidden_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

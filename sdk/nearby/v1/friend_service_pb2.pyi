import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from nearby.v1 import user_pb2 as _user_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FriendRequestDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRIEND_REQUEST_DIRECTION_UNSPECIFIED: _ClassVar[FriendRequestDirection]
    FRIEND_REQUEST_DIRECTION_INCOMING: _ClassVar[FriendRequestDirection]
    FRIEND_REQUEST_DIRECTION_OUTGOING: _ClassVar[FriendRequestDirection]
FRIEND_REQUEST_DIRECTION_UNSPECIFIED: FriendRequestDirection
FRIEND_REQUEST_DIRECTION_INCOMING: FriendRequestDirection
FRIEND_REQUEST_DIRECTION_OUTGOING: FriendRequestDirection

class CreateUserRequest(_message.Message):
    __slots__ = ("user_id", "display_name")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    display_name: str
    def __init__(self, user_id: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class CreateUserResponse(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: _user_pb2.User
    def __init__(self, user: _Optional[_Union[_user_pb2.User, _Mapping]] = ...) -> None: ...

class GetUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class GetUserResponse(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: _user_pb2.User
    def __init__(self, user: _Optional[_Union[_user_pb2.User, _Mapping]] = ...) -> None: ...

class SendFriendRequestRequest(_message.Message):
    __slots__ = ("to_user_id",)
    TO_USER_ID_FIELD_NUMBER: _ClassVar[int]
    to_user_id: str
    def __init__(self, to_user_id: _Optional[str] = ...) -> None: ...

class SendFriendRequestResponse(_message.Message):
    __slots__ = ("friend_request",)
    FRIEND_REQUEST_FIELD_NUMBER: _ClassVar[int]
    friend_request: FriendRequest
    def __init__(self, friend_request: _Optional[_Union[FriendRequest, _Mapping]] = ...) -> None: ...

class AcceptFriendRequestRequest(_message.Message):
    __slots__ = ("from_user_id",)
    FROM_USER_ID_FIELD_NUMBER: _ClassVar[int]
    from_user_id: str
    def __init__(self, from_user_id: _Optional[str] = ...) -> None: ...

class AcceptFriendRequestResponse(_message.Message):
    __slots__ = ("friend",)
    FRIEND_FIELD_NUMBER: _ClassVar[int]
    friend: Friend
    def __init__(self, friend: _Optional[_Union[Friend, _Mapping]] = ...) -> None: ...

class DeclineFriendRequestRequest(_message.Message):
    __slots__ = ("from_user_id",)
    FROM_USER_ID_FIELD_NUMBER: _ClassVar[int]
    from_user_id: str
    def __init__(self, from_user_id: _Optional[str] = ...) -> None: ...

class DeclineFriendRequestResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FriendRequest(_message.Message):
    __slots__ = ("from_user", "to_user", "create_time")
    FROM_USER_FIELD_NUMBER: _ClassVar[int]
    TO_USER_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    from_user: _user_pb2.User
    to_user: _user_pb2.User
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, from_user: _Optional[_Union[_user_pb2.User, _Mapping]] = ..., to_user: _Optional[_Union[_user_pb2.User, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListFriendRequestsRequest(_message.Message):
    __slots__ = ("direction", "page_size", "page_token")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    direction: FriendRequestDirection
    page_size: int
    page_token: str
    def __init__(self, direction: _Optional[_Union[FriendRequestDirection, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListFriendRequestsResponse(_message.Message):
    __slots__ = ("friend_requests", "next_page_token")
    FRIEND_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    friend_requests: _containers.RepeatedCompositeFieldContainer[FriendRequest]
    next_page_token: str
    def __init__(self, friend_requests: _Optional[_Iterable[_Union[FriendRequest, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RemoveFriendRequest(_message.Message):
    __slots__ = ("friend_user_id",)
    FRIEND_USER_ID_FIELD_NUMBER: _ClassVar[int]
    friend_user_id: str
    def __init__(self, friend_user_id: _Optional[str] = ...) -> None: ...

class RemoveFriendResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Friend(_message.Message):
    __slots__ = ("user", "friends_since")
    USER_FIELD_NUMBER: _ClassVar[int]
    FRIENDS_SINCE_FIELD_NUMBER: _ClassVar[int]
    user: _user_pb2.User
    friends_since: _timestamp_pb2.Timestamp
    def __init__(self, user: _Optional[_Union[_user_pb2.User, _Mapping]] = ..., friends_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListFriendsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListFriendsResponse(_message.Message):
    __slots__ = ("friends", "next_page_token")
    FRIENDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    friends: _containers.RepeatedCompositeFieldContainer[Friend]
    next_page_token: str
    def __init__(self, friends: _Optional[_Iterable[_Union[Friend, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class DeleteUserResponse(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

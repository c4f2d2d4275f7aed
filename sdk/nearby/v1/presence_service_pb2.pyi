from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
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
    __slots__ = ("visibility",)
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    visibility: Visibility
    def __init__(self, visibility: _Optional[_Union[Visibility, str]] = ...) -> None: ...

class SetVisibilityResponse(_message.Message):
    __slots__ = ("visibility",)
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    visibility: Visibility
    def __init__(self, visibility: _Optional[_Union[Visibility, str]] = ...) -> None: ...

class GetVisibilityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetVisibilityResponse(_message.Message):
    __slots__ = ("visibility",)
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    visibility: Visibility
    def __init__(self, visibility: _Optional[_Union[Visibility, str]] = ...) -> None: ...

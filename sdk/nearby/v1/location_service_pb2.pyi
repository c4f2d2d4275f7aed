import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from nearby.v1 import geo_pb2 as _geo_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReportDisposition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPORT_DISPOSITION_UNSPECIFIED: _ClassVar[ReportDisposition]
    REPORT_DISPOSITION_ACCEPTED: _ClassVar[ReportDisposition]
    REPORT_DISPOSITION_COALESCED: _ClassVar[ReportDisposition]
    REPORT_DISPOSITION_STALE: _ClassVar[ReportDisposition]
REPORT_DISPOSITION_UNSPECIFIED: ReportDisposition
REPORT_DISPOSITION_ACCEPTED: ReportDisposition
REPORT_DISPOSITION_COALESCED: ReportDisposition
REPORT_DISPOSITION_STALE: ReportDisposition

class Location(_message.Message):
    __slots__ = ("user_id", "position", "recorded_at")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    position: _geo_pb2.LatLng
    recorded_at: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., position: _Optional[_Union[_geo_pb2.LatLng, _Mapping]] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReportLocationRequest(_message.Message):
    __slots__ = ("position", "recorded_at")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    position: _geo_pb2.LatLng
    recorded_at: _timestamp_pb2.Timestamp
    def __init__(self, position: _Optional[_Union[_geo_pb2.LatLng, _Mapping]] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReportLocationResponse(_message.Message):
    __slots__ = ("location", "disposition")
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    DISPOSITION_FIELD_NUMBER: _ClassVar[int]
    location: Location
    disposition: ReportDisposition
    def __init__(self, location: _Optional[_Union[Location, _Mapping]] = ..., disposition: _Optional[_Union[ReportDisposition, str]] = ...) -> None: ...

class ListLocationHistoryRequest(_message.Message):
    __slots__ = ("user_id", "start_time", "end_time", "page_size", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLocationHistoryResponse(_message.Message):
    __slots__ = ("locations", "next_page_token")
    LOCATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    locations: _containers.RepeatedCompositeFieldContainer[Location]
    next_page_token: str
    def __init__(self, locations: _Optional[_Iterable[_Union[Location, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteLocationHistoryRequest(_message.Message):
    __slots__ = ("user_id", "start_time", "end_time", "all")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    all: bool
    def __init__(self, user_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., all: _Optional[bool] = ...) -> None: ...

class DeleteLocationHistoryResponse(_message.Message):
    __slots__ = ("deleted_count",)
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted_count: int
    def __init__(self, deleted_count: _Optional[int] = ...) -> None: ...

from mesh.internal.v1 import events_pb2 as _events_pb2
from nearby.v1 import location_service_pb2 as _location_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LocationReport(_message.Message):
    __slots__ = ("user_id", "fix", "traceparent", "check_account")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FIX_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    CHECK_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    fix: _events_pb2.PositionFix
    traceparent: str
    check_account: bool
    def __init__(self, user_id: _Optional[str] = ..., fix: _Optional[_Union[_events_pb2.PositionFix, _Mapping]] = ..., traceparent: _Optional[str] = ..., check_account: _Optional[bool] = ...) -> None: ...

class ReportLocationsRequest(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[LocationReport]
    def __init__(self, reports: _Optional[_Iterable[_Union[LocationReport, _Mapping]]] = ...) -> None: ...

class ReportResult(_message.Message):
    __slots__ = ("disposition", "fix", "rejection")
    DISPOSITION_FIELD_NUMBER: _ClassVar[int]
    FIX_FIELD_NUMBER: _ClassVar[int]
    REJECTION_FIELD_NUMBER: _ClassVar[int]
    disposition: _location_service_pb2.ReportDisposition
    fix: _events_pb2.PositionFix
    rejection: ReportRejection
    def __init__(self, disposition: _Optional[_Union[_location_service_pb2.ReportDisposition, str]] = ..., fix: _Optional[_Union[_events_pb2.PositionFix, _Mapping]] = ..., rejection: _Optional[_Union[ReportRejection, _Mapping]] = ...) -> None: ...

class ReportRejection(_message.Message):
    __slots__ = ("field", "description", "reason")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    field: str
    description: str
    reason: str
    def __init__(self, field: _Optional[str] = ..., description: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReportLocationsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ReportResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ReportResult, _Mapping]]] = ...) -> None: ...

class BatchGetLocationsRequest(_message.Message):
    __slots__ = ("user_ids", "include_hidden", "include_sharing")
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_HIDDEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SHARING_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    include_hidden: bool
    include_sharing: bool
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ..., include_hidden: _Optional[bool] = ..., include_sharing: _Optional[bool] = ...) -> None: ...

class CachedLocation(_message.Message):
    __slots__ = ("user_id", "fix")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FIX_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    fix: _events_pb2.PositionFix
    def __init__(self, user_id: _Optional[str] = ..., fix: _Optional[_Union[_events_pb2.PositionFix, _Mapping]] = ...) -> None: ...

class BatchGetLocationsResponse(_message.Message):
    __slots__ = ("locations", "sharing")
    LOCATIONS_FIELD_NUMBER: _ClassVar[int]
    SHARING_FIELD_NUMBER: _ClassVar[int]
    locations: _containers.RepeatedCompositeFieldContainer[CachedLocation]
    sharing: _containers.RepeatedCompositeFieldContainer[UserSharing]
    def __init__(self, locations: _Optional[_Iterable[_Union[CachedLocation, _Mapping]]] = ..., sharing: _Optional[_Iterable[_Union[UserSharing, _Mapping]]] = ...) -> None: ...

class UserSharing(_message.Message):
    __slots__ = ("user_id", "policy")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    policy: _events_pb2.SharingPolicy
    def __init__(self, user_id: _Optional[str] = ..., policy: _Optional[_Union[_events_pb2.SharingPolicy, _Mapping]] = ...) -> None: ...

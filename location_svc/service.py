"""The servicers of location_svc: public LocationService (identity from the
edge) and internal LocationIngestService (user ids in the request body)."""

from __future__ import annotations

import asyncio
import datetime as dt

from google.protobuf import timestamp_pb2
from nearby.v1 import geo_pb2, location_service_pb2, location_service_pb2_grpc
from psycopg_pool import AsyncConnectionPool

from location_svc import metrics, store
from location_svc.cache import UNKNOWN, LocationCache, Report
from location_svc.erase import Eraser
from location_svc.ingest import Ingestor
from location_svc.sharing_reads import SharingReads
from mesh import fixes, paging, tracing
from mesh.clock import now_ms
from mesh.errors import InvalidArgument, NotFound, PermissionDenied, invalid_field
from mesh.identity import USER_ID_RE, caller_id, check_user_id, check_user_ids, is_admin
from mesh.internal.v1 import (
    events_pb2,
    location_ingest_service_pb2,
    location_ingest_service_pb2_grpc,
    user_data_service_pb2,
    user_data_service_pb2_grpc,
)
from mesh.settings import Settings
from mesh.types import Context

MAX_REPORTS_PER_CALL = 10_000
_UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)


def _us(value: dt.datetime) -> int:
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


def _from_us(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=us)


def _timestamp(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


class LocationServicer(location_service_pb2_grpc.LocationServiceServicer):
    def __init__(self, ingest: Ingestor, pool: AsyncConnectionPool, eraser: Eraser) -> None:
        self.ingest = ingest
        self.pool = pool
        self.eraser = eraser

    async def ReportLocation(
        self, request: location_service_pb2.ReportLocationRequest, context: Context
    ) -> location_service_pb2.ReportLocationResponse:
        user_id = caller_id(context)
        if not request.HasField("position"):
            metrics.INVALID.inc()
            raise invalid_field("position", "is required")
        now = now_ms()
        lat, lng = request.position.latitude, request.position.longitude
        recorded = request.recorded_at.ToMilliseconds() if request.HasField("recorded_at") else None
        try:
            self.ingest.rules.check(lat, lng, recorded, now)
        except InvalidArgument:
            metrics.INVALID.inc()
            raise
        report = Report(
            user_id,
            lat,
            lng,
            now if recorded is None else recorded,
            tracing.current_traceparent(),
            check_account=True,  # a caller with a token but no account records nothing
        )
        (disposition,) = await self.ingest.record([report])
        if disposition == UNKNOWN:
            raise NotFound(f"your user '{user_id}' {UNKNOWN_USER_TEXT}", reason=UNKNOWN_USER_REASON)
        return location_service_pb2.ReportLocationResponse(
            location=location_service_pb2.Location(
                user_id=user_id,
                position=geo_pb2.LatLng(latitude=report.latitude, longitude=report.longitude),
                recorded_at=_timestamp(report.recorded_at_ms),
            ),
            disposition=disposition,  # type: ignore[arg-type]
        )

    async def ListLocationHistory(
        self, request: location_service_pb2.ListLocationHistoryRequest, context: Context
    ) -> location_service_pb2.ListLocationHistoryResponse:
        user_id = caller_id(context)
        if request.user_id and request.user_id != user_id:
            raise PermissionDenied(
                "you can only list your own location history", reason="NOT_OWNER"
            )
        size = paging.page_size(request.page_size, 100, 1000)
        start = request.start_time.ToDatetime(_UTC) if request.HasField("start_time") else None
        end = request.end_time.ToDatetime(_UTC) if request.HasField("end_time") else None
        if start is not None and end is not None and end <= start:
            raise invalid_field("end_time", "must be after start_time")
        scope = [user_id, _us(start) if start else None, _us(end) if end else None]
        position = paging.decode_token(request.page_token, "history")
        if position is not None:
            if not isinstance(position, list) or len(position) != 4 or position[:3] != scope:
                raise invalid_field(
                    "page_token", "belongs to a call with other parameters: start again"
                )
            end = _from_us(int(position[3]))
        rows = await store.list_history(self.pool, user_id, start, end, size + 1)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = paging.encode_token("history", [*scope, _us(rows[-1].recorded_at)])
        resp = location_service_pb2.ListLocationHistoryResponse(next_page_token=token)
        for row in rows:
            loc = resp.locations.add(user_id=user_id)
            loc.position.latitude = row.latitude
            loc.position.longitude = row.longitude
            loc.recorded_at.FromDatetime(row.recorded_at)
        return resp

    async def DeleteLocationHistory(
        self, request: location_service_pb2.DeleteLocationHistoryRequest, context: Context
    ) -> location_service_pb2.DeleteLocationHistoryResponse:
        me = caller_id(context)
        user_id = check_user_id(request.user_id) if request.user_id else me
        if user_id != me and not is_admin(context):
            raise PermissionDenied(
                "you can only delete your own location history (another user's needs a token "
                "with the admin claim)",
                reason="NOT_OWNER",
            )
        start = _bound(request, "start_time")
        end = _bound(request, "end_time")
        if request.all and (start is not None or end is not None):
            raise invalid_field("all", "set either all or a time range, not both")
        if not request.all and start is None and end is None:
            raise invalid_field(
                "start_time", "set start_time and/or end_time, or all=true to delete everything"
            )
        if start is not None and end is not None and end <= start:
            raise invalid_field("end_time", "must be after start_time")
        deleted = await self.eraser.delete_history(user_id, start, end)
        return location_service_pb2.DeleteLocationHistoryResponse(deleted_count=deleted)


def _bound(
    request: location_service_pb2.DeleteLocationHistoryRequest, field: str
) -> dt.datetime | None:
    """A Timestamp field of the request as a datetime (None when unset)."""
    if not request.HasField(field):
        return None
    ts: timestamp_pb2.Timestamp = getattr(request, field)
    try:
        return ts.ToDatetime(_UTC)
    except (ValueError, OverflowError) as exc:
        raise invalid_field(field, "is not a valid timestamp (years 1 to 9999)") from exc


class UserDataServicer(user_data_service_pb2_grpc.UserDataServiceServicer):
    """Internal: friend_svc erases a deleted account's locations."""

    def __init__(self, eraser: Eraser) -> None:
        self.eraser = eraser

    async def DeleteUserData(
        self, request: user_data_service_pb2.DeleteUserDataRequest, context: Context
    ) -> user_data_service_pb2.DeleteUserDataResponse:
        user_id = check_user_id(request.user_id)
        deleted = await self.eraser.delete_user(user_id)
        return user_data_service_pb2.DeleteUserDataResponse(deleted_count=deleted)


UNKNOWN_USER_TEXT = (
    "has no account: an operator must create it with CreateUser (a deleted account stays "
    "deleted); nothing was recorded"
)
UNKNOWN_USER_REASON = "CALLER_NOT_FOUND"
"""As friend_svc says it of a caller without an account."""


REPORT_FIELDS = {
    fixes.LATITUDE: "fix.latitude",
    fixes.LONGITUDE: "fix.longitude",
    fixes.RECORDED_AT: "fix.recorded_at_ms",
}
"""Fields of a LocationReport, by the part of the fix a problem is about."""


def reject(result: location_ingest_service_pb2.ReportResult, field: str, description: str) -> None:
    """Mark one report of a batch rejected (the others go on)."""
    metrics.INVALID.inc()
    rej = result.rejection
    rej.field = field
    rej.description = description
    rej.reason = "INVALID_FIELD"


class LocationIngestServicer(location_ingest_service_pb2_grpc.LocationIngestServiceServicer):
    def __init__(self, ingest: Ingestor, cache: LocationCache, settings: Settings) -> None:
        self.ingest = ingest
        self.cache = cache
        self.sharing = SharingReads(cache.engine)
        self.friend_cap = settings.friend_cap

    async def ReportLocations(
        self, request: location_ingest_service_pb2.ReportLocationsRequest, context: Context
    ) -> location_ingest_service_pb2.ReportLocationsResponse:
        if len(request.reports) > MAX_REPORTS_PER_CALL:
            raise invalid_field("reports", f"at most {MAX_REPORTS_PER_CALL} reports per call")
        now = now_ms()
        resp = location_ingest_service_pb2.ReportLocationsResponse()
        valid: list[Report] = []
        slots: list[location_ingest_service_pb2.ReportResult] = []
        rules = self.ingest.rules
        for item in request.reports:
            result = resp.results.add()
            fix = item.fix
            if not USER_ID_RE.match(item.user_id):
                reject(result, "user_id", "must be 1-64 characters from [A-Za-z0-9._-]")
                continue
            recorded = fix.recorded_at_ms or None
            bad = rules.problem(fix.latitude, fix.longitude, recorded, now)
            if bad is not None:
                reject(result, REPORT_FIELDS[bad.part], bad.description)
                continue
            valid.append(
                Report(
                    item.user_id,
                    fix.latitude,
                    fix.longitude,
                    now if recorded is None else recorded,
                    item.traceparent,
                    item.check_account,
                )
            )
            slots.append(result)
        dispositions = await self.ingest.record(valid)
        for report, result, disposition in zip(valid, slots, dispositions, strict=True):
            if disposition == UNKNOWN:
                rej = result.rejection
                rej.field, rej.reason = "user_id", UNKNOWN_USER_REASON
                rej.description = UNKNOWN_USER_TEXT
                continue
            result.disposition = disposition  # type: ignore[assignment]
            result.fix.latitude = report.latitude
            result.fix.longitude = report.longitude
            result.fix.recorded_at_ms = report.recorded_at_ms
        return resp

    async def BatchGetLocations(
        self, request: location_ingest_service_pb2.BatchGetLocationsRequest, context: Context
    ) -> location_ingest_service_pb2.BatchGetLocationsResponse:
        ids = check_user_ids(request.user_ids, self.friend_cap)
        if request.include_sharing:
            found, policies = await asyncio.gather(
                self.cache.batch_get(ids, request.include_hidden), self.sharing.policies(ids)
            )
        else:
            found, policies = await self.cache.batch_get(ids, request.include_hidden), []
        resp = location_ingest_service_pb2.BatchGetLocationsResponse()
        for uid, value in found:
            loc = resp.locations.add(user_id=uid)
            loc.fix.MergeFrom(events_pb2.PositionFix.FromString(value))
        for uid, value in policies:
            resp.sharing.add(user_id=uid).policy.MergeFrom(
                events_pb2.SharingPolicy.FromString(value)
            )
        return resp

"""The rules of a location fix, in one place.

Every edge that accepts a fix (LocationService.ReportLocation, the
NearbyService.Connect stream) validates it here and names the offending field
in its own caller's words; location_svc's internal ReportLocations applies the
same rules again (its callers are other processes with their own clocks) and
answers each report with a structured rejection instead of a message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

from mesh.errors import InvalidArgument, invalid_field
from mesh.settings import Settings

DAY_MS = 86_400_000

LATITUDE = "latitude"
LONGITUDE = "longitude"
RECORDED_AT = "recorded_at"
"""The parts of a fix a problem can be about (callers map them to field names)."""

PUBLIC_FIELDS: Mapping[str, str] = {
    LATITUDE: "position.latitude",
    LONGITUDE: "position.longitude",
    RECORDED_AT: "recorded_at",
}
"""Field names of a public request holding `position` (LatLng) and `recorded_at`."""


class Problem(NamedTuple):
    """What is wrong with a fix: the part, and a description without the field name."""

    part: str
    description: str


def position_problem(latitude: float, longitude: float) -> Problem | None:
    if not math.isfinite(latitude):
        return Problem(LATITUDE, "must be a finite number")
    if not math.isfinite(longitude):
        return Problem(LONGITUDE, "must be a finite number")
    if not -90.0 <= latitude <= 90.0:
        return Problem(LATITUDE, f"{latitude} is outside [-90, 90]")
    if not -180.0 <= longitude <= 180.0:
        return Problem(LONGITUDE, f"{longitude} is outside [-180, 180]")
    return None


class FixRules:
    """Coordinates in range and finite; a device time neither too far in the
    future (settings.max_clock_skew_s) nor older than the history retention."""

    __slots__ = ("max_skew_s", "retention_days", "retention_ms", "skew_ms")

    def __init__(self, settings: Settings) -> None:
        self.max_skew_s = settings.max_clock_skew_s
        self.skew_ms = int(settings.max_clock_skew_s * 1000)
        self.retention_days = settings.history_retention_days
        self.retention_ms = settings.history_retention_days * DAY_MS

    def problem(
        self, latitude: float, longitude: float, recorded_at_ms: int | None, now: int
    ) -> Problem | None:
        """None when the fix is valid; recorded_at_ms None = no device time (now)."""
        bad = position_problem(latitude, longitude)
        if bad is not None or recorded_at_ms is None:
            return bad
        if recorded_at_ms > now + self.skew_ms:
            return Problem(
                RECORDED_AT,
                f"is {(recorded_at_ms - now) / 1000:.1f} s in the future (at most "
                f"{self.max_skew_s:g} s allowed): check the device clock",
            )
        if recorded_at_ms < now - self.retention_ms:
            return Problem(
                RECORDED_AT, f"is older than the {self.retention_days}-day history retention"
            )
        return None

    def check(
        self,
        latitude: float,
        longitude: float,
        recorded_at_ms: int | None,
        now: int,
        fields: Mapping[str, str] = PUBLIC_FIELDS,
    ) -> None:
        """Raise INVALID_ARGUMENT naming the caller's field (`fields`: part -> name)."""
        bad = self.problem(latitude, longitude, recorded_at_ms, now)
        if bad is not None:
            raise rejection(bad, fields)


def rejection(problem: Problem, fields: Mapping[str, str]) -> InvalidArgument:
    return invalid_field(fields[problem.part], problem.description)

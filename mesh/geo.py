"""Great-circle distance and coordinate validation."""

from __future__ import annotations

import math

from mesh.errors import InvalidArgument, invalid_field

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)
_RAD = math.pi / 180.0


def distance_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Haversine great-circle distance in metres."""
    p1, p2 = lat1 * _RAD, lat2 * _RAD
    dp = p2 - p1
    dl = (lng2 - lng1) * _RAD
    a = math.sin(dp * 0.5) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl * 0.5) ** 2
    return 2.0 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def check_position(
    latitude: float, longitude: float, prefix: str = "position"
) -> InvalidArgument | None:
    """The INVALID_ARGUMENT for a bad coordinate pair, or None when it is valid."""
    if not math.isfinite(latitude):
        return invalid_field(f"{prefix}.latitude", "must be a finite number")
    if not math.isfinite(longitude):
        return invalid_field(f"{prefix}.longitude", "must be a finite number")
    if not -90.0 <= latitude <= 90.0:
        return invalid_field(f"{prefix}.latitude", f"{latitude} is outside [-90, 90]")
    if not -180.0 <= longitude <= 180.0:
        return invalid_field(f"{prefix}.longitude", f"{longitude} is outside [-180, 180]")
    return None

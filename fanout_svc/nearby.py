"""The nearby list: its order, its pages and how a friend is written out.

Order: distance, then user id. A page token is an opaque keyset position
(distance, user id), so a page request continues after the last friend the
client saw, whether it is answered on the stream or by ListNearbyFriends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from nearby.v1 import nearby_service_pb2 as pb

from mesh import paging
from mesh.errors import invalid_field
from mesh.sharing import PRECISION_APPROXIMATE, PRECISION_PRECISE

TOKEN_KIND = "nearby"
MAX_PAGE_SIZE = 100


class Entry(NamedTuple):
    """A nearby friend as the list holds it."""

    distance: float
    user_id: str
    display_name: str
    lat: float
    lng: float
    t_ms: int
    approximate: bool = False
    """(lat, lng) is a cell centre and distance rounded (mesh/sharing.py)."""


def fill(msg: pb.NearbyFriend, e: Entry) -> None:
    msg.user_id = e.user_id
    msg.display_name = e.display_name
    pos = msg.position
    pos.latitude = e.lat
    pos.longitude = e.lng
    msg.distance_meters = e.distance
    ts = msg.update_time
    ts.seconds = e.t_ms // 1000
    ts.nanos = (e.t_ms % 1000) * 1_000_000
    msg.precision = PRECISION_APPROXIMATE if e.approximate else PRECISION_PRECISE


class Page(NamedTuple):
    entries: list[Entry]
    total: int
    next_token: str


def page_of(entries: Sequence[Entry], page_token: str, size: int) -> Page:
    """The `size` entries after the token's position (entries in any order)."""
    after = paging.decode_token(page_token, TOKEN_KIND)
    ordered = sorted(entries)
    start = 0
    if after is not None:
        try:
            key = (float(after[0]), str(after[1]))
        except (TypeError, ValueError, IndexError) as exc:
            raise invalid_field("page_token", "is not a token of the nearby list") from exc
        start = next(
            (i for i, e in enumerate(ordered) if (e.distance, e.user_id) > key), len(ordered)
        )
    chunk = ordered[start : start + size]
    more = start + size < len(ordered)
    token = (
        paging.encode_token(TOKEN_KIND, [chunk[-1].distance, chunk[-1].user_id])
        if more and chunk
        else ""
    )
    return Page(chunk, len(ordered), token)


def page_size(requested: int, default: int) -> int:
    return paging.page_size(requested, default, MAX_PAGE_SIZE)

"""Checks of request fields that the store does not do itself."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Any

from mesh.errors import invalid_field
from mesh.paging import decode_token, encode_token

from .store import RequestPosition

MAX_DISPLAY_NAME = 100


def check_display_name(value: str, field: str = "display_name") -> str:
    """1 to 100 characters, not only white space, no control characters."""
    if not value.strip():
        raise invalid_field(field, "must not be empty or blank")
    if len(value) > MAX_DISPLAY_NAME:
        raise invalid_field(field, f"must be at most {MAX_DISPLAY_NAME} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise invalid_field(field, "must not contain control characters (newlines, tabs, …)")
    return value


def friends_token(last_friend_id: str) -> str:
    return encode_token("friends", last_friend_id)


def friends_position(token: str) -> str | None:
    position: Any = decode_token(token, "friends")
    if position is None:
        return None
    if not isinstance(position, str) or not position:
        raise _bad_token()
    return position


def requests_token(incoming: bool, position: RequestPosition) -> str:
    return encode_token(_requests_kind(incoming), [position[0].isoformat(), position[1]])


def requests_position(token: str, incoming: bool) -> RequestPosition | None:
    position: Any = decode_token(token, _requests_kind(incoming))
    if position is None:
        return None
    try:
        created, other = position
        at = datetime.fromisoformat(created)
    except (TypeError, ValueError) as exc:
        raise _bad_token() from exc
    if at.tzinfo is None or not isinstance(other, str) or not other:
        raise _bad_token()
    return at, other


def _requests_kind(incoming: bool) -> str:
    return "requests.in" if incoming else "requests.out"


def _bad_token() -> Exception:
    return invalid_field("page_token", "is not a token returned by this list call")

"""AIP-158 pagination helpers: page sizes and opaque page tokens."""

from __future__ import annotations

import base64
import json
from typing import Any

from mesh.errors import invalid_field


def page_size(requested: int, default: int, maximum: int) -> int:
    """0 → default, above maximum → maximum, negative → INVALID_ARGUMENT."""
    if requested < 0:
        raise invalid_field("page_size", "must not be negative")
    if requested == 0:
        return default
    return min(requested, maximum)


def encode_token(kind: str, position: Any) -> str:
    raw = json.dumps({"k": kind, "p": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, kind: str) -> Any:
    """The position stored in a token made by encode_token(kind, ...); None for ''."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = json.loads(raw)
        if doc["k"] != kind:
            raise ValueError(kind)
        return doc["p"]
    except (ValueError, KeyError, TypeError) as exc:
        raise invalid_field("page_token", "is not a token returned by this list call") from exc

"""Who is calling: the identity Envoy derived from the caller's JWT.

Envoy removes any client-sent copy of these headers, validates the token and
sets them from its claims; backends trust only these headers. Direct callers
on loopback (operators, tests) set them themselves.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mesh.errors import InvalidArgument, PermissionDenied, Unauthenticated, invalid_field
from mesh.types import Context

USER_HEADER = "x-nearby-user-id"
ADMIN_HEADER = "x-nearby-admin"
TOKEN_EXP_HEADER = "x-nearby-token-exp"
"""The token's `exp` (Unix seconds), set by Envoy from the verified token
(stripped from what clients send, like the others): streams end at it."""

USER_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _metadata(context: Context) -> dict[str, str]:
    md = context.invocation_metadata() or ()
    return {k: v for k, v in md if isinstance(v, str)}


def caller_id(context: Context) -> str:
    """The authenticated user id; UNAUTHENTICATED when there is none."""
    user_id = _metadata(context).get(USER_HEADER, "")
    if not user_id:
        raise Unauthenticated(
            "no authenticated user: call through the edge with a bearer token",
            reason="MISSING_IDENTITY",
        )
    if not USER_ID_RE.match(user_id):
        raise Unauthenticated("the token's subject is not a valid user id", reason="BAD_IDENTITY")
    return user_id


def token_expiry(context: Context) -> float | None:
    """The caller's token expiry (Unix seconds), or None without one (a direct
    caller on loopback, or a token without `exp`)."""
    raw = _metadata(context).get(TOKEN_EXP_HEADER, "")
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def is_admin(context: Context) -> bool:
    return _metadata(context).get(ADMIN_HEADER, "").lower() == "true"


def require_admin(context: Context) -> None:
    if not is_admin(context):
        raise PermissionDenied("this call needs a token with the admin claim", reason="NOT_ADMIN")


def check_user_id(value: str, field: str = "user_id") -> str:
    """Validate a user id given in a request body."""
    if not value:
        raise invalid_field(field, "must not be empty")
    if not USER_ID_RE.match(value):
        raise invalid_field(field, "must be 1-64 characters from [A-Za-z0-9._-]")
    return value


def check_user_ids(
    values: Sequence[str], limit: int, field: str = "user_ids", limit_is: str = "the friend cap"
) -> list[str]:
    """Validate a batch of user ids given in a request body (at most `limit`,
    which is `limit_is`)."""
    if len(values) > limit:
        raise invalid_field(field, f"{len(values)} ids; at most {limit} ({limit_is})")
    for i, value in enumerate(values):
        check_user_id(value, f"{field}[{i}]")
    return list(values)


__all__ = [
    "ADMIN_HEADER",
    "TOKEN_EXP_HEADER",
    "USER_HEADER",
    "InvalidArgument",
    "caller_id",
    "check_user_id",
    "check_user_ids",
    "is_admin",
    "require_admin",
    "token_expiry",
]

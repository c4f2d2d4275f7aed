"""`nearby forget`: delete your location history (a range, or all) or your
account, through the edge, with the Python SDK.

    nearby forget history --user alice --all
    nearby forget history --user alice --since 2026-01-01T00:00Z --until 2026-02-01T00:00Z
    nearby forget account --user alice
    nearby forget account --user ops --admin --user-id bob    # an admin deletes bob
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import datetime

from nearby import NearbyClient
from nearby.errors import NearbyError

from mesh.settings import Settings


def _when(text: str) -> datetime:
    """An ISO 8601 time with a zone (Z or +hh:mm)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a time zone, e.g. 2026-01-01T00:00Z")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `nearby forget`."""
    settings = Settings.from_env()
    parser.add_argument("what", choices=("history", "account"), help="what to delete")
    who = parser.add_mutually_exclusive_group()
    who.add_argument(
        "--token", default=os.environ.get("NEARBY_TOKEN"), help="bearer token (env NEARBY_TOKEN)"
    )
    who.add_argument("--user", help="mint a local dev token for this user id (as `nearby token`)")
    parser.add_argument("--admin", action="store_true", help="the minted token is an admin's")
    parser.add_argument(
        "--user-id", default="", help="whose data (default: the token's user; others: admin)"
    )
    parser.add_argument("--all", action="store_true", help="history: all of it")
    parser.add_argument("--since", type=_when, help="history: from this time (inclusive)")
    parser.add_argument("--until", type=_when, help="history: up to this time (exclusive)")
    parser.add_argument(
        "--target",
        default=f"localhost:{settings.envoy_port}",
        help="the edge (Envoy) address (default %(default)s)",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS (default: plaintext)")


def _token(args: argparse.Namespace) -> str:
    if args.user:
        from stack import paths, tokens

        settings = Settings.from_env()
        key = tokens.load_or_create(paths.home(settings))
        return key.sign(
            args.user,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            admin=args.admin,
        )
    if not args.token:
        raise SystemExit("nearby forget: give --token TOKEN (or NEARBY_TOKEN) or --user USER_ID")
    return str(args.token)


async def forget(args: argparse.Namespace) -> str:
    """Runs the deletion; what to print."""
    async with NearbyClient(args.target, _token(args), secure=args.tls) as client:
        if args.what == "account":
            return f"deleted user {await client.delete_user(args.user_id)}"
        n = await client.delete_location_history(
            start_time=args.since, end_time=args.until, all=args.all, user_id=args.user_id
        )
        return f"deleted {n} location(s) from the history"


def main(args: argparse.Namespace) -> int:
    """`nearby forget`: 0 when done, 2 for a refused token or bad input, 1 otherwise."""
    try:
        print(asyncio.run(forget(args)))
        return 0
    except NearbyError as exc:  # AuthError too: a refused token or missing admin claim
        print(f"nearby forget: {exc}", file=sys.stderr)
        return 1 if exc.code.name == "UNAVAILABLE" else 2

"""`nearby watch`: a user's live nearby list in the terminal, refreshing in place.

    nearby watch --token "$(nearby token alice)" --lat 52.52 --lng 13.405 [--walk]
    nearby watch --user alice --lat 52.52 --lng 13.405     # mints a local dev token

It holds one NearbyService.Connect stream through the SDK (so it reconnects by
itself) and redraws a rich table: name, distance, when each friend was last
updated ("12 s ago"; "~" marks a friend who shares only an approximate
location), the total count, the connection state and your own sharing
settings (audience, precision, timed rules, ghost mode). `--walk` moves the user a little every
few seconds, which makes demos lively. Ctrl-C exits cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from nearby import (
    AuthError,
    Event,
    FriendLeft,
    FriendMoved,
    NearbyClient,
    NearbyError,
    NearbyFriend,
    NearbySession,
    Page,
    SharingSettings,
    Snapshot,
)
from nearby.events import now
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mesh.settings import Settings

EARTH_RADIUS_M = 6_371_008.8
SHARING_REFRESH_S = 5.0
STATE_STYLE = {
    "idle": "dim",
    "connecting": "yellow",
    "connected": "green",
    "reconnecting": "yellow",
    "closed": "red",
}


def format_distance(meters: float) -> str:
    """850 m, 2.40 km, 12.5 km."""
    if meters < 1000:
        return f"{meters:.0f} m"
    if meters < 10_000:
        return f"{meters / 1000:.2f} km"
    return f"{meters / 1000:.1f} km"


def format_friend_distance(f: NearbyFriend) -> str:
    """An approximate friend's distance is marked: "~1.50 km"."""
    return ("~" if f.approximate else "") + format_distance(f.distance_meters)


def describe_sharing(s: SharingSettings | None) -> str:
    """One line: who sees you, how precisely, rules and ghost mode."""
    if s is None:
        return "sharing: (not known yet)"

    def names(ids: tuple[str, ...]) -> str:
        shown = ", ".join(ids[:3]) + (f" +{len(ids) - 3}" if len(ids) > 3 else "")
        return f"{len(ids)} ({shown})" if ids else "0"

    who = {
        "ALL_FRIENDS": "all friends",
        "ONLY": f"only {names(s.audience_user_ids)}",
        "ALL_EXCEPT": f"all friends except {names(s.audience_user_ids)}",
    }.get(s.audience, s.audience.lower())
    parts = [f"sharing with {who}, {s.default_precision.lower()}"]
    for r in s.friend_precisions:
        until = f" until {r.expires_at.astimezone():%H:%M:%S}" if r.expires_at else ""
        parts.append(f"{r.precision.lower()} for {r.friend_id}{until}")
    line = "; ".join(parts)
    if s.hidden:
        until = f"until {s.hidden_until.astimezone():%H:%M:%S}" if s.hidden_until else "until off"
        line = f"GHOST MODE ({until}): nobody sees you; otherwise {line}"
    return line


def format_age(then: datetime, at: datetime) -> str:
    """ "just now", "12 s ago", "3 min ago", "2 h ago"."""
    seconds = max(0.0, (at - then).total_seconds())
    if seconds < 1:
        return "just now"
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    return f"{seconds // 3600:.0f} h ago"


def step(lat: float, lng: float, heading_deg: float, meters: float) -> tuple[float, float]:
    """The point `meters` away from (lat, lng) on a compass heading."""
    d = meters / EARTH_RADIUS_M
    h = math.radians(heading_deg)
    p1, l1 = math.radians(lat), math.radians(lng)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(h))
    l2 = l1 + math.atan2(
        math.sin(h) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    lng2 = (math.degrees(l2) + 540.0) % 360.0 - 180.0
    return max(-90.0, min(90.0, math.degrees(p2))), lng2


def describe(event: Event) -> str:
    """One log line for an event."""
    if isinstance(event, Snapshot):
        return f"snapshot: {event.total_size} nearby within {format_distance(event.radius_meters)}"
    if isinstance(event, FriendMoved):
        verb = "appeared" if event.is_new else "moved"
        f = event.friend
        return f"{f.display_name or f.user_id} {verb}, {format_friend_distance(f)}"
    if isinstance(event, FriendLeft):
        return f"{event.user_id} left ({event.reason})"
    if isinstance(event, Page):
        return f"page: {len(event.friends)} more"
    return f"reconnecting in {event.delay_s:.1f} s (attempt {event.attempt}): {event.cause}"


@dataclass
class WatchState:
    """What the screen shows, fed by the event loop."""

    who: str
    target: str
    session: NearbySession
    log: deque[tuple[datetime, str]] = field(default_factory=lambda: deque(maxlen=6))
    events: int = 0
    sharing: SharingSettings | None = None

    def record(self, event: Event) -> None:
        """Counts the event and logs one line about it."""
        self.events += 1
        self.log.append((now(), describe(event)))


def render(state: WatchState, at: datetime | None = None, max_rows: int = 30) -> RenderableType:
    """The whole screen for the current state (pure: easy to test)."""
    at = at or now()
    s = state.session
    friends: list[NearbyFriend] = s.nearby
    radius = f" within {format_distance(s.radius_meters)}" if s.radius_meters else ""
    title = f"Nearby friends of {state.who}: {s.total_size}{radius}"
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("name")
    table.add_column("distance", justify="right")
    table.add_column("updated", justify="right")
    for i, f in enumerate(friends[:max_rows], 1):
        name = Text(f.display_name or f.user_id)
        if f.display_name and f.display_name.casefold() != f.user_id.casefold():
            name.append(f"  {f.user_id}", style="dim")
        table.add_row(str(i), name, format_friend_distance(f), format_age(f.updated_at, at))
    hidden = s.total_size - min(len(friends), max_rows)
    if hidden > 0:
        table.caption = f"… and {hidden} more"
    elif not friends:
        table.caption = "nobody nearby yet" if s.state == "connected" else ""

    lat, lng = s.location
    status = Text()
    status.append("● ", style=STATE_STYLE.get(s.state, ""))
    status.append(s.state, style=STATE_STYLE.get(s.state, ""))
    status.append(f"  {state.target}  at {lat:.5f}, {lng:.5f}", style="dim")
    if s.connects > 1:
        status.append(f"  reconnects: {s.connects - 1}", style="dim")
    if s.state != "connected" and s.last_error:
        status.append(f"\n  {s.last_error}", style="yellow")
    status.append(f"\n{describe_sharing(state.sharing)}", style="cyan")
    log = Text(style="dim")
    for when, line in state.log:
        log.append(f"{when:%H:%M:%S} {line}\n")
    return Group(status, table, log)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `nearby watch`."""
    settings = Settings.from_env()
    who = parser.add_mutually_exclusive_group()
    who.add_argument(
        "--token", default=os.environ.get("NEARBY_TOKEN"), help="bearer token (env NEARBY_TOKEN)"
    )
    who.add_argument("--user", help="mint a local dev token for this user id (as `nearby token`)")
    parser.add_argument(
        "--target",
        default=f"localhost:{settings.envoy_port}",
        help="the edge (Envoy) address (default %(default)s)",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS (default: plaintext)")
    parser.add_argument("--lat", type=float, required=True, help="your latitude")
    parser.add_argument("--lng", type=float, required=True, help="your longitude")
    parser.add_argument("--walk", action="store_true", help="wander around (demo)")
    parser.add_argument(
        "--walk-every", type=float, default=5.0, help="seconds between steps (default 5)"
    )
    parser.add_argument("--step", type=float, default=100.0, help="metres per step (default 100)")
    parser.add_argument(
        "--duration", type=float, default=0.0, help="exit after this many seconds (0: never)"
    )


def _token(args: argparse.Namespace) -> tuple[str, str]:
    """(token, who) from --token or --user."""
    if args.user:
        from stack import paths, tokens

        settings = Settings.from_env()
        key = tokens.load_or_create(paths.home(settings))
        token = key.sign(args.user, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
        return token, args.user
    if not args.token:
        raise SystemExit("nearby watch: give --token TOKEN (or NEARBY_TOKEN) or --user USER_ID")
    return args.token, _subject(args.token)


def _subject(token: str) -> str:
    """The token's `sub`, for the title (not verified: display only)."""
    import base64
    import json

    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims.get("sub", "you"))
    except (IndexError, ValueError):
        return "you"


async def _walk(session: NearbySession, every: float, meters: float, stop: asyncio.Event) -> None:
    heading = random.uniform(0, 360)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
            return
        heading = (heading + random.uniform(-40, 40)) % 360
        await session.update_location(*step(*session.location, heading, meters))


async def _sharing(client: NearbyClient, state: WatchState, stop: asyncio.Event) -> None:
    """Your own sharing settings, re-read every few seconds (timers end)."""
    while not stop.is_set():
        with contextlib.suppress(NearbyError):
            state.sharing = await client.get_sharing_settings()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SHARING_REFRESH_S)


async def _consume(session: NearbySession, state: WatchState) -> None:
    async for event in session:
        state.record(event)


async def watch(args: argparse.Namespace, console: Console) -> int:
    """Runs the live screen until Ctrl-C / SIGTERM / --duration; raises
    AuthError / NearbyError when the session fails for good."""
    token, who = _token(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if args.duration > 0:
        loop.call_later(args.duration, stop.set)
    async with NearbyClient(args.target, token, secure=args.tls) as client:
        session = client.connect(args.lat, args.lng)
        state = WatchState(who, args.target, session)
        reader = asyncio.create_task(_consume(session, state))
        sharing = asyncio.create_task(_sharing(client, state, stop))
        walker = (
            asyncio.create_task(_walk(session, args.walk_every, args.step, stop))
            if args.walk
            else None
        )
        try:
            with Live(render(state), console=console, refresh_per_second=4) as live:
                while not stop.is_set() and not reader.done():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stop.wait()), 0.5)
                    live.update(render(state))
        finally:
            stop.set()
            await session.close()
            for task in (reader, walker, sharing):
                if task is None:
                    continue
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
    return 0


def main(args: argparse.Namespace) -> int:
    """`nearby watch`: 0 on a clean exit, 2 for a refused token, 1 otherwise."""
    console = Console()
    try:
        return asyncio.run(watch(args, console))
    except AuthError as exc:
        print(
            f"nearby watch: the token was refused: {exc}\n"
            "  get a fresh one with `nearby token USER_ID` (or use --user USER_ID locally)",
            file=sys.stderr,
        )
        return 2
    except NearbyError as exc:
        print(f"nearby watch: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"nearby watch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0

"""`nearby sim`: simulated users walking around a city, through Envoy, with the SDK.

    nearby sim --users 2000 --interval 5 --duration 60
    nearby sim --target 127.0.0.1:8080 --database-url postgresql://...  # a running stack

It generates a clustered, seedable social graph (bench.graph), bulk-loads it
with COPY into friend_svc's tables, mints a token per user and runs every
user as a real SDK client: one Connect stream each, a random walk at walking
speed inside its city, a location report every `--interval` seconds. Every
push is verified: a push about a non-friend, a position the friend never
reported, or a friend farther than radius + hysteresis (+ how far the
receiver may have walked meanwhile) is an error. Without `--target` it starts
its own private stack (Redis, Postgres, the services with one fan-out replica
per core, Envoy) and stops it afterwards. Ctrl-C stops cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from bench import graph
from bench.loadgen import percentiles
from mesh.geo import distance_m
from mesh.settings import Settings

WALK_SPEED_MPS = 1.4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=1000, help="simulated users (default 1000)")
    parser.add_argument("--avg-friends", type=float, default=20.0, help="average friends per user")
    parser.add_argument(
        "--nearby-share", type=float, default=0.1, help="share of friends in the same city (0.1)"
    )
    parser.add_argument("--seed", type=int, default=1, help="graph and walk seed (reproducible)")
    parser.add_argument(
        "--interval", type=float, default=30.0, help="seconds between a user's reports (30)"
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds to run; 0 = until Ctrl-C (60)"
    )
    parser.add_argument(
        "--connect-rate", type=float, default=400.0, help="new streams per second at start (400)"
    )
    parser.add_argument(
        "--target", default="", help="Envoy of a running stack, e.g. 127.0.0.1:8080 (default: own)"
    )
    parser.add_argument(
        "--database-url", default="", help="its Postgres, to load the graph (with --target)"
    )
    parser.add_argument(
        "--fanout-replicas",
        type=int,
        default=0,
        help="own stack: fan-out replicas (default: cores)",
    )
    parser.add_argument(
        "--redis-cluster",
        type=int,
        default=0,
        metavar="N",
        help="own stack: on a private Redis Cluster of N masters (default: one Redis)",
    )
    parser.add_argument("--prefix", default="", help="user id prefix (default: sim<seed>-)")
    parser.add_argument(
        "--save", default="", help="write the summary as JSON here (e.g. bench/results/sim.json)"
    )
    parser.add_argument(
        "--per-connection", type=int, default=100, help="users sharing one HTTP/2 connection"
    )


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    connected: int = 0
    updates: int = 0
    pushes: int = 0
    moves: int = 0
    left: int = 0
    reconnects: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=50_000))
    all_latencies: list[float] = field(default_factory=list)
    drops: float | None = None
    window: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=20))

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(text)

    def rates(self) -> tuple[float, float]:
        now = time.monotonic()
        self.window.append((now, self.updates, self.pushes))
        t0, u0, p0 = self.window[0]
        dt = now - t0
        return ((self.updates - u0) / dt, (self.pushes - p0) / dt) if dt > 0 else (0.0, 0.0)


class World:
    """What the simulator knows: friendships, homes, positions reported."""

    def __init__(self, g: graph.Graph, radius_m: float, slack_m: float) -> None:
        self.g = g
        self.friends = g.friends()
        self.index = {uid: i for i, uid in enumerate(g.ids)}
        self.pos = list(g.home)
        self.reported: list[deque[tuple[float, float]]] = [deque(maxlen=8) for _ in g.ids]
        self.radius_m = radius_m
        self.slack_m = slack_m

    def check(self, me: int, friend_id: str, lat: float, lng: float) -> str | None:
        f = self.index.get(friend_id)
        if f is None or f not in self.friends[me]:
            return f"{self.g.ids[me]} got a push about {friend_id}, who is not a friend"
        if not any(abs(a - lat) < 1e-7 and abs(b - lng) < 1e-7 for a, b in self.reported[f]):
            return f"{self.g.ids[me]} got a position {friend_id} never reported"
        d = distance_m(*self.pos[me], lat, lng)
        if d > self.radius_m + self.slack_m:
            return f"{self.g.ids[me]} got {friend_id} at {d:,.0f} m (radius {self.radius_m:,.0f})"
        return None


def walk(
    rnd: random.Random,
    home: tuple[float, float],
    pos: tuple[float, float],
    heading: float,
    step_m: float,
    bound_m: float,
) -> tuple[tuple[float, float], float]:
    """One step of a random walk that stays within `bound_m` of home."""
    heading += rnd.uniform(-0.6, 0.6)
    if distance_m(*home, *pos) > bound_m:  # turn back towards home
        heading = math.atan2(home[1] - pos[1], home[0] - pos[0])
    new = graph.offset(pos[0], pos[1], step_m * math.cos(heading), step_m * math.sin(heading))
    return new, heading


async def user(
    i: int,
    world: World,
    client: Any,
    token: str,
    args: argparse.Namespace,
    stats: Stats,
    stop: asyncio.Event,
) -> None:
    from nearby import FriendLeft, FriendMoved, Reconnecting, Snapshot

    rnd = random.Random(args.seed * 1_000_003 + i)
    await asyncio.sleep(i / args.connect_rate)
    if stop.is_set():
        return
    home = world.g.home[i]
    step_m = WALK_SPEED_MPS * args.interval
    world.reported[i].append(world.pos[i])
    session = client.connect(*world.pos[i], token=token)
    heading = rnd.uniform(0, 2 * math.pi)
    connected = False

    async def walker() -> None:
        nonlocal heading
        await asyncio.sleep(rnd.uniform(0, args.interval))
        while not stop.is_set():
            world.pos[i], heading = walk(rnd, home, world.pos[i], heading, step_m, 3000.0)
            world.reported[i].append(world.pos[i])
            try:
                await session.update_location(*world.pos[i])
                stats.updates += 1
            except Exception as exc:
                stats.error(f"{world.g.ids[i]} update failed: {exc}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), args.interval)

    walk_task: asyncio.Task[None] | None = None
    try:
        async for event in session:
            if stop.is_set():
                break
            if isinstance(event, Snapshot):
                if not connected:
                    connected = True
                    stats.connected += 1
                    walk_task = asyncio.create_task(walker())
                for fr in event.friends:
                    problem = world.check(i, fr.user_id, fr.latitude, fr.longitude)
                    if problem:
                        stats.error(problem)
            elif isinstance(event, FriendMoved):
                stats.pushes += 1
                stats.moves += 1
                fr = event.friend
                problem = world.check(i, fr.user_id, fr.latitude, fr.longitude)
                if problem:
                    stats.error(problem)
                elif not event.is_new:
                    ms = (event.received_at - fr.updated_at).total_seconds() * 1000
                    stats.latencies.append(ms)
                    stats.all_latencies.append(ms)
            elif isinstance(event, FriendLeft):
                stats.pushes += 1
                stats.left += 1
                f = world.index.get(event.user_id)
                if f is None or f not in world.friends[i]:
                    stats.error(f"{world.g.ids[i]} told a non-friend {event.user_id} left")
            elif isinstance(event, Reconnecting):
                stats.reconnects += 1
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        stats.error(f"{world.g.ids[i]} session ended: {type(exc).__name__}: {exc}")
    finally:
        if connected:
            stats.connected -= 1
        if walk_task is not None:
            walk_task.cancel()
        await session.close()


def view(stats: Stats, args: argparse.Namespace, target: str) -> Table:
    ups, pps = stats.rates()
    lat = percentiles(list(stats.latencies))
    t = Table(title=f"nearby sim: {args.users:,} users through {target}", show_header=False)
    t.add_column(justify="right")
    t.add_column()
    elapsed = time.monotonic() - stats.started
    t.add_row(
        "elapsed", f"{elapsed:,.0f} s" + (f" of {args.duration:,.0f}" if args.duration else "")
    )
    t.add_row("streams connected", f"{stats.connected:,}")
    t.add_row("updates/s", f"{ups:,.0f}  (total {stats.updates:,})")
    t.add_row("pushes/s", f"{pps:,.0f}  (moves {stats.moves:,}, left {stats.left:,})")
    t.add_row("drops (fan-out)", "n/a" if stats.drops is None else f"{stats.drops:,.0f}")
    t.add_row("e2e latency", f"p50 {lat.get('p50', 0):.1f} ms  p99 {lat.get('p99', 0):.1f} ms")
    t.add_row("reconnects", f"{stats.reconnects:,}")
    t.add_row("errors", f"[{'red' if stats.errors else 'green'}]{stats.errors:,}[/]")
    return t


async def simulate(args: argparse.Namespace, console: Console) -> int:
    settings = Settings.from_env()
    prefix = args.prefix or f"sim{args.seed}-"
    g = graph.clustered(
        args.users, args.avg_friends, nearby_share=args.nearby_share, seed=args.seed, prefix=prefix
    )
    world = World(
        g,
        settings.nearby_radius_m,
        settings.nearby_hysteresis_m + 2 * WALK_SPEED_MPS * args.interval + 50,
    )
    stack = contextlib.AsyncExitStack()
    fanouts: list[Any] = []
    token: Callable[[str], str]
    async with stack:
        if args.target:
            if not args.target.startswith("127.0.0.1:") and not args.target.startswith(
                "localhost:"
            ):
                console.print("nearby sim: --target must be a loopback address (127.0.0.1:PORT)")
                return 2
            if not args.database_url:
                console.print("nearby sim: --target needs --database-url (to load the graph)")
                return 2
            if args.redis_cluster:
                console.print("nearby sim: --redis-cluster is for its own stack, not --target")
                return 2
            from stack import tokens

            key = tokens.load_or_create(Path(settings.nearby_home))
            target, db = args.target, args.database_url

            def sign(uid: str) -> str:
                return key.sign(
                    uid,
                    issuer=settings.jwt_issuer,
                    audience=settings.jwt_audience,
                    ttl_s=max(3600, args.duration * 2),
                )

            token = sign
        else:
            from bench.harness import Harness

            console.print("starting a private stack (Redis, Postgres, services, Envoy)…")
            root = Path(tempfile.mkdtemp(prefix="nearby-sim-"))
            h = Harness(root)
            stack.callback(shutil.rmtree, root, ignore_errors=True)
            stack.callback(h.close)
            if args.redis_cluster:
                redis_url, _ = h.redis_cluster(args.redis_cluster)
            else:
                redis_url, _ = h.redis()
            db = h.database("sim")
            replicas = args.fanout_replicas or (os.cpu_count() or 1)
            mesh = h.start_mesh(
                redis_url,
                db,
                fanout_replicas=replicas,
                env={"MIN_REPORT_INTERVAL_S": "1"},
                cluster=bool(args.redis_cluster),
            )
            h.start_envoy(mesh)
            fanouts = mesh.fanouts
            target = f"127.0.0.1:{mesh.envoy_port}"
            token = h.token
        loaded = await graph.load(db, g)
        summary = graph.summary(g, settings.nearby_radius_m)
        console.print(f"graph: {summary} (new rows: {loaded})")
        tokens_of = [token(uid) for uid in g.ids]
        stats = Stats()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        from nearby import NearbyClient

        # many users share one HTTP/2 connection, as behind a carrier NAT; each
        # session carries its own user's token
        clients = [
            NearbyClient(target, secure=False, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(math.ceil(len(g.ids) / args.per_connection))
        ]
        stack.push_async_callback(_close_all, clients)
        tasks = [
            asyncio.create_task(
                user(i, world, clients[i // args.per_connection], tokens_of[i], args, stats, stop)
            )
            for i in range(len(g.ids))
        ]
        deadline = time.monotonic() + args.duration if args.duration else math.inf
        with Live(view(stats, args, target), console=console, refresh_per_second=2) as live:
            while not stop.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                if fanouts:
                    stats.drops = await asyncio.to_thread(_drops, fanouts)
                live.update(view(stats, args, target))
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        lat = percentiles(stats.all_latencies)
        console.print(
            f"summary: {len(g.ids):,} users, {stats.updates:,} updates, {stats.pushes:,} pushes "
            f"({stats.moves:,} moves, {stats.left:,} left), reconnects {stats.reconnects:,}, "
            f"e2e p50 {lat.get('p50', 0):.1f} ms p99 {lat.get('p99', 0):.1f} ms "
            f"({lat.get('n', 0):,} samples), drops "
            f"{'n/a' if stats.drops is None else f'{stats.drops:,.0f}'}, errors {stats.errors:,}"
        )
        for line in stats.error_samples:
            console.print(f"  error: {line}")
        if args.save:
            import datetime as dt
            import json

            elapsed = time.monotonic() - stats.started
            summary_out = {
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "command": "nearby sim "
                + " ".join(
                    f"--{k.replace('_', '-')} {v}"
                    for k, v in (
                        ("users", args.users),
                        ("avg_friends", args.avg_friends),
                        ("interval", args.interval),
                        ("duration", args.duration),
                        *((("redis_cluster", args.redis_cluster),) if args.redis_cluster else ()),
                    )
                ),
                "graph": summary,
                "own_stack": not args.target,
                "seconds": round(elapsed, 1),
                "updates": stats.updates,
                "pushes": stats.pushes,
                "moves": stats.moves,
                "left": stats.left,
                "updates_per_s": stats.updates / elapsed,
                "pushes_per_s": stats.pushes / elapsed,
                "reconnects": stats.reconnects,
                "drops": stats.drops,
                "e2e_ms": lat,
                "errors": stats.errors,
                "error_samples": stats.error_samples,
            }
            Path(args.save).parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(summary_out, indent=2) + "\n"
            await asyncio.to_thread(Path(args.save).write_text, text)
        return 1 if stats.errors else 0


async def _close_all(clients: list[Any]) -> None:
    for c in clients:
        await c.close()


def _drops(fanouts: list[Any]) -> float:
    from bench.harness import metric

    return sum(metric(f, "nearby_fanout_drops_total") for f in fanouts)


def main(args: argparse.Namespace) -> int:
    console = Console()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    try:
        return asyncio.run(simulate(args, console))
    except KeyboardInterrupt:
        return 130

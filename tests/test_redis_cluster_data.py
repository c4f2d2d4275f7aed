"""The data side on a real Redis Cluster: keys spread evenly over the
masters, acknowledged history survives a master failover, and reports
follow a slot that migrates under them (ASK, TRYAGAIN, then MOVED)."""

from __future__ import annotations

import asyncio
import collections
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis.asyncio.cluster import RedisCluster

from location_svc.app import LocationApp
from mesh import keys, redis_checks
from mesh.clock import now_ms
from mesh.internal.v1 import (
    events_pb2,
    location_ingest_service_pb2,
    location_ingest_service_pb2_grpc,
)
from mesh.redis import RedisEngine
from mesh.settings import Settings
from presence_svc.cache import PresenceCache
from stack import infra, launcher
from tests.support.fanout import until
from tests.support.services import running

MAX_SPREAD = 1.10
"""Stated bound: max/min of a user's keys (or channels) per master, 10,000
users on 3 masters (measured: ≤ 1.04, see docs/running.md)."""


def _reports(users: list[str], t_ms: int) -> location_ingest_service_pb2.ReportLocationsRequest:
    return location_ingest_service_pb2.ReportLocationsRequest(
        reports=[
            location_ingest_service_pb2.LocationReport(
                user_id=u,
                fix=events_pb2.PositionFix(latitude=1.0, longitude=2.0, recorded_at_ms=t_ms),
            )
            for u in users
        ]
    )


async def _count_per_master(cluster: infra.RedisCluster, pattern: str, size: str) -> list[int]:
    """Per master: the number of keys matching `pattern`, or the sum of their
    sizes (`size` = a command such as XLEN/ZCARD)."""
    counts = []
    for port in cluster.master_ports():
        async with aioredis.Redis(port=port) as node:
            total = 0
            async for key in node.scan_iter(match=pattern, count=1000):
                total += (
                    1 if not size else await node.execute_command(size, key)  # type: ignore[no-untyped-call]
                )
            counts.append(total)
    return counts


def _name(node: Any) -> str:
    assert node is not None
    return str(node.name)


def _spread(counts: list[int]) -> float:
    assert len(counts) == 3 and min(counts) > 0, counts
    return max(counts) / min(counts)


async def test_keys_and_channels_of_10000_users_spread_evenly_over_the_masters(
    redis_cluster: infra.RedisCluster, database_url: str
) -> None:
    redis_cluster.flush()
    users = [f"user-{i}" for i in range(10_000)]
    s = Settings(
        redis_url=redis_cluster.url,
        redis_cluster=True,
        database_url=database_url,
        min_report_interval_s=0.0,
    )
    app = LocationApp(s, history_writer=False)
    async with running(app) as addr, grpc.aio.insecure_channel(addr) as ch:
        stub = location_ingest_service_pb2_grpc.LocationIngestServiceStub(ch)
        t = now_ms()
        for i in range(0, len(users), 2000):
            resp = await stub.ReportLocations(_reports(users[i : i + 2000], t))
            assert all(r.disposition and not r.HasField("rejection") for r in resp.results)
        await PresenceCache(app.redis, 600).apply_flags(users)  # ghost-mode flags
    spreads = {
        "loc:{uid}": _spread(await _count_per_master(redis_cluster, "loc:*", "")),
        "hidden:{uid}": _spread(await _count_per_master(redis_cluster, "hidden:{*", "")),
        "history entries": _spread(await _count_per_master(redis_cluster, "history:*", "XLEN")),
        "presence entries": _spread(await _count_per_master(redis_cluster, "presence:*}", "ZCARD")),
    }
    async with RedisCluster.from_url(redis_cluster.url) as rc:
        await rc.initialize()
        for name, channel in (
            ("loc channel", keys.location_channel),
            ("inbox", keys.inbox_channel),
        ):
            per_node = collections.Counter(_name(rc.get_node_from_key(channel(u))) for u in users)
            spreads[name] = _spread(list(per_node.values()))
    # every master holds history streams and presence shards, evenly
    assert await _count_per_master(redis_cluster, "history:*", "") == [4, 4, 4]
    assert await _count_per_master(redis_cluster, "presence:*}", "") == [16, 16, 16]
    assert all(spread <= MAX_SPREAD for spread in spreads.values()), spreads


# --- failover and resharding (clusters of their own) -------------------------


@pytest.fixture
def own_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[infra.RedisCluster]:
    replicas = getattr(request, "param", 1)
    cluster = infra.RedisCluster(tmp_path / "cluster", masters=3, replicas=replicas)
    try:
        cluster.start(timeout=300)  # generous: the machine may be busy
        yield cluster
    finally:
        cluster.stop()


class Load:
    """Reports every user once per round, each round with a new timestamp;
    remembers the (user, recorded_at_ms) of every call that succeeded."""

    def __init__(self, stub: Any, users: list[str]) -> None:
        self.stub, self.users = stub, users
        self.acked: set[tuple[str, int]] = set()
        self.failed = 0
        self.stop = asyncio.Event()
        self.t0 = now_ms() - 600_000

    async def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                await self.stub.ReportLocations(_reports(self.users, self.t0 + i), timeout=60)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                self.failed += 1
                await asyncio.sleep(0.05)
                continue
            self.acked.update((u, self.t0 + i) for u in self.users)

    async def rounds(self, more: int) -> None:
        """Until `more` further rounds were acknowledged."""
        want = len(self.acked) + more * len(self.users)
        await until(lambda: len(self.acked) >= want, within=120)


async def _history(url: str) -> list[tuple[str, int]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT user_id, (extract(epoch FROM recorded_at) * 1000)::bigint FROM location_history"
        )
        return [(r[0], int(r[1])) for r in await cur.fetchall()]


async def _all_recorded_once(url: str, acked: set[tuple[str, int]]) -> None:
    async def recorded() -> bool:
        return acked <= set(await _history(url))

    await until(recorded, within=120, every=0.5)
    rows = await _history(url)
    assert len(rows) == len(set(rows)), "duplicated history rows"


@pytest.fixture
async def location_on(
    own_cluster: infra.RedisCluster, database_url: str
) -> AsyncIterator[tuple[LocationApp, Any]]:
    s = Settings(
        redis_url=own_cluster.url,
        redis_cluster=True,
        database_url=database_url,
        min_report_interval_s=0.0,
        history_claim_idle_s=1.0,
        redis_retry_s=60.0,
    )
    app = LocationApp(s)
    async with running(app) as addr, grpc.aio.insecure_channel(addr) as ch:
        yield app, location_ingest_service_pb2_grpc.LocationIngestServiceStub(ch)


async def test_acknowledged_history_survives_a_master_failover(
    own_cluster: infra.RedisCluster, location_on: tuple[LocationApp, Any], database_url: str
) -> None:
    app, stub = location_on
    assert app.cache.wait_replicas == 1  # auto: every master has a replica
    load = Load(stub, [f"hiker{i}" for i in range(30)])
    task = asyncio.create_task(load.run())
    try:
        await load.rounds(20)
        victim = own_cluster.master_ports()[0]
        await asyncio.to_thread(own_cluster.fail_master, victim)  # SIGKILL, replica promoted
        await load.rounds(20)  # writes go on at the new master
    finally:
        load.stop.set()
        await task
    await _all_recorded_once(database_url, load.acked)


def _users_in_slot(slot: int, count: int) -> list[str]:
    found: list[str] = []
    i = 0
    while len(found) < count:
        uid = f"mover{i}"
        if keys.slot_of(uid) == slot:
            found.append(uid)
        i += 1
    return found


def _redirects(kind: str) -> float:
    return REGISTRY.get_sample_value("redis_redirects_total", {"kind": kind}) or 0.0


@pytest.mark.parametrize("own_cluster", [0], indirect=True)
async def test_reports_follow_a_slot_migrating_under_a_batch(
    own_cluster: infra.RedisCluster, location_on: tuple[LocationApp, Any], database_url: str
) -> None:
    """Move the slot of history stream 0, with the cache entries of users of
    that slot, while every batch writes to it: ASK (the stream moved first),
    TRYAGAIN (two-key scripts while the slot is split), then MOVED."""
    _, stub = location_on
    stream = keys.history_stream(0)
    slot = keys.slot_of(keys.shard_tag(0, keys.HISTORY_SHARDS))
    in_slot = _users_in_slot(slot, 3)
    on_stream = [
        u for u in (f"walker{i}" for i in range(400)) if keys.history_stream_of(u) == stream
    ]
    others = [f"runner{i}" for i in range(20)]
    load = Load(stub, in_slot + on_stream[:20] + others)
    nodes = {int(n["port"]): n["id"] for n in own_cluster.nodes()}
    source = next(p for p in own_cluster.master_ports() if slot in _slots(own_cluster, nodes[p]))
    target = next(p for p in own_cluster.master_ports() if p != source)
    asks, moves = _redirects("ask"), _redirects("moved")
    task = asyncio.create_task(load.run())
    try:
        await load.rounds(10)
        own_cluster.cli("cluster", "setslot", str(slot), "importing", nodes[source], port=target)
        own_cluster.cli("cluster", "setslot", str(slot), "migrating", nodes[target], port=source)
        moving = [stream, *(keys.location(u) for u in in_slot)]
        own_cluster.cli(
            "migrate", "127.0.0.1", str(target), "", "0", "5000", "KEYS", *moving, port=source
        )
        await until(lambda: _redirects("ask") > asks, within=60)
        for port in (
            target,
            source,
            *(p for p in own_cluster.master_ports() if p not in (source, target)),
        ):
            own_cluster.cli("cluster", "setslot", str(slot), "node", nodes[target], port=port)
        await load.rounds(10)
        assert _redirects("moved") > moves
    finally:
        load.stop.set()
        await task
    assert load.failed == 0
    await _all_recorded_once(database_url, load.acked)


def _slots(cluster: infra.RedisCluster, node_id: str) -> set[int]:
    out: set[int] = set()
    for n in cluster.nodes():
        if n["id"] == node_id:
            for part in n["slots"].split():
                if part.startswith("["):
                    continue
                lo, _, hi = part.partition("-")
                out.update(range(int(lo), int(hi or lo) + 1))
    return out


def test_shards_of_users_are_what_the_contract_says() -> None:
    """crc32 picks the shard; the shard's tag sits in its own share of the slots."""
    for k in range(keys.HISTORY_SHARDS):
        slot = keys.slot_of(keys.shard_tag(k, keys.HISTORY_SHARDS))
        assert (
            k * keys.SLOTS // keys.HISTORY_SHARDS
            <= slot
            < (k + 1) * keys.SLOTS // keys.HISTORY_SHARDS
        )
    assert keys.history_stream_of("ann") == keys.history_stream(zlib.crc32(b"ann") % 12)


# --- start-up checks: one clear line -----------------------------------------


@pytest.mark.parametrize("own_cluster", [0], indirect=True)
async def test_an_unusable_cluster_is_named_in_one_line(
    own_cluster: infra.RedisCluster, redis_server: infra.RedisServer, tmp_path: Path
) -> None:
    closed = f"redis://127.0.0.1:{infra.free_port()}"
    assert "is unreachable" in (redis_checks.cluster_problem(closed) or "")
    assert "standalone Redis" in (redis_checks.cluster_problem(redis_server.url) or "")
    with pytest.raises(OSError, match="set REDIS_CLUSTER=1"):
        await RedisEngine(own_cluster.url).open()  # a cluster node, as if standalone
    assert redis_checks.cluster_problem(own_cluster.url) is None
    await RedisEngine(own_cluster.url, cluster=True).open()

    seed = own_cluster.ports[0]
    own_cluster.cli("cluster", "delslotsrange", "0", "99", port=seed)
    problem = redis_checks.cluster_problem(own_cluster.url) or ""
    assert "uncovered slots: 100 of 16384" in problem
    settings = Settings(redis_url=own_cluster.url, redis_cluster=True)
    with pytest.raises(launcher.StartError, match="uncovered slots"):
        launcher.resolve_redis_cluster(settings, tmp_path, True, 3, launcher.Stack(), print)
    with pytest.raises(OSError, match="uncovered slots"):
        await RedisEngine(own_cluster.url, cluster=True).open()
    own_cluster.cli("cluster", "addslotsrange", "0", "99", port=seed)
    own_cluster.wait_ok()

    own_cluster.kill(own_cluster.master_ports()[-1])  # no replica to take over

    def failed() -> bool:
        return "`fail` state" in (redis_checks.cluster_problem(own_cluster.url) or "")

    await until(failed, within=60)


def test_the_launcher_starts_and_stops_a_private_cluster(tmp_path: Path) -> None:
    said: list[str] = []
    with pytest.raises(launcher.StartError, match="at least 3 masters"):
        launcher.resolve_redis_cluster(
            Settings(), tmp_path, False, 2, launcher.Stack(), said.append
        )
    stack = launcher.Stack()
    try:
        url = launcher.resolve_redis_cluster(Settings(), tmp_path, False, 3, stack, said.append)
        assert stack.redis_cluster is not None
        assert len(stack.redis_cluster.master_ports()) == 3
        assert all(stack.redis_cluster.replicas_of(p) for p in stack.redis_cluster.master_ports())
        assert redis_checks.cluster_problem(url) is None
    finally:
        stack.stop(Settings(), said.append)
    assert "stopping the private Redis Cluster" in said
    assert redis_checks.cluster_problem(url) is not None  # gone

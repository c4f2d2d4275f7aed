"""Support for the Redis Cluster tests of the hub (no tests here): a
listener that records, a publisher that moves users on a clock, and helpers
that read the cluster's slot ownership. Also used by scripts/hub_failover.py."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterable

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from fanout_svc.hub import Hub, loc_channel
from fanout_svc.sharded import ShardedSubscriber
from mesh.internal.v1 import events_pb2
from mesh.sharing import Policy
from stack import infra


class Recorder:
    """A listener that remembers what the hub handed it."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.moved: list[tuple[str, float]] = []
        self.latest: dict[str, float] = {}
        self.resyncs = 0

    def on_moved(self, user_id: str, lat: float, lng: float, t_ms: int, pub_ms: int) -> None:
        self.moved.append((user_id, lat))
        self.latest[user_id] = lat

    def on_gone(self, user_id: str, reason: int) -> None:
        pass

    def on_inbox(self, event: events_pb2.InboxEvent) -> None:
        pass

    def on_sharing(self, user_id: str, policy: Policy) -> None:
        pass

    def on_traced(self, user_id: str, tp: str, pub_ms: int) -> None:
        pass

    def resync(self) -> None:
        self.resyncs += 1


def payload(user: str, lat: float) -> bytes:
    ev = events_pb2.LocationEvent(
        user_id=user, moved=events_pb2.PositionFix(latitude=lat, longitude=1.0)
    )
    return ev.SerializeToString()


async def publish(rc: RedisCluster, users: Iterable[str], lat: float) -> None:
    for u in users:
        await rc.spublish(loc_channel(u), payload(u, lat))


def slot_owners(cluster: infra.RedisCluster) -> list[int | None]:
    """slot -> port of its master, from CLUSTER NODES."""
    owners: list[int | None] = [None] * 16384
    for n in cluster.nodes():
        if n["role"] != "master" or n["failed"] == "yes":
            continue
        for rng in n["slots"].split():
            if rng.startswith("["):  # a slot being migrated or imported
                continue
            a, _, b = rng.partition("-")
            for slot in range(int(a), int(b or a) + 1):
                owners[slot] = int(n["port"])
    return owners


def users_by_master(owners: list[int | None], per_master: int, prefix: str) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {p: [] for p in set(owners) if p is not None}
    for i in itertools.count():
        if all(len(us) >= per_master for us in groups.values()):
            return groups
        u = f"{prefix}{i}"
        port = owners[key_slot(loc_channel(u))]
        assert port is not None
        if len(groups[port]) < per_master:
            groups[port].append(u)
    raise AssertionError("unreachable")


def in_slot(slot: int, prefix: str) -> str:
    return next(
        f"{prefix}{i}" for i in itertools.count() if key_slot(loc_channel(f"{prefix}{i}")) == slot
    )


async def client_list(port: int) -> list[str]:
    async with aioredis.Redis(port=port) as r:
        out: bytes = await r.execute_command("CLIENT LIST TYPE pubsub")  # type: ignore[no-untyped-call]
    return [line for line in out.decode().splitlines() if "name=nearby-fanout-hub" in line]


async def shard_channels(port: int) -> list[bytes]:
    async with aioredis.Redis(port=port) as r:
        return list(await r.execute_command("PUBSUB SHARDCHANNELS"))  # type: ignore[no-untyped-call]


@contextlib.asynccontextmanager
async def sharded_hub(
    url: str, poll_s: float = 2.0
) -> AsyncIterator[tuple[Hub, ShardedSubscriber]]:
    transports: list[ShardedSubscriber] = []

    def factory() -> ShardedSubscriber:
        transports.append(ShardedSubscriber(url, poll_s=poll_s))
        return transports[-1]

    hub = Hub(url, factory)
    await hub.open()
    try:
        yield hub, transports[-1]
    finally:
        await hub.close()


@contextlib.asynccontextmanager
async def publisher(url: str) -> AsyncIterator[RedisCluster]:
    rc = RedisCluster.from_url(url, socket_connect_timeout=0.5, socket_timeout=1.0)
    await rc.initialize()
    try:
        yield rc
    finally:
        await rc.aclose()


class Mover:
    """Publishes a move of every user every ~0.2 s; the latitude is a tick
    number, so a listener's latest latitude tells when it last heard."""

    def __init__(self, rc: RedisCluster, users: list[str]) -> None:
        self.rc, self.users = rc, users
        self.tick = 0
        self.errors = 0
        self._task = asyncio.create_task(self._run())

    async def _one(self, u: str, tick: int) -> None:
        try:
            await self.rc.spublish(loc_channel(u), payload(u, float(tick)))
        except Exception:  # a master is down or moving: the next tick retries
            self.errors += 1

    async def _run(self) -> None:
        while True:
            self.tick += 1
            tick = self.tick
            await asyncio.gather(*(self._one(u, tick) for u in self.users))
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def held_by_owners(sub: ShardedSubscriber, owners: list[int | None], users: list[str]) -> bool:
    return all(
        sub.node_of(loc_channel(u)) == f"127.0.0.1:{owners[key_slot(loc_channel(u))]}"
        for u in users
    )


def heard_since(listeners: Iterable[tuple[Recorder, list[str]]], tick: int) -> bool:
    return all(rec.latest.get(u, -1.0) > tick for rec, users in listeners for u in users)


Cluster = infra.RedisCluster
"""(The tests name it Cluster.)"""

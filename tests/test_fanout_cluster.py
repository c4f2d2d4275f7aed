"""The hub on a real Redis Cluster (3 masters + 3 replicas) with sharded
pub/sub: one connection per master, and no subscription lost when slots
migrate, a SSUBSCRIBE meets MOVED, a master dies or masters are added.

Publishers use SPUBLISH through redis-py's RedisCluster. Tests that kill or
reshard nodes start their own cluster; the others share `redis_cluster`.
Blocking cluster operations (redis-cli) run in a thread so that the hub keeps
running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from nearby.internal.v1 import events_pb2
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from fanout_svc import metrics
from fanout_svc.hub import Hub, loc_channel
from fanout_svc.sharded import ShardedSubscriber
from mesh.settings import Settings
from stack import infra
from tests.support.fanout import until

RECOVERY_S = 30.0
"""Bound on the time from a cluster change (promotion, end of a reshard) until
every listener hears fresh updates again; generous for a loaded 2-core box."""


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

    def resync(self) -> None:
        self.resyncs += 1


def _payload(user: str, lat: float) -> bytes:
    ev = events_pb2.LocationEvent(
        user_id=user, moved=events_pb2.PositionFix(latitude=lat, longitude=1.0)
    )
    return ev.SerializeToString()


async def _publish(rc: RedisCluster, users: Iterable[str], lat: float) -> None:
    for u in users:
        await rc.spublish(loc_channel(u), _payload(u, lat))


def _owners(cluster: infra.RedisCluster) -> list[int | None]:
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


def _users_by_master(
    owners: list[int | None], per_master: int, prefix: str
) -> dict[int, list[str]]:
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


def _in_slot(slot: int, prefix: str) -> str:
    return next(
        f"{prefix}{i}" for i in itertools.count() if key_slot(loc_channel(f"{prefix}{i}")) == slot
    )


async def _client_list(port: int) -> list[str]:
    async with aioredis.Redis(port=port) as r:
        out: bytes = await r.execute_command("CLIENT LIST TYPE pubsub")  # type: ignore[no-untyped-call]
    return [line for line in out.decode().splitlines() if "name=nearby-fanout-hub" in line]


async def _shard_channels(port: int) -> list[bytes]:
    async with aioredis.Redis(port=port) as r:
        return list(await r.execute_command("PUBSUB SHARDCHANNELS"))  # type: ignore[no-untyped-call]


@contextlib.asynccontextmanager
async def _hub(url: str, poll_s: float = 2.0) -> AsyncIterator[tuple[Hub, ShardedSubscriber]]:
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
async def _publisher(url: str) -> AsyncIterator[RedisCluster]:
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
            await self.rc.spublish(loc_channel(u), _payload(u, float(tick)))
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


def _held_by_owners(sub: ShardedSubscriber, owners: list[int | None], users: list[str]) -> bool:
    return all(
        sub.node_of(loc_channel(u)) == f"127.0.0.1:{owners[key_slot(loc_channel(u))]}"
        for u in users
    )


def _heard_since(listeners: Iterable[tuple[Recorder, list[str]]], tick: int) -> bool:
    return all(rec.latest.get(u, -1.0) > tick for rec, users in listeners for u in users)


# --- on the shared cluster --------------------------------------------------
@pytest.fixture
async def cluster_url(redis_cluster: infra.RedisCluster) -> str:
    return redis_cluster.url


async def test_one_connection_per_master_dispatch_resubscribe_and_release(
    redis_cluster: infra.RedisCluster,
) -> None:
    url = redis_cluster.url
    async with _hub(url) as (hub, sub), _publisher(url) as rc:
        users = [f"user-{i}" for i in range(60)]
        one, two = Recorder(), Recorder()
        hub.subscribe([loc_channel(u) for u in users], one)
        hub.subscribe([loc_channel(u) for u in users[:10]], two)
        await hub.barrier()
        masters = redis_cluster.master_ports()
        # one hub connection per master, each channel subscribed once, on its slot's owner
        assert [len(await _client_list(p)) for p in masters] == [1, 1, 1]
        per_node = [await _shard_channels(p) for p in masters]
        assert all(per_node)
        assert sorted(c for cs in per_node for c in cs) == sorted(loc_channel(u) for u in users)
        await _publish(rc, users, 1.0)
        await until(lambda: len(one.moved) == 60 and len(two.moved) == 10)
        assert {u for u, _ in one.moved} == set(users)

        # every node drops the hub's connections: each reconnects and resubscribes,
        # and the listeners of the lost channels resync
        reconnects = metrics.HUB_NODE_RECONNECTS._value.get()
        for p in masters:
            async with aioredis.Redis(port=p) as client:
                await client.client_kill_filter(_type="pubsub")
        await until(lambda: one.resyncs >= 1 and two.resyncs >= 1)
        assert metrics.HUB_NODE_RECONNECTS._value.get() == reconnects + 3
        await until(lambda: len(sub.connections()) == 3)
        await _publish(rc, users[:5], 2.0)
        await until(lambda: sum(1 for _, lat in one.moved if lat == 2.0) == 5)

        hub.unsubscribe([loc_channel(u) for u in users], one)
        hub.unsubscribe([loc_channel(u) for u in users[:10]], two)
        assert hub.channel_count() == 0

        async def released() -> bool:
            return not any([await _shard_channels(p) for p in masters])

        await until(released)


async def test_settings_pick_the_sharded_transport(redis_cluster: infra.RedisCluster) -> None:
    hub = Hub.for_settings(Settings(redis_url=redis_cluster.url, redis_cluster=True))
    await hub.open()
    try:
        rec = Recorder()
        users = [f"pick-{i}" for i in range(20)]
        hub.subscribe([loc_channel(u) for u in users], rec)
        await hub.barrier()
        async with _publisher(redis_cluster.url) as rc:
            await _publish(rc, users, 3.0)
        await until(lambda: len(rec.moved) == 20)
    finally:
        await hub.close()


# --- on clusters of their own (destructive) ------------------------------
class _Cluster(infra.RedisCluster):
    """`nodes()` asks a node of the original cluster: the lowest live port may
    belong to a node `add_master` has just started and not joined yet (whose
    CLUSTER NODES knows only itself, so `add_master` found no master)."""

    def nodes(self, port: int | None = None) -> list[dict[str, str]]:
        if port is None:
            first = getattr(self, "first_ports", [])
            alive = [p for p in first if self.procs[p].poll() is None]
            port = alive[0] if alive else None
        return super().nodes(port)

    def start(self, timeout: float = 60) -> _Cluster:
        super().start(timeout)
        self.first_ports = self.ports
        return self


@pytest.fixture
def own_cluster(tmp_root: Path, request: pytest.FixtureRequest) -> Iterator[infra.RedisCluster]:
    cluster = _Cluster(tmp_root / request.node.name, masters=3, replicas=1).start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_moved_on_subscribe_follows_the_slot(own_cluster: infra.RedisCluster) -> None:
    url = own_cluster.url
    # no periodic map reads: the hub only learns of the move from MOVED
    async with _hub(url, poll_s=3600) as (hub, sub), _publisher(url) as rc:
        before = _owners(own_cluster)
        src, dst = own_cluster.master_ports()[:2]
        slot = before.index(src)  # redis-cli moves a master's lowest slots first
        await asyncio.to_thread(own_cluster.reshard, src, dst, 1)
        assert _owners(own_cluster)[slot] == dst
        user = _in_slot(slot, "moved-")
        moved = metrics.HUB_MOVED._value.get()
        rec = Recorder()
        hub.subscribe([loc_channel(user)], rec)
        await hub.barrier()
        assert metrics.HUB_MOVED._value.get() >= moved + 1
        assert sub.node_of(loc_channel(user)) == f"127.0.0.1:{dst}"
        assert loc_channel(user) in await _shard_channels(dst)
        await _publish(rc, [user], 4.0)
        await until(lambda: rec.moved == [(user, 4.0)])
        assert rec.resyncs == 0  # nothing had been lost: it was never subscribed before

        # a subscribed channel's slot migrates: the node pushes sunsubscribe, and
        # (still without periodic map reads) the hub resubscribes at the new owner
        slot = _owners(own_cluster).index(src)
        other = _in_slot(slot, "pushed-")
        rec2 = Recorder()
        hub.subscribe([loc_channel(other)], rec2)
        await hub.barrier()
        assert sub.node_of(loc_channel(other)) == f"127.0.0.1:{src}"
        pushes = metrics.HUB_SUNSUBSCRIBE_PUSHES._value.get()
        await asyncio.to_thread(own_cluster.reshard, src, dst, 1)
        await until(lambda: rec2.resyncs == 1)
        assert metrics.HUB_SUNSUBSCRIBE_PUSHES._value.get() == pushes + 1
        assert sub.node_of(loc_channel(other)) == f"127.0.0.1:{dst}"
        assert rec.resyncs == 0  # its slot did not move
        await _publish(rc, [other], 5.0)
        await until(lambda: rec2.moved == [(other, 5.0)])


async def test_failover_under_load_resyncs_only_the_dead_masters_listeners(
    own_cluster: infra.RedisCluster,
) -> None:
    url = own_cluster.url
    groups = _users_by_master(_owners(own_cluster), 6, "fo-")
    # three listeners per master, each on the channels of that master's users
    listeners = {
        port: [(Recorder(f"{port}/{i}"), users[i::3] + users[:1]) for i in range(3)]
        for port, users in groups.items()
    }
    all_users = [u for us in groups.values() for u in us]
    everyone = [pair for pairs in listeners.values() for pair in pairs]
    async with _hub(url) as (hub, sub), _publisher(url) as rc:
        for rec, users in everyone:
            hub.subscribe([loc_channel(u) for u in users], rec)
        await hub.barrier()
        mover = Mover(rc, all_users)
        try:
            start = mover.tick
            await until(lambda: _heard_since(everyone, start), within=RECOVERY_S)
            victim = sorted(groups)[0]
            reconnects = metrics.HUB_NODE_RECONNECTS._value.get()
            new_master = await asyncio.to_thread(own_cluster.fail_master, victim)
            promoted = mover.tick
            await until(lambda: _heard_since(everyone, promoted), within=RECOVERY_S)
        finally:
            await mover.stop()
        assert metrics.HUB_NODE_RECONNECTS._value.get() >= reconnects + 1
        for port, pairs in listeners.items():
            for rec, _ in pairs:
                if port == victim:
                    assert rec.resyncs >= 1, rec.name
                else:
                    assert rec.resyncs == 0, rec.name
        # the dead master's channels now live on the promoted replica, one connection each
        assert {sub.node_of(loc_channel(u)) for u in groups[victim]} == {f"127.0.0.1:{new_master}"}
        assert f"127.0.0.1:{victim}" not in sub.connections()
        assert len(await _client_list(new_master)) == 1


class _Resharded:
    """Per-user listeners on a cluster whose slots move under them."""

    def __init__(self, cluster: infra.RedisCluster, users: list[str]) -> None:
        self.cluster, self.users = cluster, users
        self.owners = _owners(cluster)
        self.per_user = {u: Recorder(u) for u in users}
        self.resynced = dict.fromkeys(users, 0)

    def slot_owner(self, owners: list[int | None], user: str) -> int | None:
        return owners[key_slot(loc_channel(user))]

    async def after_move(self, sub: ShardedSubscriber) -> set[str]:
        """Users whose slot changed owner; asserts that exactly their listeners
        resynced and that every channel is held by its slot's owner."""
        new = _owners(self.cluster)
        moved = {
            u for u in self.users if self.slot_owner(new, u) != self.slot_owner(self.owners, u)
        }
        for u, rec in self.per_user.items():
            assert (rec.resyncs > self.resynced[u]) == (u in moved), u
            self.resynced[u] = rec.resyncs
        await until(lambda: _held_by_owners(sub, new, self.users))
        self.owners = new
        return moved


async def test_live_resharding_and_a_new_master(own_cluster: infra.RedisCluster) -> None:
    url = own_cluster.url
    groups = _users_by_master(_owners(own_cluster), 12, "rs-")
    all_users = [u for us in groups.values() for u in us]
    # one listener per user (and one on everything), so "who was affected" is exact
    state = _Resharded(own_cluster, all_users)
    watch_all = Recorder("all")
    everyone = [(rec, [u]) for u, rec in state.per_user.items()] + [(watch_all, all_users)]
    src, dst = sorted(groups)[:2]
    async with _hub(url) as (hub, sub), _publisher(url) as rc:
        for u, rec in state.per_user.items():
            hub.subscribe([loc_channel(u)], rec)
        hub.subscribe([loc_channel(u) for u in all_users], watch_all)
        await hub.barrier()
        mover = Mover(rc, all_users)
        try:
            await until(lambda: _heard_since(everyone, 1), within=RECOVERY_S)
            pushes = metrics.HUB_SUNSUBSCRIBE_PUSHES._value.get()
            # half of one master's slots move to another, live
            half = state.owners.count(src) // 2
            await asyncio.to_thread(own_cluster.reshard, src, dst, half)
            done = mover.tick
            await until(lambda: _heard_since(everyone, done), within=RECOVERY_S)
            moved = await state.after_move(sub)
            assert moved and moved < set(groups[src])  # some of src's users, no one else's
            assert metrics.HUB_SUNSUBSCRIBE_PUSHES._value.get() >= pushes + len(moved)

            # a fourth master joins and takes a share of every master's slots
            fourth = await asyncio.to_thread(own_cluster.add_master)
            await asyncio.to_thread(own_cluster.rebalance)
            done = mover.tick
            await until(lambda: _heard_since(everyone, done), within=RECOVERY_S)
            moved = await state.after_move(sub)
            assert any(state.slot_owner(state.owners, u) == fourth for u in moved)
            assert len(await _client_list(fourth)) == 1
        finally:
            await mover.stop()
        assert watch_all.resyncs >= 2

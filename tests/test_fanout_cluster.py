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
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.crc import key_slot

from fanout_svc import metrics
from fanout_svc.app import FanoutApp
from fanout_svc.hub import Hub, loc_channel
from fanout_svc.sharded import ShardedSubscriber
from mesh.settings import Settings
from stack import infra
from tests.support.cluster import (
    Cluster,
    Mover,
    Recorder,
    client_list,
    heard_since,
    held_by_owners,
    in_slot,
    payload,
    publish,
    publisher,
    shard_channels,
    sharded_hub,
    slot_owners,
    users_by_master,
)
from tests.support.fanout import until
from tests.support.services import running

RECOVERY_S = 30.0
"""Bound on the time from a cluster change (promotion, end of a reshard) until
every listener hears fresh updates again; generous for a loaded 2-core box."""


# --- on the shared cluster --------------------------------------------------
async def test_one_connection_per_master_dispatch_resubscribe_and_release(
    redis_cluster: infra.RedisCluster,
) -> None:
    url = redis_cluster.url
    async with sharded_hub(url) as (hub, sub), publisher(url) as rc:
        users = [f"user-{i}" for i in range(60)]
        one, two = Recorder(), Recorder()
        hub.subscribe([loc_channel(u) for u in users], one)
        hub.subscribe([loc_channel(u) for u in users[:10]], two)
        await hub.barrier()
        masters = redis_cluster.master_ports()
        # one hub connection per master, each channel subscribed once, on its slot's owner
        assert [len(await client_list(p)) for p in masters] == [1, 1, 1]
        per_node = [await shard_channels(p) for p in masters]
        assert all(per_node)
        assert sorted(c for cs in per_node for c in cs) == sorted(loc_channel(u) for u in users)
        await publish(rc, users, 1.0)
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
        await publish(rc, users[:5], 2.0)
        await until(lambda: sum(1 for _, lat in one.moved if lat == 2.0) == 5)

        pushes, resyncs = metrics.HUB_SUNSUBSCRIBE_PUSHES._value.get(), one.resyncs
        hub.unsubscribe([loc_channel(u) for u in users], one)
        hub.unsubscribe([loc_channel(u) for u in users[:10]], two)
        assert hub.channel_count() == 0

        async def released() -> bool:
            return not any([await shard_channels(p) for p in masters])

        await until(released)
        # the replies to our own SUNSUBSCRIBE are not taken for server pushes
        await until(sub.quiet)
        assert metrics.HUB_SUNSUBSCRIBE_PUSHES._value.get() == pushes
        assert one.resyncs == resyncs


async def test_fanout_app_on_a_cluster_from_settings(redis_cluster: infra.RedisCluster) -> None:
    """REDIS_CLUSTER=1 with REDIS_URL = a seed node: the app's hub is sharded."""
    settings = Settings(redis_url=redis_cluster.url, redis_cluster=True)
    app = FanoutApp(settings)
    async with running(app):
        rec = Recorder()
        users = [f"pick-{i}" for i in range(20)]
        app.hub.subscribe([loc_channel(u) for u in users], rec)
        await app.hub.barrier()
        assert [len(await client_list(p)) for p in redis_cluster.master_ports()] == [1, 1, 1]
        async with publisher(redis_cluster.url) as rc:
            await publish(rc, users, 3.0)
        await until(lambda: len(rec.moved) == 20)
        app.hub.unsubscribe([loc_channel(u) for u in users], rec)


async def test_cluster_mode_on_a_standalone_redis_says_so(redis_url: str) -> None:
    hub = Hub.for_settings(Settings(redis_url=redis_url, redis_cluster=True))
    with pytest.raises(OSError, match="cluster support disabled"):
        await hub.open()
    await hub.close()


@pytest.mark.parametrize("cluster", [False, True], ids=["standalone", "cluster"])
def test_both_transports_run_on_uvloop(
    cluster: bool, redis_server: infra.RedisServer, redis_cluster: infra.RedisCluster
) -> None:
    """The services run on uvloop, whose transports are not asyncio's classes."""
    url = redis_cluster.url if cluster else redis_server.url

    async def scenario() -> None:
        hub = Hub.for_settings(Settings(redis_url=url, redis_cluster=cluster))
        await hub.open()
        try:
            rec = Recorder()
            users = [f"uv-{i}" for i in range(10)]
            hub.subscribe([loc_channel(u) for u in users], rec)
            await hub.barrier()
            if cluster:
                async with publisher(url) as rc:
                    await publish(rc, users, 6.0)
            else:
                async with aioredis.Redis.from_url(url) as r:
                    for u in users:
                        await r.publish(loc_channel(u), payload(u, 6.0))
            await until(lambda: len(rec.moved) == 10)
        finally:
            await hub.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        runner.run(scenario())


# --- on clusters of their own (destructive) ------------------------------
@pytest.fixture
def own_cluster(tmp_root: Path, request: pytest.FixtureRequest) -> Iterator[infra.RedisCluster]:
    cluster = Cluster(tmp_root / request.node.name, masters=3, replicas=1).start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_moved_on_subscribe_follows_the_slot(own_cluster: infra.RedisCluster) -> None:
    url = own_cluster.url
    # no periodic map reads: the hub only learns of the move from MOVED
    async with sharded_hub(url, poll_s=3600) as (hub, sub), publisher(url) as rc:
        before = slot_owners(own_cluster)
        src, dst = own_cluster.master_ports()[:2]
        slot = before.index(src)  # redis-cli moves a master's lowest slots first
        await asyncio.to_thread(own_cluster.reshard, src, dst, 1)
        assert slot_owners(own_cluster)[slot] == dst
        user = in_slot(slot, "moved-")
        moved = metrics.HUB_MOVED._value.get()
        rec = Recorder()
        hub.subscribe([loc_channel(user)], rec)
        await hub.barrier()
        assert metrics.HUB_MOVED._value.get() >= moved + 1
        assert sub.node_of(loc_channel(user)) == f"127.0.0.1:{dst}"
        assert loc_channel(user) in await shard_channels(dst)
        await publish(rc, [user], 4.0)
        await until(lambda: rec.moved == [(user, 4.0)])
        assert rec.resyncs == 0  # nothing had been lost: it was never subscribed before

        # a subscribed channel's slot migrates: the node pushes sunsubscribe, and
        # (still without periodic map reads) the hub resubscribes at the new owner
        slot = slot_owners(own_cluster).index(src)
        other = in_slot(slot, "pushed-")
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
        await publish(rc, [other], 5.0)
        await until(lambda: rec2.moved == [(other, 5.0)])


async def test_failover_under_load_resyncs_only_the_dead_masters_listeners(
    own_cluster: infra.RedisCluster,
) -> None:
    url = own_cluster.url
    owners = slot_owners(own_cluster)
    groups = users_by_master(owners, 6, "fo-")
    victim = sorted(groups)[0]
    # subscribed while the victim is down: its barrier must wait for the new owner
    late = next(
        u
        for u in (f"late-{i}" for i in itertools.count())
        if owners[key_slot(loc_channel(u))] == victim
    )
    late_rec = Recorder("late")
    # three listeners per master, each on the channels of that master's users
    listeners = {
        port: [(Recorder(f"{port}/{i}"), users[i::3] + users[:1]) for i in range(3)]
        for port, users in groups.items()
    }
    all_users = [u for us in groups.values() for u in us]
    everyone = [pair for pairs in listeners.values() for pair in pairs]
    async with sharded_hub(url) as (hub, sub), publisher(url) as rc:
        for rec, users in everyone:
            hub.subscribe([loc_channel(u) for u in users], rec)
        await hub.barrier()
        mover = Mover(rc, all_users)
        try:
            start = mover.tick
            await until(lambda: heard_since(everyone, start), within=RECOVERY_S)
            reconnects = metrics.HUB_NODE_RECONNECTS._value.get()
            failover = asyncio.ensure_future(asyncio.to_thread(own_cluster.fail_master, victim))
            await until(lambda: f"127.0.0.1:{victim}" not in sub.connections(), within=RECOVERY_S)
            hub.subscribe([loc_channel(late)], late_rec)
            late_barrier = hub.barrier()
            mover.users.append(late)
            new_master = await failover
            promoted = mover.tick
            await asyncio.wait_for(late_barrier, RECOVERY_S)
            assert sub.node_of(loc_channel(late)) == f"127.0.0.1:{new_master}"
            assert loc_channel(late) in await shard_channels(new_master)
            everyone.append((late_rec, [late]))
            await until(lambda: heard_since(everyone, promoted), within=RECOVERY_S)
        finally:
            await mover.stop()
        assert late_rec.resyncs == 0  # a fresh subscription: its barrier covered it
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
        assert len(await client_list(new_master)) == 1


class _Resharded:
    """Per-user listeners on a cluster whose slots move under them."""

    def __init__(self, cluster: infra.RedisCluster, users: list[str]) -> None:
        self.cluster, self.users = cluster, users
        self.owners = slot_owners(cluster)
        self.per_user = {u: Recorder(u) for u in users}
        self.resynced = dict.fromkeys(users, 0)

    def slot_owner(self, owners: list[int | None], user: str) -> int | None:
        return owners[key_slot(loc_channel(user))]

    async def after_move(self, sub: ShardedSubscriber) -> set[str]:
        """Users whose slot changed owner; asserts that exactly their listeners
        resynced and that every channel is held by its slot's owner."""
        new = slot_owners(self.cluster)
        moved = {
            u for u in self.users if self.slot_owner(new, u) != self.slot_owner(self.owners, u)
        }
        for u, rec in self.per_user.items():
            assert (rec.resyncs > self.resynced[u]) == (u in moved), u
            self.resynced[u] = rec.resyncs
        await until(lambda: held_by_owners(sub, new, self.users))
        self.owners = new
        return moved


async def _subscribed_in_redis(cluster: infra.RedisCluster) -> list[bytes]:
    """Every shard channel some master holds a subscription of (with repeats)."""
    held: list[bytes] = []
    for port in cluster.master_ports():
        held.extend(await shard_channels(port))
    return sorted(held)


async def test_live_resharding_and_a_new_master(own_cluster: infra.RedisCluster) -> None:
    url = own_cluster.url
    groups = users_by_master(slot_owners(own_cluster), 12, "rs-")
    all_users = [u for us in groups.values() for u in us]
    # one listener per user (and one on everything), so "who was affected" is exact
    state = _Resharded(own_cluster, all_users)
    watch_all = Recorder("all")
    everyone = [(rec, [u]) for u, rec in state.per_user.items()] + [(watch_all, all_users)]
    src, dst = sorted(groups)[:2]
    # and many channels over many slots, to check Redis's side of every move
    bulk = [loc_channel(f"bulk-{i}") for i in range(1500)]
    wanted = sorted([*bulk, *(loc_channel(u) for u in all_users)])

    async def all_subscribed_once() -> bool:
        return await _subscribed_in_redis(own_cluster) == wanted

    async with sharded_hub(url) as (hub, sub), publisher(url) as rc:
        for u, rec in state.per_user.items():
            hub.subscribe([loc_channel(u)], rec)
        hub.subscribe([loc_channel(u) for u in all_users], watch_all)
        hub.subscribe(bulk, Recorder("bulk"))
        await hub.barrier()
        assert await all_subscribed_once()
        mover = Mover(rc, all_users)
        try:
            await until(lambda: heard_since(everyone, 1), within=RECOVERY_S)
            pushes = metrics.HUB_SUNSUBSCRIBE_PUSHES._value.get()
            # half of one master's slots move to another, live
            half = state.owners.count(src) // 2
            await asyncio.to_thread(own_cluster.reshard, src, dst, half)
            done = mover.tick
            await until(lambda: heard_since(everyone, done), within=RECOVERY_S)
            moved = await state.after_move(sub)
            assert moved and moved < set(groups[src])  # some of src's users, no one else's
            assert metrics.HUB_SUNSUBSCRIBE_PUSHES._value.get() >= pushes + len(moved)
            await until(all_subscribed_once)

            # a fourth master joins and takes a share of every master's slots
            fourth = await asyncio.to_thread(own_cluster.add_master)
            await asyncio.to_thread(own_cluster.rebalance)
            done = mover.tick
            await until(lambda: heard_since(everyone, done), within=RECOVERY_S)
            moved = await state.after_move(sub)
            assert any(state.slot_owner(state.owners, u) == fourth for u in moved)
            assert len(await client_list(fourth)) == 1
            await until(all_subscribed_once)
        finally:
            await mover.stop()
        assert watch_all.resyncs >= 2


async def test_whole_cluster_restart(own_cluster: infra.RedisCluster) -> None:
    """Every node dies and comes back (AOF on): the hub waits it out and resubscribes."""
    url = own_cluster.url
    users = [f"ar-{i}" for i in range(30)]
    rec = Recorder()
    async with sharded_hub(url) as (hub, sub), publisher(url) as rc:
        hub.subscribe([loc_channel(u) for u in users], rec)
        await hub.barrier()
        mover = Mover(rc, users)
        try:
            await until(lambda: heard_since([(rec, users)], 1), within=RECOVERY_S)
            ports = own_cluster.ports
            for port in ports:
                own_cluster.kill(port)
            await until(lambda: not sub.connections())

            def restart_all() -> None:
                for port in ports:
                    own_cluster.restart(port)
                own_cluster.wait_ok()

            await asyncio.to_thread(restart_all)
            back = mover.tick
            await until(lambda: heard_since([(rec, users)], back), within=RECOVERY_S)
        finally:
            await mover.stop()
        assert rec.resyncs >= 1
        assert len(sub.connections()) == 3

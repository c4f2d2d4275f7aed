"""The whole mesh on a real Redis Cluster (3 masters + 3 replicas, its own):
live streams keep receiving their friends' moves through a master's failover
and through live resharding, including a fourth master joining.

Each viewer has one friend who moves every MOVE_EVERY_S. After each fault,
every viewer must receive a move of its friend that was reported after the
fault, within RECOVERY_S, and no stream may end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from mesh import keys
from mesh.settings import Settings
from stack import infra
from tests.support.fanout import ORIGIN, Mesh, Stream, fast_settings, mesh, offset, until

PAIRS = 40
MOVE_EVERY_S = 0.3
#: from the fault (kill / reshard command returned) to every viewer having a
#: fresh move: failure detection (cluster-node-timeout 1 s), promotion, the
#: hub's reconnect and resubscribe, and the resync snapshot
RECOVERY_S = 20.0


@pytest.fixture(scope="module")
def cluster(tmp_root: Path) -> Iterator[infra.RedisCluster]:
    c = infra.RedisCluster(tmp_root / "cluster-mesh", masters=3, replicas=1).start()
    yield c
    c.stop()


@pytest.fixture
def cluster_settings(cluster: infra.RedisCluster, database_url: str) -> Settings:
    cluster.flush()
    return fast_settings(
        Settings(redis_url=cluster.url, redis_cluster=True, database_url=database_url)
    )


class Movers:
    """Every friend reports a new position every MOVE_EVERY_S, until stopped."""

    def __init__(self, m: Mesh, friends: list[str]) -> None:
        self.m, self.friends = m, friends
        self.step = 0
        self.errors = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.step += 1
            north = 10.0 + (self.step % 50)
            try:
                await self.m.report({f: offset(*ORIGIN, north) for f in self.friends})
            except Exception:  # the master of some friends is failing over
                self.errors += 1
            await asyncio.sleep(MOVE_EVERY_S)

    def __enter__(self) -> Movers:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


@contextlib.asynccontextmanager
async def pairs(settings: Settings) -> AsyncIterator[tuple[Mesh, list[Stream], list[str]]]:
    async with mesh(settings) as m:
        viewers = await m.users(*(f"viewer{i}" for i in range(PAIRS)))
        friends = await m.users(*(f"friend{i}" for i in range(PAIRS)))
        for v, f in zip(viewers, friends, strict=True):
            await m.befriend(v, f)
        await m.report({f: offset(*ORIGIN, 10.0) for f in friends})
        streams = [await m.connect(v, *ORIGIN) for v in viewers]
        try:
            for s in streams:
                await s.wait_for(lambda s: s.snapshots())
            yield m, streams, friends
        finally:
            for s in streams:
                await s.close()


async def every_viewer_hears_a_fresh_move(
    streams: list[Stream], friends: list[str], since_ms: int
) -> float:
    """Seconds until each stream got a move of its friend recorded after since_ms."""
    started = time.monotonic()

    def fresh(s: Stream, f: str) -> bool:
        return any(u.update_time.ToMilliseconds() > since_ms for u in s.updates(of=f)) or any(
            fr.user_id == f and fr.update_time.ToMilliseconds() > since_ms
            for snap in s.snapshots()
            for fr in snap.friends
        )

    await until(
        lambda: all(fresh(s, f) for s, f in zip(streams, friends, strict=True)),
        within=RECOVERY_S,
        every=0.1,
    )
    for s in streams:
        assert not s.done.is_set(), f"the stream of {s.user} ended: {s.error!r}"
    return time.monotonic() - started


def masters_of(cluster: infra.RedisCluster, friends: list[str]) -> dict[int, list[str]]:
    """Master port -> the friends whose channel lives there."""
    owner: dict[int, int] = {}
    for node in cluster.nodes():
        if node["role"] != "master" or node["failed"] == "yes":
            continue
        for part in node["slots"].split():
            if part.startswith("["):
                continue
            lo, _, hi = part.partition("-")
            for slot in range(int(lo), int(hi or lo) + 1):
                owner[slot] = int(node["port"])
    out: dict[int, list[str]] = {}
    for f in friends:
        out.setdefault(owner[key_slot(keys.location_channel(f).encode())], []).append(f)
    return out


async def test_streams_survive_a_master_failover(
    cluster: infra.RedisCluster, cluster_settings: Settings
) -> None:
    async with pairs(cluster_settings) as (m, streams, friends):
        by_master = masters_of(cluster, friends)
        assert len(by_master) == 3, "the friends' channels should span every master"
        with Movers(m, friends):
            await every_viewer_hears_a_fresh_move(streams, friends, int(time.time() * 1000))
            victim = max(by_master, key=lambda p: len(by_master[p]))
            killed_ms = int(time.time() * 1000)
            await asyncio.to_thread(cluster.fail_master, victim)
            took = await every_viewer_hears_a_fresh_move(streams, friends, killed_ms)
        print(f"failover: every stream fresh {took:.1f} s after the promotion")
        await asyncio.to_thread(cluster.restart, victim)  # rejoins as a replica
        await asyncio.to_thread(cluster.wait_ok)


async def test_streams_follow_live_resharding_and_a_new_master(
    cluster: infra.RedisCluster, cluster_settings: Settings
) -> None:
    async with pairs(cluster_settings) as (m, streams, friends):
        with Movers(m, friends):
            await every_viewer_hears_a_fresh_move(streams, friends, int(time.time() * 1000))
            a, b = cluster.master_ports()[:2]
            mark = int(time.time() * 1000)
            await asyncio.to_thread(cluster.reshard, a, b, 16384 // 6)  # half of a's third
            await every_viewer_hears_a_fresh_move(streams, friends, mark)
            mark = int(time.time() * 1000)
            await asyncio.to_thread(cluster.add_master)
            await asyncio.to_thread(cluster.rebalance)
            assert len(cluster.master_ports()) == 4
            assert len(masters_of(cluster, friends)) == 4, "no channel moved to the new master"
            await every_viewer_hears_a_fresh_move(streams, friends, mark)

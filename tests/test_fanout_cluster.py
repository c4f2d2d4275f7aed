"""The hub on a real 3-master Redis Cluster with sharded pub/sub (SSUBSCRIBE /
SPUBLISH): the same hub, only the Subscriber differs."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from nearby.internal.v1 import events_pb2
from redis.asyncio.cluster import RedisCluster

from fanout_svc.hub import Hub, loc_channel
from fanout_svc.subscriber import ShardedSubscriber
from stack import infra
from tests.support.fanout import until


def _cluster_ports(n: int) -> list[int]:
    """Free ports whose cluster bus port (+10000) is valid and free too."""
    ports: list[int] = []
    while len(ports) < n:
        p = infra.free_port()
        if p + 10000 < 65536 and not infra.port_open("127.0.0.1", p + 10000) and p not in ports:
            ports.append(p)
    return ports


@pytest.fixture(scope="module")
def cluster_url(tmp_root: Path) -> Iterator[str]:
    server = infra.find_binary("redis-server")
    cli = infra.find_binary("redis-cli")
    ports = _cluster_ports(3)
    procs = []
    for port in ports:
        d = tmp_root / f"cluster-{port}"
        d.mkdir()
        procs.append(
            subprocess.Popen(
                [
                    server,
                    *("--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                    *("--appendonly", "no", "--cluster-enabled", "yes"),
                    *("--cluster-config-file", str(d / "nodes.conf"), "--dir", str(d)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        for port in ports:
            infra.wait_port("127.0.0.1", port, 10)
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for _ in range(100):
            out = subprocess.run(
                [cli, "-p", str(ports[0]), "cluster", "info"], capture_output=True, text=True
            ).stdout
            if "cluster_state:ok" in out:
                break
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{ports[0]}"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


class Recorder:
    """A listener that remembers what the hub handed it."""

    def __init__(self) -> None:
        self.moved: list[tuple[str, float]] = []
        self.resyncs = 0

    def on_moved(self, user_id: str, lat: float, lng: float, t_ms: int, pub_ms: int) -> None:
        self.moved.append((user_id, lat))

    def on_gone(self, user_id: str, reason: int) -> None:
        pass

    def on_inbox(self, event: events_pb2.InboxEvent) -> None:
        pass

    def resync(self) -> None:
        self.resyncs += 1


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[RedisCluster]:
    rc = RedisCluster.from_url(cluster_url)
    await rc.initialize()
    yield rc
    await rc.aclose()


async def _publish(rc: RedisCluster, users: list[str], lat: float) -> None:
    for u in users:
        ev = events_pb2.LocationEvent(
            user_id=u, moved=events_pb2.PositionFix(latitude=lat, longitude=1.0)
        )
        await rc.spublish(loc_channel(u), ev.SerializeToString())


async def _shard_channels(host: str, port: int | str) -> list[bytes]:
    async with aioredis.Redis(host=host, port=int(port)) as client:
        return list(await client.execute_command("PUBSUB SHARDCHANNELS"))  # type: ignore[no-untyped-call]


async def test_sharded_hub_dispatches_resubscribes_and_releases(
    cluster_url: str, cluster: RedisCluster
) -> None:
    hub = Hub(cluster_url, subscriber_factory=lambda: ShardedSubscriber(cluster_url))
    await hub.open()
    try:
        users = [f"user-{i}" for i in range(60)]
        one, two = Recorder(), Recorder()
        hub.subscribe([loc_channel(u) for u in users], one)
        hub.subscribe([loc_channel(u) for u in users[:10]], two)
        await hub.barrier()
        # the channels are spread over the three masters, one subscription each
        per_node = [await _shard_channels(n.host, n.port) for n in cluster.get_primaries()]
        assert len(per_node) == 3 and all(per_node)
        assert sorted(c for cs in per_node for c in cs) == sorted(loc_channel(u) for u in users)
        await _publish(cluster, users, 1.0)
        await until(lambda: len(one.moved) == 60 and len(two.moved) == 10)
        assert {u for u, _ in one.moved} == set(users)

        # every node drops the hub's connections: it reconnects, resubscribes, resyncs
        for node in cluster.get_primaries():
            async with aioredis.Redis(host=node.host, port=int(node.port)) as client:
                await client.client_kill_filter(_type="pubsub")
        await until(lambda: one.resyncs == 1 and two.resyncs == 1)
        await _publish(cluster, users[:5], 2.0)
        await until(lambda: sum(1 for _, lat in one.moved if lat == 2.0) == 5)

        hub.unsubscribe([loc_channel(u) for u in users], one)
        hub.unsubscribe([loc_channel(u) for u in users[:10]], two)
        assert hub.channel_count() == 0

        async def released() -> bool:
            nodes = cluster.get_primaries()
            return not any([await _shard_channels(n.host, n.port) for n in nodes])

        await until(released)
    finally:
        await hub.close()

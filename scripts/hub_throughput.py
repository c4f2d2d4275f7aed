"""Messages per CPU-second through the fan-out hub, on standalone Redis and
on a Redis Cluster, with the hub's own transports and with redis-py's
asyncio cluster pub/sub for comparison.

    .venv/bin/python scripts/hub_throughput.py [--messages 200000] [--channels 1000]

A private Redis (and a private 3-master cluster) are started; a publisher
subprocess sends `--messages` LocationEvents spread over `--channels`
channels, pipelined; this process runs the hub (or redis-py's ClusterPubSub)
with one listener per channel that only counts, and reports messages per
CPU-second of this process, from the first message to the last.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redis.asyncio.cluster import RedisCluster

from fanout_svc.hub import Hub, loc_channel
from fanout_svc.sharded import ShardedSubscriber
from mesh.internal.v1 import events_pb2
from mesh.sharing import Policy
from stack import infra

PUBLISHER = r"""
import socket, sys, hiredis
from redis.crc import key_slot
from mesh.resp import command
from fanout_svc.slotmap import parse_cluster_slots

ports, verb, n, channels = sys.argv[1].split(","), sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
payload = bytes.fromhex(sys.argv[5])
names = [f"loc:{{u{i}}}".encode() for i in range(channels)]
socks = {p: socket.create_connection(("127.0.0.1", int(p))) for p in ports}
owner = {}
if verb == b"SPUBLISH":
    s = socks[ports[0]]; r = hiredis.Reader()
    s.sendall(command(b"CLUSTER", b"SLOTS"))
    reply = False
    while reply is False:
        r.feed(s.recv(1 << 20)); reply = r.gets()
    slots = parse_cluster_slots(reply, "127.0.0.1")
    for ch in names:
        owner[ch] = slots.owners[key_slot(ch)].rpartition(":")[2]
else:
    owner = {ch: ports[0] for ch in names}
readers = {p: hiredis.Reader() for p in ports}
sent = 0
while sent < n:
    batch = {p: [] for p in ports}
    for i in range(sent, min(n, sent + 2000)):
        ch = names[i % channels]
        batch[owner[ch]].append(command(verb, ch, payload))
    sent += 2000
    for p, cmds in batch.items():
        if cmds:
            socks[p].sendall(b"".join(cmds))
    for p, cmds in batch.items():
        got = 0
        while got < len(cmds):
            readers[p].feed(socks[p].recv(1 << 20))
            while readers[p].gets() is not False:
                got += 1
"""


class Counter:
    def __init__(self, want: int) -> None:
        self.n = 0
        self.want = want
        self.first_cpu = 0.0
        self.done = asyncio.Event()

    def on_moved(self, user_id: str, lat: float, lng: float, t_ms: int, pub_ms: int) -> None:
        if not self.n:
            self.first_cpu = time.process_time()
        self.n += 1
        if self.n == self.want:
            self.done.set()

    def on_gone(self, user_id: str, reason: int) -> None: ...
    def on_inbox(self, event: events_pb2.InboxEvent) -> None: ...
    def on_sharing(self, user_id: str, policy: Policy) -> None: ...
    def on_traced(self, user_id: str, tp: str, pub_ms: int) -> None: ...
    def resync(self) -> None: ...


def _payload() -> bytes:
    ev = events_pb2.LocationEvent(
        user_id="u1",
        published_at_ms=1_700_000_000_000,
        moved=events_pb2.PositionFix(latitude=52.52, longitude=13.405, recorded_at_ms=1),
    )
    return ev.SerializeToString()


def _publish(ports: list[int], verb: str, messages: int, channels: int) -> subprocess.Popen[bytes]:
    args = [",".join(map(str, ports)), verb, str(messages), str(channels), _payload().hex()]
    return subprocess.Popen([sys.executable, "-c", PUBLISHER, *args])


async def _until(counter: Counter) -> float:
    await counter.done.wait()
    return time.process_time() - counter.first_cpu


async def through_hub(
    url: str, ports: list[int], cluster: bool, messages: int, channels: int
) -> float:
    hub = Hub(url, (lambda: ShardedSubscriber(url)) if cluster else None)
    await hub.open()
    counter = Counter(messages)
    # every listener is the same counter: the dispatch cost is per listener call
    for i in range(channels):
        hub.subscribe([loc_channel(f"u{i}")], counter)
    await hub.barrier()
    pub = _publish(ports, "SPUBLISH" if cluster else "PUBLISH", messages, channels)
    cpu = await _until(counter)
    pub.wait()
    await hub.close()
    return messages / cpu


async def through_redis_py(url: str, ports: list[int], messages: int, channels: int) -> float:
    """redis-py's own asyncio cluster pub/sub: ssubscribe + get_sharded_message."""
    rc = RedisCluster.from_url(url)
    await rc.initialize()
    ps = rc.pubsub()
    for i in range(channels):
        await ps.ssubscribe(loc_channel(f"u{i}"))
    while await ps.get_sharded_message(timeout=0.05) is not None:
        pass  # the subscribe confirmations
    counter = Counter(messages)
    pub = _publish(ports, "SPUBLISH", messages, channels)
    while counter.n < messages:
        msg = await ps.get_sharded_message(ignore_subscribe_messages=True, timeout=0.01)
        if msg is None or msg["type"] != "smessage":
            continue
        ev = events_pb2.LocationEvent.FromString(msg["data"])
        m = ev.moved
        counter.on_moved(ev.user_id, m.latitude, m.longitude, m.recorded_at_ms, 0)
    cpu = time.process_time() - counter.first_cpu
    pub.wait()
    await ps.aclose()
    await rc.aclose()
    return messages / cpu


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--channels", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=("standalone", "cluster", "redis-py"), action="append")
    args = ap.parse_args()
    only = set(args.only or ("standalone", "cluster", "redis-py"))
    with tempfile.TemporaryDirectory(prefix="hub-bench-") as tmp:
        server = infra.RedisServer(Path(tmp) / "redis").start()
        cluster = None
        try:
            results: dict[str, list[float]] = {}
            if "standalone" in only:
                results["hub, standalone"] = [
                    await through_hub(
                        server.url, [server.port], False, args.messages, args.channels
                    )
                    for _ in range(args.runs)
                ]
            if only & {"cluster", "redis-py"}:
                cluster = infra.RedisCluster(Path(tmp) / "cluster", masters=3, replicas=0).start()
                ports = cluster.master_ports()
                if "cluster" in only:
                    results["hub, cluster (3 masters)"] = [
                        await through_hub(cluster.url, ports, True, args.messages, args.channels)
                        for _ in range(args.runs)
                    ]
                if "redis-py" in only:
                    results["redis-py ClusterPubSub (3 masters)"] = [
                        await through_redis_py(cluster.url, ports, args.messages, args.channels)
                        for _ in range(args.runs)
                    ]
            for name, runs in results.items():
                figures = ", ".join(f"{r:,.0f}" for r in sorted(runs))
                print(f"{name:38} messages per CPU-second: best {max(runs):,.0f} ({figures})")
        finally:
            server.stop()
            if cluster is not None:
                cluster.stop()


if __name__ == "__main__":
    asyncio.run(main())

"""How long the fan-out hub's listeners stay without updates when a Redis
Cluster master dies (the failover scenario of tests/test_fanout_cluster.py,
with its times printed).

    .venv/bin/python -m scripts.hub_failover [--runs 3]   (from the repository root)

Each run starts a private cluster of 3 masters + 3 replicas, subscribes
three listeners per master to the channels of six users of that master,
publishes a move of every user every 0.2 s with SPUBLISH, SIGKILLs one
master and reports: the time until a replica took over (as the cluster
reports it), the time from then until every listener heard an update
published after the promotion, and which listeners resynced.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fanout_svc.hub import loc_channel
from tests.support.cluster import (
    Cluster,
    Mover,
    Recorder,
    heard_since,
    publisher,
    sharded_hub,
    slot_owners,
    users_by_master,
)
from tests.support.fanout import until


async def _wait(predicate: Callable[[], bool], within: float = 60.0) -> float:
    """Seconds until predicate() holds (polled every 10 ms)."""
    start = time.monotonic()
    await until(predicate, within=within, every=0.01)
    return time.monotonic() - start


async def one_run(data_dir: Path) -> str:
    cluster = Cluster(data_dir, masters=3, replicas=1).start()
    try:
        groups = users_by_master(slot_owners(cluster), 6, "fo-")
        victim = sorted(groups)[0]
        listeners = [
            (port, Recorder(f"{port}/{i}"), users[i::3] + users[:1])
            for port, users in groups.items()
            for i in range(3)
        ]
        everyone = [(rec, users) for _, rec, users in listeners]
        async with sharded_hub(cluster.url) as (hub, _), publisher(cluster.url) as rc:
            for _, rec, users in listeners:
                hub.subscribe([loc_channel(u) for u in users], rec)
            await hub.barrier()
            mover = Mover(rc, [u for us in groups.values() for u in us])
            try:
                await asyncio.sleep(0.3)
                tick = mover.tick
                await _wait(lambda: heard_since(everyone, tick))
                killed = time.monotonic()
                await asyncio.to_thread(cluster.fail_master, victim)
                promoted, tick = time.monotonic(), mover.tick
                fresh = await _wait(lambda: heard_since(everyone, tick))
            finally:
                await mover.stop()
        resynced = sorted({port for port, rec, _ in listeners if rec.resyncs})
        return (
            f"SIGKILL -> promoted {promoted - killed:.2f} s; promoted -> every listener "
            f"fresh {fresh:.2f} s; masters whose listeners resynced: "
            f"{'only the dead one' if resynced == [victim] else resynced}; "
            f"publishes refused during the failover: {mover.errors}"
        )
    finally:
        cluster.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hub-failover-") as tmp:
        for i in range(args.runs):
            print(await one_run(Path(tmp) / str(i)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())

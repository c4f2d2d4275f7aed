"""What `WAIT 1` costs the history path: the round trip of a batch of XADDs
(grouped per node, as location_svc sends them) with and without one WAIT per
node, on a private 3-master + 3-replica Redis Cluster.

    .venv/bin/python scripts/wait_cost.py

Prints the median round trip per batch size (the best of two interleaved
runs of 150 round trips each); figures in docs/location.md came from it.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from mesh import keys, resp
from mesh.redis import RedisEngine
from stack import infra


async def _median_ms(engine: RedisEngine, commands: list[tuple[str, bytes]], wait: bool) -> float:
    times = []
    for _ in range(150):
        start = time.perf_counter()
        if wait:
            _, unconfirmed = await engine.execute_durable(commands, 1, 100)
            assert unconfirmed == 0
        else:
            await engine.execute(commands, partial=True)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def measure(url: str) -> None:
    engine = RedisEngine(url, cluster=True)
    await engine.open()
    row = b"x" * 40  # about the size of a binary COPY history row
    try:
        for batch in (1, 100, 1000):
            streams = [keys.history_stream(k % keys.HISTORY_SHARDS) for k in range(batch)]
            commands = [(s, resp.command(b"XADD", s, b"*", keys.HISTORY_ROW, row)) for s in streams]
            plain = min([await _median_ms(engine, commands, False) for _ in range(2)])
            waited = min([await _median_ms(engine, commands, True) for _ in range(2)])
            print(
                f"{batch:5d} entries per batch: {plain:.3f} ms without WAIT, "
                f"{waited:.3f} ms with WAIT 1 (+{waited - plain:.3f} ms)"
            )
    finally:
        await engine.aclose()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="nearby-wait-") as tmp:
        cluster = infra.RedisCluster(Path(tmp), masters=3, replicas=1).start()
        try:
            asyncio.run(measure(cluster.url))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()

"""The Redis engine on both engines: replies in order across nodes, a
connection Redis closed is retried once on a fresh one, scripts are loaded
where missing, transactions stay on their slot."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import hiredis
from prometheus_client import REGISTRY

from mesh import keys, resp
from mesh.redis import RedisEngine
from stack import infra
from tests.support.redis import RedisTarget


def _retries(reason: str) -> float:
    return REGISTRY.get_sample_value("redis_retries_total", {"reason": reason}) or 0.0


async def test_replies_come_back_in_command_order(engine: RedisEngine) -> None:
    users = [f"u{i}" for i in range(300)]  # their keys span every master
    sets = [(keys.hidden(u), resp.command(b"SET", keys.hidden(u), u)) for u in users]
    assert await engine.execute(sets) == [b"OK"] * len(users)
    gets = [(keys.hidden(u), resp.command(b"GET", keys.hidden(u))) for u in users]
    assert await engine.execute(gets) == [u.encode() for u in users]
    wrong = await engine.execute(
        [(keys.hidden("u1"), resp.command(b"HGET", keys.hidden("u1"), b"f"))]
    )
    assert isinstance(wrong[0], hiredis.ReplyError)  # a refused command stays in place


async def test_a_connection_redis_closed_is_retried_once(
    redis_target: RedisTarget, engine: RedisEngine
) -> None:
    cmds = [
        (keys.hidden(f"k{i}"), resp.command(b"SET", keys.hidden(f"k{i}"), b"1")) for i in range(50)
    ]
    await engine.execute(cmds)
    before = _retries("closed")
    ports = [int(redis_target.url.rsplit(":", 1)[1].split("/")[0])]
    if redis_target.cluster:
        ports = await _master_ports(engine)
    for port in ports:  # Redis drops every client connection (as on a restart)
        infra_cli = RedisEngine(f"redis://127.0.0.1:{port}")
        await infra_cli.client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await infra_cli.aclose()
    assert await engine.execute(cmds) == [b"OK"] * 50
    assert _retries("closed") > before


async def _master_ports(engine: RedisEngine) -> list[int]:
    nodes: dict[str, Any] = await engine.client.cluster_nodes()  # type: ignore[union-attr]
    return [int(addr.rsplit(":", 1)[1]) for addr, n in nodes.items() if "master" in n["flags"]]


async def test_scripts_are_loaded_where_missing_and_transactions_run(
    redis_target: RedisTarget, engine: RedisEngine
) -> None:
    script = engine.script("return redis.call('INCR', KEYS[1])")
    users = [f"s{i}" for i in range(30)]
    calls = [script.call([keys.hidden(u)]) for u in users]
    assert await engine.execute(calls) == [1] * 30  # NOSCRIPT everywhere first
    assert _retries("noscript") > 0
    flag, channel = keys.hidden("tx"), keys.location_channel("tx")
    (replies,) = await engine.transactions(
        [
            (
                flag,
                [resp.command(b"SET", flag, b"1"), resp.command(engine.publish, channel, b"x")],
            )
        ]
    )
    assert replies == [b"OK", 0]


def _redis_server(data: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            infra.find_binary("redis-server"),
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)),
            *("--save", "", "--appendonly", "no", "--logfile", str(data / "redis.log")),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    infra.wait_port("127.0.0.1", port, 10, proc, "redis-server")
    return proc


async def test_loading_is_waited_out(tmp_path: Path) -> None:
    """A Redis restarted on a dump answers LOADING while it reads it: the
    call waits (with backoff, up to retry_s) and then succeeds."""
    port = infra.free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = _redis_server(tmp_path, port)
    try:
        seed = RedisEngine(url)
        script = "for i = 1, 20000 do redis.call('SET', 'k' .. i, 'v') end return 1"
        assert await seed.execute([(b"k", resp.command(b"EVAL", script, 0))]) == [1]
        assert await seed.execute([(b"k", resp.command(b"SAVE"))]) == [b"OK"]
        await seed.aclose()
    finally:
        infra.stop_process(proc)
    before = _retries("loading")
    # about 2 s of loading (a debug delay per key), answering while it loads
    proc = _redis_server(
        tmp_path,
        port,
        *("--key-load-delay", "100", "--loading-process-events-interval-bytes", "1024"),
    )
    engine = RedisEngine(url, retry_s=120)
    try:
        got = await engine.execute([(b"k1", resp.command(b"GET", b"k1"))])
        assert got == [b"v"]
        assert _retries("loading") > before
    finally:
        await engine.aclose()
        infra.stop_process(proc)

"""The per-user stream cap's Redis part, on one Redis and on a Cluster: the
cap over replicas, renewal, freeing, and the slots of a replica that died."""

from __future__ import annotations

import uuid

import pytest

from fanout_svc.admission import StreamSlots
from mesh import keys
from mesh.errors import ResourceExhausted
from mesh.redis import RedisEngine
from tests.support.fanout import until


async def test_cap_over_replicas_renewal_release_and_a_dead_replicas_slot(
    engine: RedisEngine,
) -> None:
    user = f"cap-{uuid.uuid4().hex[:8]}"
    live = StreamSlots(engine, cap=2, lease_s=1.0)  # renews its leases
    dead = StreamSlots(engine, cap=2, lease_s=1.0)  # never renews: a replica that died
    other = StreamSlots(engine, cap=2, lease_s=1.0)
    live.start()
    held: list[bytes] = []

    async def admitted() -> bool:
        try:
            held.append(await other.acquire(user))
        except ResourceExhausted:
            return False
        return True

    try:
        first = await live.acquire(user)
        await dead.acquire(user)
        with pytest.raises(ResourceExhausted, match="2 open streams"):
            await other.acquire(user)
        ttl = await engine.client.pttl(keys.user_streams(user))
        assert 0 < ttl <= 1000  # the key goes with its last lease
        # the dead replica's slot lapses by itself ...
        await until(admitted, within=5, every=0.1)
        # ... while the live one's, older than its lease by now, was renewed
        with pytest.raises(ResourceExhausted):
            await other.acquire(user)
        live.release(user, first)
        await until(admitted, within=5, every=0.05)
        assert len(held) == 2
    finally:
        await live.close()

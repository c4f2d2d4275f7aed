"""NearbyService.Connect on the real mesh (friend, location, presence, fan-out
in-process; real Redis and Postgres), called directly with the identity header."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nearby.v1 import nearby_service_pb2 as pb

from mesh.settings import Settings
from tests.fanout_helpers import ORIGIN, Mesh, fast_settings, mesh, offset


@pytest.fixture
async def m(settings: Settings) -> AsyncIterator[Mesh]:
    async with mesh(fast_settings(settings)) as value:
        yield value


async def test_abc_snapshot_updates_gone_and_my_move(m: Mesh) -> None:
    a, b, c = await m.users("a", "b", "c")
    await m.befriend(a, b)
    await m.befriend(a, c)
    sb = await m.connect(b, *offset(*ORIGIN, 2000))
    sc = await m.connect(c, *offset(*ORIGIN, 20000))
    sa = await m.connect(a, *ORIGIN)
    snap = (await sa.wait_for(lambda s: s.snapshots()))[0]
    assert [f.user_id for f in snap.friends] == [b]
    assert snap.total_size == 1 and snap.next_page_token == ""
    assert snap.radius_meters == pytest.approx(8047.0)
    assert snap.friends[0].distance_meters == pytest.approx(2000, abs=5)
    assert snap.friends[0].display_name == b.title()

    # C moves within range: A gets an update
    await sc.move(*offset(*ORIGIN, 3000))
    upd = await sa.wait_for(lambda s: s.updates(c))
    assert upd[-1].distance_meters == pytest.approx(3000, abs=5)

    # B moves 9 km away: gone OUT_OF_RANGE
    await sb.move(*offset(*ORIGIN, 9000))
    gone = await sa.wait_for(lambda s: s.gones(b))
    assert gone[-1].reason == pb.FRIEND_GONE_REASON_OUT_OF_RANGE

    # C moves back out; then A moves next to C: C appears without moving
    await sc.move(*offset(*ORIGIN, 20000))
    await sa.wait_for(lambda s: s.gones(c))
    n = len(sa.updates(c))
    await sa.move(*offset(*ORIGIN, 19000))
    upd = await sa.wait_for(lambda s: s.updates(c)[n:])
    assert upd[0].distance_meters == pytest.approx(1000, abs=5)
    for s in (sa, sb, sc):
        await s.close()

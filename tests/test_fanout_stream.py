"""NearbyService.Connect on the real mesh (friend, location, presence, fan-out
in-process; real Redis and Postgres), called directly with the identity header."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nearby.v1 import nearby_service_pb2 as pb

from mesh.clock import now_ms
from mesh.settings import Settings
from tests.support.fanout import ORIGIN, Mesh, fast_settings, mesh, offset


@pytest.fixture
def settings(engine_settings: Settings) -> Settings:
    """Every test runs on both Redis engines (standalone, then the shared cluster)."""
    return engine_settings


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


async def test_pages_in_distance_order_agree_with_list_nearby_friends(m: Mesh) -> None:
    me, *others = await m.users("me", *[f"f{i}" for i in range(46)])
    near, far = others[:45], others[45]
    for f in others:
        await m.befriend(me, f)
    # distinct distances, shuffled relative to the id order
    order = list(range(45))
    order.reverse()
    positions = {f: offset(*ORIGIN, 150.0 * (k + 1)) for f, k in zip(near, order, strict=True)}
    positions[far] = offset(*ORIGIN, 30_000)
    await m.report(positions)
    s = await m.connect(me, *ORIGIN)
    snap = (await s.wait_for(lambda s: s.snapshots()))[0]
    expected = sorted(near, key=lambda f: order[near.index(f)])
    assert snap.total_size == 45
    assert [f.user_id for f in snap.friends] == expected[:20]
    await s.page(snap.next_page_token)
    p2 = (await s.wait_for(lambda s: s.pages()))[0]
    assert [f.user_id for f in p2.friends] == expected[20:40]
    assert p2.total_size == 45 and p2.next_page_token
    await s.page(p2.next_page_token)
    p3 = (await s.wait_for(lambda s: s.pages()[1:]))[0]
    assert [f.user_id for f in p3.friends] == expected[40:]
    assert p3.next_page_token == ""
    dists = [f.distance_meters for f in [*snap.friends, *p2.friends, *p3.friends]]
    assert dists == sorted(dists)

    # the stateless unary call walks the same list, and accepts the stream's tokens
    walked: list[str] = []
    token = ""
    sizes = []
    while True:
        resp = await m.list_nearby(me, token)
        sizes.append(len(resp.friends))
        assert resp.total_size == 45
        walked += [f.user_id for f in resp.friends]
        token = resp.next_page_token
        if not token:
            break
    assert sizes == [20, 20, 5]
    assert walked == expected
    resp = await m.list_nearby(me, snap.next_page_token, size=7)
    assert [f.user_id for f in resp.friends] == expected[20:27]
    await s.close()


async def test_unfriend_then_befriend_while_connected(m: Mesh) -> None:
    a, b, c = await m.users("a", "b", "c")
    await m.befriend(a, b)
    await m.befriend(a, c)
    sb = await m.connect(b, *offset(*ORIGIN, 500))
    sc = await m.connect(c, *offset(*ORIGIN, 900))
    sa = await m.connect(a, *ORIGIN)
    snap = (await sa.wait_for(lambda s: s.snapshots()))[0]
    assert {f.user_id for f in snap.friends} == {b, c}

    await m.unfriend(a, b)
    gone = await sa.wait_for(lambda s: s.gones(b))
    assert [g.reason for g in gone] == [pb.FRIEND_GONE_REASON_UNFRIENDED]
    # B keeps moving next to A: nothing about B reaches A any more
    await sb.move(*offset(*ORIGIN, 10))
    await sb.move(*offset(*ORIGIN, 20))
    await sc.move(*offset(*ORIGIN, 800))  # a sentinel after B's moves
    await sa.wait_for(lambda s: s.updates(c))
    assert sa.updates(b) == []
    assert len(sa.gones(b)) == 1

    # befriended again while connected: B appears (with its cached position)
    await m.befriend(b, a)
    upd = await sa.wait_for(lambda s: s.updates(b))
    assert upd[0].distance_meters == pytest.approx(20, abs=2)
    await sb.move(*offset(*ORIGIN, 30))
    await sa.wait_for(lambda s: any(abs(u.distance_meters - 30) < 2 for u in s.updates(b)))
    for s in (sa, sb, sc):
        await s.close()


async def test_ghost_mode_hides_then_reappears_on_next_update(m: Mesh) -> None:
    a, b, c = await m.users("a", "b", "c")
    await m.befriend(a, b)
    await m.befriend(a, c)
    sb = await m.connect(b, *offset(*ORIGIN, 500))
    sc = await m.connect(c, *offset(*ORIGIN, 900))
    sa = await m.connect(a, *ORIGIN)
    await sa.wait_for(lambda s: s.snapshots())

    await m.set_hidden(b, True)
    gone = await sa.wait_for(lambda s: s.gones(b))
    assert [g.reason for g in gone] == [pb.FRIEND_GONE_REASON_HIDDEN]
    await sb.move(*offset(*ORIGIN, 400))  # hidden: not shared
    await sc.move(*offset(*ORIGIN, 800))
    await sa.wait_for(lambda s: s.updates(c))
    assert sa.updates(b) == []
    # A's unary list does not show B either
    assert b not in [f.user_id for f in (await m.list_nearby(a)).friends]

    await m.set_hidden(b, False)
    await sb.move(*offset(*ORIGIN, 300))
    upd = await sa.wait_for(lambda s: s.updates(b))
    assert upd[0].distance_meters == pytest.approx(300, abs=3)
    for s in (sa, sb, sc):
        await s.close()


async def test_non_friend_never_receives_anything(m: Mesh) -> None:
    a, stranger, c = await m.users("a", "stranger", "c")
    await m.befriend(a, c)
    ss = await m.connect(stranger, *offset(*ORIGIN, 1))
    sc = await m.connect(c, *offset(*ORIGIN, 900))
    sa = await m.connect(a, *ORIGIN)
    snap = (await sa.wait_for(lambda s: s.snapshots()))[0]
    assert [f.user_id for f in snap.friends] == [c]
    for i in range(5):
        await ss.move(*offset(*ORIGIN, 1 + i))
    await sa.move(*offset(*ORIGIN, 2))
    await sc.move(*offset(*ORIGIN, 800))
    await sa.wait_for(lambda s: s.updates(c))
    await ss.wait_for(lambda s: s.snapshots())
    assert stranger not in str(sa.messages)
    assert a not in str(ss.messages) and ss.snapshots()[0].total_size == 0
    for s in (sa, sc, ss):
        await s.close()


async def test_hysteresis_one_enter_not_dozens(m: Mesh) -> None:
    a, b = await m.users("a", "b")
    await m.befriend(a, b)
    radius = m.settings.nearby_radius_m
    assert m.settings.nearby_hysteresis_m >= 100
    sb = await m.connect(b, *offset(*ORIGIN, radius + 80))
    sa = await m.connect(a, *ORIGIN)
    snap = (await sa.wait_for(lambda s: s.snapshots()))[0]
    assert snap.total_size == 0
    # distinct fix times, after B's first one: two fixes of the same
    # millisecond are one (the later is STALE), which made the last move vanish
    t0 = now_ms() + 1
    for i in range(12):
        await sb.move(*offset(*ORIGIN, radius - 40 if i % 2 == 0 else radius + 40 + i), t0 + i)
    await sa.wait_for(lambda s: any(u.distance_meters > radius + 50 for u in s.updates(b)))
    assert sa.gones(b) == []  # it never left
    await sb.move(*offset(*ORIGIN, radius + 400), t0 + 100)
    gone = await sa.wait_for(lambda s: s.gones(b))
    assert [g.reason for g in gone] == [pb.FRIEND_GONE_REASON_OUT_OF_RANGE]
    # each event is the newest of B; the list saw B enter once and leave once
    kinds = [e.WhichOneof("kind") for e in sa.events()]
    assert kinds[-1] == "friend_gone" and "friend_gone" not in kinds[:-1]
    for s in (sa, sb):
        await s.close()


@pytest.mark.parametrize("how", ["hidden", "offline"])
async def test_friend_gone_does_not_reappear_when_i_move(settings: Settings, how: str) -> None:
    """Privacy: a hidden or offline friend's last position is forgotten; my own
    moves must not bring them back into my list until they report again."""
    async with mesh(fast_settings(settings, inactivity_timeout_s=2.0)) as m:
        a, b, c = await m.users("a", "b", "c")
        await m.befriend(a, b)
        await m.befriend(a, c)
        sb = await m.connect(b, *offset(*ORIGIN, 500))
        sa = await m.connect(a, *ORIGIN)
        snap = (await sa.wait_for(lambda s: s.snapshots()))[0]
        assert [f.user_id for f in snap.friends] == [b]
        if how == "hidden":
            await m.set_hidden(b, True)
        else:
            await sb.close()  # silent: presence reports B offline
        gone = await sa.wait_for(lambda s: s.gones(b), within=20)
        assert gone[-1].reason == (
            pb.FRIEND_GONE_REASON_HIDDEN if how == "hidden" else pb.FRIEND_GONE_REASON_OFFLINE
        )
        for north_m in (450, 520, 20):  # my moves, all next to where B was
            await sa.move(*offset(*ORIGIN, north_m))
        await m.report({c: offset(*ORIGIN, 300)})  # a sentinel after my moves
        await sa.wait_for(lambda s: s.updates(c))
        assert sa.updates(b) == [] and len(sa.gones(b)) == 1
        assert b not in [f.user_id for f in (await m.list_nearby(a)).friends]
        await sa.close()
        await sb.close()

"""The benchmark's social graph generator and its bulk load (real Postgres)."""

from __future__ import annotations

import psycopg
import pytest

from bench import graph
from mesh.db import migrate, open_pool
from mesh.geo import distance_m


def test_clustered_graph_is_reproducible_and_clustered() -> None:
    a = graph.clustered(2000, 20, nearby_share=0.2, seed=5)
    b = graph.clustered(2000, 20, nearby_share=0.2, seed=5)
    c = graph.clustered(2000, 20, nearby_share=0.2, seed=6)
    assert a.edges == b.edges and a.home == b.home
    assert a.edges != c.edges
    assert 19 <= a.avg_friends <= 21
    assert all(x != y for x, y in a.edges)
    s = graph.summary(a)
    # about the requested share of friends live in the same city (within the radius)
    assert 0.1 <= s["nearby_share"] <= 0.3


def test_fan_in_gives_every_user_its_movers_nearby() -> None:
    g = graph.fan_in(100, 20, 5)
    friends = g.friends()
    for u in range(100):
        assert len(friends[u]) == 5
        assert all(f >= 100 for f in friends[u])
        assert all(distance_m(*g.home[u], *g.home[f]) < 2500 for f in friends[u])
    # movers share the subscribers evenly: 100 * 5 / 20
    assert {len(friends[m]) for m in range(100, 120)} == {25}


@pytest.mark.parametrize("twice", [False, True])
async def test_load_writes_both_directions(database_url: str, twice: bool) -> None:
    pool = await open_pool(database_url)
    try:
        await migrate(pool, "friend_svc", "friend_svc")
    finally:
        await pool.close()
    g = graph.clustered(300, 6, seed=3)
    first = await graph.load(database_url, g)
    if twice:
        again = await graph.load(database_url, g)
        assert again == {"users": 0, "friendship_rows": 0}
    assert first == {"users": 300, "friendship_rows": 2 * len(g.edges)}
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM friendships f JOIN friendships r "
            "ON r.user_id = f.friend_id AND r.friend_id = f.user_id"
        ).fetchone()
    assert row is not None and row[0] == 2 * len(g.edges)


def test_sim_verification_flags_bad_pushes() -> None:
    from bench.sim import World

    g = graph.fan_in(2, 2, 1, spread_m=100)  # c0 - m0, c1 - m1
    w = World(g, radius_m=8047.0, slack_m=200.0)
    m0 = w.index["m0000000"]
    w.reported[m0].append(w.pos[m0])
    assert w.check(0, "m0000000", *w.pos[m0]) is None
    assert "not a friend" in (w.check(0, "m0000001", *w.pos[m0]) or "")
    far = graph.offset(*w.pos[0], 20_000, 0)
    assert "never reported" in (w.check(0, "m0000000", *far) or "")
    w.reported[m0].append(far)
    assert "radius" in (w.check(0, "m0000000", *far) or "")


def test_walk_stays_near_home() -> None:
    import random

    from bench.sim import walk

    rnd = random.Random(1)
    home = pos = (48.85, 2.35)
    heading = 0.0
    for _ in range(2000):
        pos, heading = walk(rnd, home, pos, heading, 42.0, 3000.0)
        assert distance_m(*home, *pos) < 3000 + 2 * 42

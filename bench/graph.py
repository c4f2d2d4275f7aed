"""Seedable social graphs and their bulk load into friend_svc's tables.

`clustered()` places users in cities far apart (a city is a disk of a few km)
and draws each user's friendships so that about `nearby_share` of them are in
the same city (within the nearby radius most of the time) and the rest in
other cities. `fan_in()` is the benchmark's shape: every connected user has
the same number of "mover" friends, all close by.

`load()` writes users and friendships (both directions, as friend_svc stores
them) with COPY into a staging table and one INSERT ... ON CONFLICT DO
NOTHING, so loading twice is harmless and nothing goes through the API, then
ANALYZEs both tables so the first reads use the index.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import psycopg

EARTH_M_PER_DEG = 111_320.0


@dataclass
class Graph:
    """Users (ids, home positions) and undirected friendships (index pairs)."""

    ids: list[str]
    home: list[tuple[float, float]]
    edges: set[tuple[int, int]] = field(default_factory=set)

    def add(self, a: int, b: int) -> None:
        if a != b:
            self.edges.add((min(a, b), max(a, b)))

    def friends(self) -> list[set[int]]:
        adj: list[set[int]] = [set() for _ in self.ids]
        for a, b in self.edges:
            adj[a].add(b)
            adj[b].add(a)
        return adj

    @property
    def avg_friends(self) -> float:
        return 2 * len(self.edges) / max(1, len(self.ids))


def offset(lat: float, lng: float, north_m: float, east_m: float) -> tuple[float, float]:
    """The point `north_m`, `east_m` metres from (lat, lng) (small distances)."""
    dlat = north_m / EARTH_M_PER_DEG
    dlng = east_m / (EARTH_M_PER_DEG * max(0.01, math.cos(math.radians(lat))))
    return lat + dlat, lng + dlng


def random_in_disk(
    rnd: random.Random, lat: float, lng: float, radius_m: float
) -> tuple[float, float]:
    r = radius_m * math.sqrt(rnd.random())
    a = rnd.random() * 2 * math.pi
    return offset(lat, lng, r * math.cos(a), r * math.sin(a))


def city_centres(
    count: int, origin: tuple[float, float] = (40.0, -100.0)
) -> list[tuple[float, float]]:
    """`count` city centres on a grid one degree (~100 km) apart."""
    side = max(1, math.ceil(math.sqrt(count)))
    return [(origin[0] + (i // side), origin[1] + (i % side)) for i in range(count)]


def clustered(
    n: int,
    avg_friends: float = 20.0,
    *,
    nearby_share: float = 0.1,
    city_users: int = 500,
    city_radius_m: float = 4000.0,
    seed: int = 1,
    prefix: str = "u",
) -> Graph:
    """A graph of `n` users in cities of ~`city_users`, `avg_friends` on average,
    `nearby_share` of them in the same city."""
    rnd = random.Random(seed)
    cities = city_centres(max(1, round(n / city_users)))
    city_of = [i % len(cities) for i in range(n)]
    members: list[list[int]] = [[] for _ in cities]
    for i, c in enumerate(city_of):
        members[c].append(i)
    home = [random_in_disk(rnd, *cities[c], city_radius_m) for c in city_of]
    g = Graph([f"{prefix}{i:07d}" for i in range(n)], home)
    if n < 2:
        return g
    target = round(n * avg_friends / 2)
    attempts = 0
    while len(g.edges) < target and attempts < target * 20:
        attempts += 1
        a = rnd.randrange(n)
        same = members[city_of[a]]
        if (rnd.random() < nearby_share or len(cities) == 1) and len(same) > 1:
            b = same[rnd.randrange(len(same))]
        else:
            b = rnd.randrange(n)
            if len(cities) > 1 and city_of[b] == city_of[a]:
                continue
        g.add(a, b)
    return g


def fan_in(
    users: int,
    movers: int,
    friends_per_user: int,
    *,
    centre: tuple[float, float] = (48.8566, 2.3522),
    spread_m: float = 1000.0,
    seed: int = 2,
) -> Graph:
    """`users` connected users (indices 0..users-1) each befriending
    `friends_per_user` of `movers` mover users (indices users..), everyone
    within `spread_m` of `centre`, so every move is delivered (in radius).
    Movers are assigned round-robin: each has users*friends_per_user/movers
    subscribers."""
    rnd = random.Random(seed)
    n = users + movers
    home = [random_in_disk(rnd, *centre, spread_m) for _ in range(n)]
    g = Graph([f"c{i:07d}" for i in range(users)] + [f"m{i:07d}" for i in range(movers)], home)
    k = 0
    for u in range(users):
        for _ in range(friends_per_user):
            g.add(u, users + (k % movers))
            k += 1
    return g


async def load(database_url: str, g: Graph, *, name_prefix: str = "User ") -> dict[str, int]:
    """Bulk-load users and friendships (both directions) with COPY."""
    conn = await psycopg.AsyncConnection.connect(database_url)
    async with conn, conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "CREATE TEMP TABLE users_in (user_id text, display_name text) ON COMMIT DROP"
        )
        await cur.execute(
            "CREATE TEMP TABLE friends_in (user_id text, friend_id text) ON COMMIT DROP"
        )
        async with cur.copy("COPY users_in (user_id, display_name) FROM STDIN") as cp:
            for uid in g.ids:
                await cp.write_row((uid, f"{name_prefix}{uid}"))
        async with cur.copy("COPY friends_in (user_id, friend_id) FROM STDIN") as cp:
            for a, b in g.edges:
                await cp.write_row((g.ids[a], g.ids[b]))
                await cp.write_row((g.ids[b], g.ids[a]))
        await cur.execute(
            "INSERT INTO users (user_id, display_name) SELECT user_id, display_name "
            "FROM users_in ON CONFLICT DO NOTHING"
        )
        users = cur.rowcount
        await cur.execute(
            "INSERT INTO friendships (user_id, friend_id) SELECT user_id, friend_id "
            "FROM friends_in ON CONFLICT DO NOTHING"
        )
        friendships = cur.rowcount
    # fresh planner statistics: without them the first friend-list reads after a
    # bulk load scan the whole table (autovacuum analyses only a while later)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("ANALYZE users")
        await conn.execute("ANALYZE friendships")
    return {"users": users, "friendship_rows": friendships}


def summary(g: Graph, radius_m: float = 8047.0) -> dict[str, Any]:
    """Users, friendships and the share of friends whose homes are within the radius."""
    from mesh.geo import distance_m

    near = sum(1 for a, b in g.edges if distance_m(*g.home[a], *g.home[b]) <= radius_m)
    return {
        "users": len(g.ids),
        "friendships": len(g.edges),
        "avg_friends": round(g.avg_friends, 2),
        "nearby_share": round(near / max(1, len(g.edges)), 3),
    }

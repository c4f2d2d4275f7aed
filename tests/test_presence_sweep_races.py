"""The inactivity sweeper against a report that lands in the middle of a sweep.

The sweeper talks to a real Redis through an engine that runs a hook before
each round trip it makes. The hook makes a real report (through
location_svc's ReportLocations) before the k-th send of one sweep, for every k
a sweep has: whichever step of the sweep a report falls between, the user is
never reported offline after that report, and once they go silent again they
are reported offline. The test knows nothing of the sweeper's steps but that
it talks to Redis through the engine it is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode

from location_svc.app import LocationApp
from mesh import keys
from mesh.clock import now_ms
from mesh.internal.v1 import (
    events_pb2,
    location_ingest_service_pb2,
    location_ingest_service_pb2_grpc,
)
from mesh.redis import RedisEngine
from mesh.settings import Settings
from presence_svc.sweeper import Sweeper
from tests.support.services import running

TIMEOUT_S = 0.3
MARK = "sweep-races:mark"


@dataclass
class Sends:
    """Counts the round trips of the sweeper's client; runs `action` before the `at`-th."""

    at: int = 0
    count: int = 0
    action: Callable[[], Awaitable[None]] | None = None

    async def before_send(self) -> None:
        self.count += 1
        if self.count == self.at and self.action is not None:
            await self.action()


class HookedEngine(RedisEngine):
    """A real engine that awaits `sends.before_send()` before each round trip."""

    def __init__(self, url: str, sends: Sends) -> None:
        super().__init__(url)
        self._sends = sends

    async def _roundtrip(
        self, node: ClusterNode | None, frames: list[bytes], timeout_s: float
    ) -> list[Any]:
        await self._sends.before_send()
        return await super()._roundtrip(node, frames, timeout_s)


class Reporter:
    """Real reports through location_svc; remembers when each was made: the
    server's timestamp lies between `sent` and `answered`."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = location_ingest_service_pb2_grpc.LocationIngestServiceStub(channel)
        self.sent: dict[str, int] = {}
        self.answered: dict[str, int] = {}

    async def report(self, user: str) -> None:
        before = now_ms()
        resp = await self.stub.ReportLocations(
            location_ingest_service_pb2.ReportLocationsRequest(
                reports=[
                    location_ingest_service_pb2.LocationReport(
                        user_id=user, fix=events_pb2.PositionFix(latitude=1.0, longitude=2.0)
                    )
                ]
            )
        )
        assert not any(r.HasField("rejection") for r in resp.results), resp
        self.sent[user], self.answered[user] = before, now_ms()

    async def until_stale(self, user: str) -> None:
        """Until the user's last report is older than the sweeper's timeout."""
        left_ms = self.answered[user] + TIMEOUT_S * 1000 - now_ms()
        await asyncio.sleep(max(0.0, left_ms / 1000) + 0.01)
        assert now_ms() - self.answered[user] > TIMEOUT_S * 1000


class Channel:
    """What was published on users' location channels, in Redis's order."""

    def __init__(self, redis: aioredis.Redis, sub: Any) -> None:
        self.redis, self.sub = redis, sub
        self.marks = 0

    async def drain(self) -> list[events_pb2.LocationEvent]:
        """Everything published so far: up to a marker published now."""
        self.marks += 1
        mark = str(self.marks).encode()
        await self.redis.publish(MARK, mark)
        got: list[events_pb2.LocationEvent] = []
        async with asyncio.timeout(30):
            while True:
                msg = await self.sub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is None:
                    continue
                if msg["channel"] == MARK.encode():
                    if msg["data"] == mark:
                        return got
                    continue
                got.append(events_pb2.LocationEvent.FromString(msg["data"]))


@pytest.fixture
async def reporter(settings: Settings) -> AsyncIterator[Reporter]:
    # The cache keeps its usual 10 min TTL: only the sweeper's timeout is short.
    s = settings.replace(min_report_interval_s=0.0)
    async with (
        running(LocationApp(s, history_writer=False)) as addr,
        grpc.aio.insecure_channel(addr) as channel,
    ):
        yield Reporter(channel)


def kinds(events: list[events_pb2.LocationEvent]) -> list[str]:
    return [str(e.WhichOneof("kind")) for e in events]


async def test_a_report_between_any_two_steps_of_a_sweep_is_honoured(
    redis_url: str, redis_client: aioredis.Redis, reporter: Reporter
) -> None:
    users = [f"racer{k}" for k in range(64)]
    sub: Any = redis_client.pubsub()
    await sub.subscribe(MARK, *[keys.location_channel(u) for u in users])
    channel = Channel(redis_client, sub)

    async def one_sweep(sends: Sends) -> int:
        client = HookedEngine(redis_url, sends)
        try:
            return await Sweeper(client, TIMEOUT_S, 1.0).sweep()
        finally:
            await client.aclose()

    # warm up (scripts loaded), then count the round trips of a sweep of one stale user
    for user in users[:2]:
        await reporter.report(user)
        await reporter.until_stale(user)
        dry = Sends()
        assert await one_sweep(dry) == 1
    await channel.drain()
    assert 2 <= dry.count < len(users) - 2, dry.count

    for k, user in enumerate(users[2 : dry.count + 2], start=1):
        await reporter.report(user)
        await reporter.until_stale(user)
        await channel.drain()

        async def mid_sweep_report(user: str = user) -> None:
            await reporter.report(user)

        await one_sweep(Sends(at=k, action=mid_sweep_report))
        during = await channel.drain()
        assert [e.user_id for e in during] == [user] * len(during)
        # the report's own update is there; no offline event may follow it
        assert "moved" in kinds(during), (k, kinds(during))
        assert "offline" not in kinds(during)[kinds(during).index("moved") :], (k, kinds(during))

        # silent again: the next sweep reports the user offline, as of that report
        await reporter.until_stale(user)
        await one_sweep(Sends())
        after = await channel.drain()
        assert kinds(after) == ["offline"], (k, kinds(after))
        assert after[0].offline.last_active_ms >= reporter.sent[user]
    await sub.aclose()

"""The SDK against the real mesh behind a real Envoy (real Redis and Postgres):
the unary helpers, error mapping and authentication failures."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from nearby import AuthError, BackoffPolicy, NearbyClient, NearbyError, Reconnecting

from mesh.settings import Settings
from stack import infra
from tests.edge_stack import EdgeStack, edge_stack

FAST = BackoffPolicy(initial_s=0.05, multiplier=2, max_s=0.5)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def sdk_settings(redis_server: infra.RedisServer, pg_admin_url: str) -> Iterator[Settings]:
    """One database for the module's stack (tests use fresh user ids)."""
    name = f"nearby_sdk_{uuid.uuid4().hex[:12]}"
    infra.create_database(pg_admin_url, name)
    yield Settings(redis_url=redis_server.url, database_url=infra.database_url(pg_admin_url, name))
    infra.drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
async def stack(sdk_settings: Settings) -> AsyncIterator[EdgeStack]:
    async with edge_stack(sdk_settings, services=("friend_svc", "location_svc")) as s:
        yield s


def client(stack: EdgeStack, user_id: str, *, admin: bool = False) -> NearbyClient:
    return NearbyClient(
        stack.envoy_addr, stack.token(user_id, admin=admin), secure=False, backoff=FAST
    )


async def users(stack: EdgeStack, *prefixes: str) -> list[str]:
    ids = [uid(p) for p in prefixes]
    async with client(stack, "operator", admin=True) as admin:
        for user_id in ids:
            created = await admin.create_user(user_id.title(), user_id)
            assert created.user_id == user_id
    return ids


async def test_friend_management_helpers(stack: EdgeStack) -> None:
    alice, bob, carol = await users(stack, "alice", "bob", "carol")
    async with (
        client(stack, alice) as a,
        client(stack, bob) as b,
        client(stack, carol) as c,
    ):
        me = await a.get_user()
        assert (me.user_id, me.display_name) == (alice, alice.title())
        assert me.create_time.tzinfo is not None

        sent = await a.send_friend_request(bob)
        assert (sent.from_user.user_id, sent.to_user.user_id) == (alice, bob)
        await c.send_friend_request(bob)
        incoming = [r.from_user.user_id async for r in b.list_friend_requests(page_size=1)]
        assert sorted(incoming) == sorted([alice, carol])  # all pages walked
        outgoing = [r.to_user.user_id async for r in a.list_friend_requests("outgoing")]
        assert outgoing == [bob]

        friend = await b.accept_friend_request(alice)
        assert friend.user.user_id == alice
        await b.decline_friend_request(carol)
        assert [r async for r in b.list_friend_requests()] == []
        assert [f.user.user_id async for f in a.list_friends()] == [bob]
        assert [f.user.user_id async for f in b.list_friends()] == [alice]

        await a.remove_friend(bob)
        assert [f async for f in b.list_friends()] == []


async def test_errors_carry_code_message_and_reason(stack: EdgeStack) -> None:
    (alice,) = await users(stack, "alice")
    async with client(stack, alice) as a:
        with pytest.raises(NearbyError) as info:
            await a.send_friend_request(uid("nobody"))
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert info.value.message
        assert info.value.reason  # the ErrorInfo detail made it through Envoy
        assert not isinstance(info.value, AuthError)

        # A user token cannot create users: PERMISSION_DENIED is an AuthError.
        with pytest.raises(AuthError) as denied:
            await a.create_user("Mallory", uid("mallory"))
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED


async def test_report_location_and_history(stack: EdgeStack) -> None:
    (alice,) = await users(stack, "alice")
    async with client(stack, alice) as a:
        t0 = datetime.now(UTC) - timedelta(seconds=30)
        first = await a.report_location(52.52, 13.405, recorded_at=t0)
        assert first.disposition == "ACCEPTED"
        assert first.location.user_id == alice
        assert (first.location.latitude, first.location.longitude) == (52.52, 13.405)
        with pytest.raises(ValueError):
            await a.report_location(95.0, 0.0)
        # History is written behind a durable buffer: poll with a deadline.
        async with asyncio.timeout(30):
            while True:
                history = [h async for h in a.list_location_history(page_size=1)]
                if history:
                    break
                await asyncio.sleep(0.1)
        assert [(h.latitude, h.longitude) for h in history] == [(52.52, 13.405)]
        assert abs((history[0].recorded_at - t0).total_seconds()) < 0.001


async def test_bad_token_raises_auth_error_without_retrying(stack: EdgeStack) -> None:
    async with NearbyClient(stack.envoy_addr, "not-a-jwt", secure=False, backoff=FAST) as bad:
        with pytest.raises(AuthError) as info:
            await bad.get_user()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED

        session = bad.connect(52.52, 13.405)
        with pytest.raises(AuthError) as stream_info:
            async with asyncio.timeout(20):
                async for event in session:
                    # Envoy refuses the stream as the first location is being
                    # written; grpc.aio can then report INTERNAL instead of the
                    # real status (grpc/grpc#36066), which is retried like any
                    # INTERNAL. Nothing but that may ever arrive.
                    assert isinstance(event, Reconnecting), event
                    assert "Internal error from Core" in event.cause
        assert stream_info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert stream_info.value.message
        assert session.connects <= 3  # refused, not retried
        assert session.closed

    # An expired token is refused the same way.
    expired = stack.token("alice", ttl_s=60, now=datetime.now(UTC).timestamp() - 3600)
    async with NearbyClient(stack.envoy_addr, expired, secure=False) as old:
        with pytest.raises(AuthError):
            await old.get_user()

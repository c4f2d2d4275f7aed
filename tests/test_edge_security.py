"""Edge security through a real Envoy: token expiry on live streams, the
per-user stream cap (over two fan-out replicas), the per-user rate limit,
TLS (grpcurl and the SDK), JWKS rotation without a restart, and mTLS from
Envoy to a backend."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import jwt
import pytest
from nearby import NearbyClient
from nearby.errors import NearbyError
from nearby.events import Reconnecting, Snapshot
from nearby.v1 import friend_service_pb2 as fpb
from nearby.v1 import friend_service_pb2_grpc as fpb_grpc
from nearby.v1 import nearby_service_pb2_grpc as pb_grpc

from mesh.channels import CLIENT_OPTIONS
from mesh.settings import Settings
from stack import tokens
from tests.support.edge_stack import EdgeStack, edge_stack
from tests.support.fanout import ORIGIN, Stream, fast_settings, until

CAP = 2
RATE_PER_S, BURST = 1.0, 3


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def stack(
    redis_server: object, pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EdgeStack]:
    from stack import infra

    name = f"nearby_sec_{uuid.uuid4().hex[:12]}"
    infra.create_database(pg_admin_url, name)
    settings = fast_settings(
        Settings(
            redis_url=redis_server.url,  # type: ignore[attr-defined]
            database_url=infra.database_url(pg_admin_url, name),
        ),
        streams_per_user=CAP,
    )
    try:
        async with edge_stack(
            settings,
            fanout_replicas=2,
            tls=True,
            served_jwks=True,
            edge={
                "jwks_cache_s": 1.0,
                "rate_limit_per_s": RATE_PER_S,
                "rate_limit_burst": BURST,
            },
        ) as s:
            yield s
    finally:
        infra.drop_database(pg_admin_url, name)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


# --- token expiry ------------------------------------------------------------


async def test_a_live_stream_is_told_to_reconnect_before_exp_and_ended_at_it(
    stack: EdgeStack,
) -> None:
    user = uid("short")
    await stack.create_user(user)
    token = stack.token(user, ttl_s=6)
    exp = float(jwt.decode(token, options={"verify_signature": False})["exp"])
    async with stack.channel() as ch:
        stream = Stream(pb_grpc.NearbyServiceStub(ch), user, metadata=bearer(token))
        await stream.open(*ORIGIN)
        await stream.wait_for(lambda s: s.snapshots())
        await stream.wait_for(lambda s: any(m.HasField("reconnect") for m in s.messages))
        reminded_at = time.time()
        await stream.done.wait()
        ended_at = time.time()
    assert reminded_at < exp, "the Reconnect must come before the token expires"
    assert ended_at >= exp - 0.05, "the stream must last until the token expires"
    assert stream.error is not None
    assert stream.error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (stream.error.details() or "")
    reconnect = next(m.reconnect for m in stream.messages if m.HasField("reconnect"))
    assert "token" in reconnect.reason


async def test_envoys_leeway_does_not_open_a_stream_for_an_expired_token(
    stack: EdgeStack,
) -> None:
    """JWT_CLOCK_SKEW_S lets Envoy pass a token a little past exp; the fan-out
    refuses it rather than serve a stream that would end at once."""
    user = uid("late")
    await stack.create_user(user)
    token = stack.token(user, ttl_s=2, now=time.time() - 3)  # expired 1 s ago
    async with stack.channel() as ch:
        stream = Stream(pb_grpc.NearbyServiceStub(ch), user, metadata=bearer(token))
        await stream.open(*ORIGIN)
        await stream.done.wait()
    assert stream.error is not None
    assert stream.error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (stream.error.details() or "")
    # beyond the leeway Envoy itself refuses it
    stale = stack.token(user, ttl_s=2, now=time.time() - 60)
    res = await stack.grpcurl("nearby.v1.FriendService/GetUser", token=stale, data="{}")
    assert res.code == "Unauthenticated"


async def test_the_sdk_renews_its_token_over_tls_without_surfacing_an_error(
    stack: EdgeStack,
) -> None:
    user = uid("renew")
    await stack.create_user(user)
    minted: list[str] = []

    def token_source() -> str:
        minted.append(stack.token(user, ttl_s=4))
        return minted[-1]

    assert stack.ca_path is not None
    creds = grpc.ssl_channel_credentials(root_certificates=stack.ca_path.read_bytes())
    events: list[object] = []
    async with NearbyClient(stack.tls_addr, token_source, credentials=creds) as client:
        session = client.connect(*ORIGIN)

        async def consume() -> None:
            async for event in session:
                events.append(event)
                if sum(isinstance(e, Snapshot) for e in events) >= 3:
                    return

        await asyncio.wait_for(consume(), 30)
    reconnects = [e for e in events if isinstance(e, Reconnecting)]
    assert len(reconnects) >= 2
    assert all("token expires soon" in e.cause for e in reconnects), reconnects
    assert len(minted) >= 3  # a fresh token for every stream


# --- the per-user stream cap --------------------------------------------------


async def test_the_stream_cap_holds_over_replicas_and_frees_a_closed_slot(
    stack: EdgeStack,
) -> None:
    user = uid("capped")
    await stack.create_user(user)
    held: list[Stream] = []
    channels = [
        grpc.aio.insecure_channel(a, options=CLIENT_OPTIONS) for a in stack.backends["fanout_svc"]
    ]
    try:
        # one stream on each replica, directly (identity as Envoy would set it)
        for ch in channels:
            s = Stream(pb_grpc.NearbyServiceStub(ch), user)
            await s.open(*ORIGIN)
            await s.wait_for(lambda st: st.snapshots())
            held.append(s)
        async with stack.channel() as edge:
            extra = Stream(pb_grpc.NearbyServiceStub(edge), user, metadata=stack.auth(user))
            await extra.open(*ORIGIN)
            await extra.done.wait()
            assert extra.error is not None
            assert extra.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"{CAP} open streams" in (extra.error.details() or "")
            await held.pop().close()

            async def admitted() -> bool:
                again = Stream(pb_grpc.NearbyServiceStub(edge), user, metadata=stack.auth(user))
                await again.open(*ORIGIN)
                await again.wait_for(lambda st: st.snapshots() or st.done.is_set())
                ok = bool(again.snapshots())
                await again.close()
                return ok

            await until(admitted, within=10, every=0.1)
    finally:
        for s in held:
            await s.close()
        for ch in channels:
            await ch.close()


# --- the per-user rate limit --------------------------------------------------


async def test_unary_calls_over_the_rate_answer_resource_exhausted_with_a_hint(
    stack: EdgeStack,
) -> None:
    user = uid("hasty")
    await stack.create_user(user)
    async with NearbyClient(stack.envoy_addr, stack.token(user), secure=False) as client:
        with pytest.raises(NearbyError) as caught:
            for _ in range(BURST + 5):
                await client.get_user()
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many calls" in caught.value.message
        assert caught.value.retry_after is not None and caught.value.retry_after >= 1
        # another user has a bucket of their own; an operator is not limited
        other = uid("calm")
        await stack.create_user(other)
    async with NearbyClient(stack.envoy_addr, stack.token(other), secure=False) as client:
        assert (await client.get_user()).user_id == other
    for _ in range(BURST + 2):
        await stack.create_user(uid("bulk"))
    # streams are not counted against the limit
    async with stack.channel() as ch:
        s = Stream(pb_grpc.NearbyServiceStub(ch), user, metadata=stack.auth(user))
        await s.open(*ORIGIN)
        await s.wait_for(lambda st: st.snapshots())
        await s.close()


# --- TLS ------------------------------------------------------------------------


async def test_grpcurl_over_tls_and_plaintext_on_the_tls_port_is_told_so(
    stack: EdgeStack,
) -> None:
    listed = await stack.grpcurl("list", tls=True)
    assert listed.code == "OK", listed.stderr
    assert "nearby.v1.NearbyService" in listed.stdout
    user = uid("tls")
    await stack.create_user(user)
    res = await stack.grpcurl(
        "nearby.v1.FriendService/GetUser", tls=True, token=stack.token(user), data="{}"
    )
    assert res.code == "OK", res.stderr
    assert user in res.stdout
    plain = await stack.grpcurl(
        "nearby.v1.FriendService/GetUser", target=stack.tls_addr, token=stack.token(user), data="{}"
    )
    assert plain.code != "OK"
    assert "speaks TLS only" in plain.stderr, plain.stderr


# --- JWKS rotation ----------------------------------------------------------------


async def test_a_rotated_key_is_accepted_and_a_dropped_one_refused_without_a_restart(
    stack: EdgeStack,
) -> None:
    assert stack.home is not None
    user = uid("rot")
    await stack.create_user(user)
    # admin tokens: not rate limited, so polling is not throttled
    old = stack.token(user, admin=True)
    home = stack.key.jwks_path.parent

    async def status(token: str) -> str:
        res = await stack.grpcurl("nearby.v1.FriendService/GetUser", token=token, data="{}")
        return res.code

    async def becomes(token: str, code: str) -> bool:
        return await status(token) == code

    pid = stack.envoy.proc.pid if stack.envoy.proc else None
    stack.key = tokens.rotate(home)
    new = stack.token(user, admin=True)
    await until(lambda: becomes(new, "OK"), within=15, every=0.3)
    assert await status(old) == "OK"  # retired, still in the JWKS
    stack.key = tokens.drop_retired(home)
    await until(lambda: becomes(old, "Unauthenticated"), within=15, every=0.3)
    assert await status(new) == "OK"
    assert stack.envoy.proc is not None and stack.envoy.proc.pid == pid  # no restart


# --- mTLS Envoy -> backend -----------------------------------------------------------


async def test_mtls_from_envoy_to_a_backend(settings: Settings) -> None:
    async with edge_stack(settings, services=("friend_svc",), mesh_tls=True) as s:
        user = uid("mtls")
        await s.create_user(user)
        res = await s.grpcurl("nearby.v1.FriendService/GetUser", token=s.token(user), data="{}")
        assert res.code == "OK", res.stderr
        # the backend itself speaks only mTLS: a cleartext caller gets nowhere
        async with grpc.aio.insecure_channel(s.backends["friend_svc"][0]) as direct:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await fpb_grpc.FriendServiceStub(direct).GetUser(
                    fpb.GetUserRequest(), metadata=[("x-nearby-user-id", user)], timeout=3
                )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_between_the_services(settings: Settings) -> None:
    """With MESH_TLS every service-to-service call is mTLS too: location_svc
    asks friend_svc about the account, friend_svc's deletion asks location_svc
    and presence_svc to erase (cleartext channels would get UNAVAILABLE)."""
    async with edge_stack(settings, mesh_tls=True) as s:
        user = uid("mtls")
        await s.create_user(user)
        token = s.token(user)
        res = await s.grpcurl(
            "nearby.v1.LocationService/ReportLocation",
            token=token,
            data='{"position": {"latitude": 52.52, "longitude": 13.405}}',
        )
        assert res.code == "OK", res.stderr
        res = await s.grpcurl(
            "nearby.v1.PresenceService/GetSharingSettings", token=token, data="{}"
        )
        assert res.code == "OK", res.stderr
        res = await s.grpcurl("nearby.v1.FriendService/DeleteUser", token=token, data="{}")
        assert res.code == "OK", res.stderr
        res = await s.grpcurl("nearby.v1.FriendService/GetUser", token=token, data="{}")
        assert res.code == "NotFound", res.stderr

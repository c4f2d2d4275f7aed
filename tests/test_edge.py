"""The edge, through a real Envoy with the real grpcurl: reflection, JWT,
identity headers, admin claim, internal services, health checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from nearby.v1 import (
    friend_service_pb2,
    friend_service_pb2_grpc,
    location_service_pb2,
    location_service_pb2_grpc,
    nearby_service_pb2,
    nearby_service_pb2_grpc,
    presence_service_pb2,
    presence_service_pb2_grpc,
)

from mesh.internal.v1 import friend_graph_service_pb2, friend_graph_service_pb2_grpc
from mesh.settings import Settings
from stack import infra
from stack.edge import validate
from tests.support import browser
from tests.support.edge_stack import EdgeStack, edge_stack

PUBLIC = (
    "nearby.v1.FriendService",
    "nearby.v1.LocationService",
    "nearby.v1.PresenceService",
    "nearby.v1.NearbyService",
)


@pytest.fixture(scope="module")
def edge_settings(redis_server: infra.RedisServer, pg_admin_url: str) -> Iterator[Settings]:
    """One database for the module's stack (tests use fresh user ids)."""
    name = f"nearby_edge_{uuid.uuid4().hex[:12]}"
    infra.create_database(pg_admin_url, name)
    yield Settings(redis_url=redis_server.url, database_url=infra.database_url(pg_admin_url, name))
    infra.drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
async def stack(edge_settings: Settings) -> AsyncIterator[EdgeStack]:
    async with edge_stack(edge_settings, services=("friend_svc",)) as s:
        yield s


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_user(stack: EdgeStack, user_id: str) -> None:
    res = await stack.grpcurl(
        "nearby.v1.FriendService/CreateUser",
        token=stack.token("operator", admin=True),
        data=json.dumps({"user_id": user_id, "display_name": user_id.title()}),
    )
    assert res.code == "OK", res.stderr


async def test_grpcurl_lists_every_public_service_without_a_token(stack: EdgeStack) -> None:
    res = await stack.grpcurl("list")
    assert res.code == "OK", res.stderr
    listed = set(res.stdout.split())
    assert set(PUBLIC) <= listed
    described = await stack.grpcurl("describe", "nearby.v1.NearbyService")
    assert described.code == "OK", described.stderr
    assert "rpc Connect ( stream .nearby.v1.ConnectRequest )" in described.stdout


async def test_call_with_valid_token_acts_as_the_tokens_subject(stack: EdgeStack) -> None:
    alice = uid("alice")
    await create_user(stack, alice)
    res = await stack.grpcurl(
        "nearby.v1.FriendService/GetUser", token=stack.token(alice), data="{}"
    )
    assert res.code == "OK", res.stderr
    assert json.loads(res.stdout)["user"]["user_id"] == alice


async def test_no_token_is_unauthenticated(stack: EdgeStack) -> None:
    res = await stack.grpcurl("nearby.v1.FriendService/GetUser", data="{}")
    assert res.code == "Unauthenticated", res.stderr
    # identity headers without a token do not help
    forged = await stack.grpcurl(
        "nearby.v1.FriendService/GetUser",
        data="{}",
        headers=["x-nearby-user-id: someone", "x-nearby-admin: true"],
    )
    assert forged.code == "Unauthenticated", forged.stderr


def _foreign_token(stack: EdgeStack, **claims: object) -> str:
    """Signed by a key Envoy does not know."""
    now = int(time.time())
    body: dict[str, object] = {
        "iss": stack.settings.jwt_issuer,
        "aud": stack.settings.jwt_audience,
        "sub": "mallory",
        "iat": now,
        "exp": now + 600,
        **claims,
    }
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": stack.key.kid})


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda s: s.token("bob", ttl_s=60, now=time.time() - 3600), id="expired"),
        pytest.param(lambda s: "not-a-jwt", id="garbage"),
        pytest.param(lambda s: s.token("bob")[:-4] + "AAAA", id="bad-signature"),
        pytest.param(_foreign_token, id="unknown-key"),
        pytest.param(
            lambda s: s.key.sign("bob", issuer="someone-else", audience=s.settings.jwt_audience),
            id="wrong-issuer",
        ),
        pytest.param(
            lambda s: s.key.sign("bob", issuer=s.settings.jwt_issuer, audience="other-app"),
            id="wrong-audience",
        ),
    ],
)
async def test_invalid_token_is_unauthenticated(stack: EdgeStack, make_token: object) -> None:
    token = make_token(stack)  # type: ignore[operator]
    async with stack.channel() as channel:
        stub = friend_service_pb2_grpc.FriendServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetUser(
                friend_service_pb2.GetUserRequest(),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=10,
            )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_forged_identity_headers_are_ignored(stack: EdgeStack) -> None:
    alice, bob = uid("alice"), uid("bob")
    await create_user(stack, alice)
    await create_user(stack, bob)
    res = await stack.grpcurl(
        "nearby.v1.FriendService/GetUser",
        token=stack.token(alice),
        data="{}",
        headers=[f"x-nearby-user-id: {bob}"],
    )
    assert res.code == "OK", res.stderr
    assert json.loads(res.stdout)["user"]["user_id"] == alice
    # a client cannot grant itself the admin claim either
    forged_admin = await stack.grpcurl(
        "nearby.v1.FriendService/CreateUser",
        token=stack.token(alice),
        data=json.dumps({"user_id": uid("eve"), "display_name": "Eve"}),
        headers=["x-nearby-admin: true"],
    )
    assert forged_admin.code == "PermissionDenied", forged_admin.stderr


async def test_create_user_needs_the_admin_claim(stack: EdgeStack) -> None:
    carol = uid("carol")
    body = json.dumps({"user_id": carol, "display_name": "Carol"})
    denied = await stack.grpcurl(
        "nearby.v1.FriendService/CreateUser", token=stack.token(carol), data=body
    )
    assert denied.code == "PermissionDenied", denied.stderr
    allowed = await stack.grpcurl(
        "nearby.v1.FriendService/CreateUser", token=stack.token("ops", admin=True), data=body
    )
    assert allowed.code == "OK", allowed.stderr
    assert json.loads(allowed.stdout)["user"]["user_id"] == carol


async def test_internal_services_are_not_routed(stack: EdgeStack) -> None:
    dave = uid("dave")
    await create_user(stack, dave)
    before = stack.envoy.stats("cluster.friend_svc.upstream_rq_total").get(
        "cluster.friend_svc.upstream_rq_total", 0
    )
    async with stack.channel() as channel:
        stub = friend_graph_service_pb2_grpc.FriendGraphServiceStub(channel)
        for metadata in (stack.auth(dave), stack.auth(dave, admin=True)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListAllFriends(
                    friend_graph_service_pb2.ListAllFriendsRequest(user_id=dave),
                    metadata=metadata,
                    timeout=10,
                )
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    after = stack.envoy.stats("cluster.friend_svc.upstream_rq_total").get(
        "cluster.friend_svc.upstream_rq_total", 0
    )
    assert after == before  # never reached the backend
    # while the backend itself serves it (operators and tests call it directly)
    async with grpc.aio.insecure_channel(stack.backends["friend_svc"][0]) as direct:
        stub = friend_graph_service_pb2_grpc.FriendGraphServiceStub(direct)
        await stub.ListAllFriends(
            friend_graph_service_pb2.ListAllFriendsRequest(user_id=dave), timeout=10
        )


async def test_unhealthy_backend_is_taken_out_and_back_in(stack: EdgeStack) -> None:
    erin = uid("erin")
    await create_user(stack, erin)
    async with stack.channel() as channel:
        stub = friend_service_pb2_grpc.FriendServiceStub(channel)

        async def status() -> grpc.StatusCode:
            try:
                await stub.GetUser(
                    friend_service_pb2.GetUserRequest(), metadata=stack.auth(erin), timeout=10
                )
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        async def eventually(code: grpc.StatusCode) -> None:
            # Envoy's workers learn of a host change just after /clusters shows it
            for _ in range(100):
                if await status() == code:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"calls never returned {code}")

        assert await status() == grpc.StatusCode.OK
        await stack.set_serving("friend_svc", False)
        try:
            await stack.wait_hosts("friend_svc", healthy=False)
            # no healthy host: Envoy fails the call at once instead of routing
            await eventually(grpc.StatusCode.UNAVAILABLE)
        finally:
            await stack.set_serving("friend_svc", True)
        await stack.wait_hosts("friend_svc", healthy=True)
        await eventually(grpc.StatusCode.OK)


async def test_generated_config_passes_envoy_validate(stack: EdgeStack) -> None:
    ok, output = await asyncio.to_thread(validate, Path(stack.envoy.config))
    assert ok, output


def _grpc_web_call(
    addr: str, path: str, message: bytes, token: str | None
) -> tuple[int, dict[str, str], bytes]:
    """One grpc-web call over HTTP/1.1, as a browser would make it."""
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    request = urllib.request.Request(f"http://{addr}{path}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _grpc_web_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    messages, trailers = [], {}
    while body:
        flag, size = body[0], int.from_bytes(body[1:5], "big")
        chunk, body = body[5 : 5 + size], body[5 + size :]
        if flag & 0x80:
            for line in chunk.decode().split("\r\n"):
                if ":" in line:
                    k, v = line.split(":", 1)
                    trailers[k.strip().lower()] = v.strip()
        else:
            messages.append(chunk)
    return messages, trailers


async def test_grpc_web_for_browsers(stack: EdgeStack) -> None:
    frank = uid("frank")
    await create_user(stack, frank)
    path = "/nearby.v1.FriendService/GetUser"
    request = friend_service_pb2.GetUserRequest().SerializeToString()
    status, _, body = await asyncio.to_thread(
        _grpc_web_call, stack.envoy_addr, path, request, stack.token(frank)
    )
    assert status == 200
    messages, trailers = _grpc_web_frames(body)
    assert trailers.get("grpc-status") == "0"
    assert friend_service_pb2.GetUserResponse.FromString(messages[0]).user.user_id == frank
    # no token: HTTP 401 with grpc-status UNAUTHENTICATED (16) in the headers
    status, headers, body = await asyncio.to_thread(
        _grpc_web_call, stack.envoy_addr, path, request, None
    )
    assert status == 401
    assert headers.get("grpc-status") == "16"
    assert not body


async def test_no_dev_login_outside_dev_mode(stack: EdgeStack) -> None:
    """This stack is not in dev mode: /dev/token is no route, nothing mints a token."""
    body = {"user_id": uid("dora")}
    reply, doc = await asyncio.to_thread(browser.post_json, stack.envoy_addr, "/dev/token", body)
    assert reply.status == 401 and "token" not in doc  # deny by default: no token
    reply = await asyncio.to_thread(
        browser.request,
        stack.envoy_addr,
        "POST",
        "/dev/token",
        {"content-type": "application/json", "authorization": f"Bearer {stack.token('dora')}"},
        json.dumps(body).encode(),
    )
    assert reply.status == 404 and b"token" not in reply.body


async def test_every_public_service_is_routed_to_its_cluster(settings: Settings) -> None:
    """The full mesh as subprocesses (`python -m <svc>`), two fan-out replicas."""
    async with edge_stack(settings, fanout_replicas=2, processes=True) as stack:
        channel = stack.channel()
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "friend_svc": lambda: friend_service_pb2_grpc.FriendServiceStub(channel).ListFriends(
                friend_service_pb2.ListFriendsRequest(), metadata=stack.auth("grace"), timeout=10
            ),
            "location_svc": lambda: location_service_pb2_grpc.LocationServiceStub(
                channel
            ).ListLocationHistory(
                location_service_pb2.ListLocationHistoryRequest(),
                metadata=stack.auth("grace"),
                timeout=10,
            ),
            "presence_svc": lambda: presence_service_pb2_grpc.PresenceServiceStub(
                channel
            ).GetVisibility(
                presence_service_pb2.GetVisibilityRequest(),
                metadata=stack.auth("grace"),
                timeout=10,
            ),
            "fanout_svc": lambda: nearby_service_pb2_grpc.NearbyServiceStub(
                channel
            ).ListNearbyFriends(
                nearby_service_pb2.ListNearbyFriendsRequest(),
                metadata=stack.auth("grace"),
                timeout=10,
            ),
        }
        try:
            for cluster, call in calls.items():
                key = f"cluster.{cluster}.upstream_rq_total"
                before = stack.envoy.stats(key).get(key, 0)
                try:
                    await call()
                except grpc.aio.AioRpcError as exc:
                    # the backend answered (whatever its verdict), not Envoy
                    assert exc.code() not in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.UNIMPLEMENTED,
                        grpc.StatusCode.UNAUTHENTICATED,
                    ), exc
                assert stack.envoy.stats(key).get(key, 0) == before + 1
            # unary calls are spread over both fan-out replicas
            for _ in range(20):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await calls["fanout_svc"]()
        finally:
            await channel.close()
        _, clusters = await asyncio.to_thread(stack.envoy.admin, "/clusters")
        per_host = {
            line.split("::")[1]: int(line.split("::")[3])
            for line in clusters.splitlines()
            if line.startswith("fanout_svc::") and "::rq_total::" in line
        }
        assert sorted(per_host) == sorted(stack.backends["fanout_svc"])
        assert all(n >= 1 for n in per_host.values()), per_host

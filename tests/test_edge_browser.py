"""The browser path through a real Envoy and the real mesh: Watch over grpc-web
and over the Connect protocol (raw HTTP/1.1, as a browser's fetch sends it),
unary calls over Connect, CORS preflights, the dev login, and a drain that
reaches a browser's stream as Reconnect."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import jwt
import pytest
from nearby.v1 import friend_service_pb2 as fpb
from nearby.v1 import friend_service_pb2_grpc as fpb_grpc
from nearby.v1 import geo_pb2
from nearby.v1 import location_service_pb2 as lpb
from nearby.v1 import nearby_service_pb2 as pb
from nearby.v1 import nearby_service_pb2_grpc as pb_grpc

from mesh.settings import Settings
from stack import infra
from stack.devtoken import DevTokenServer
from tests.support import browser
from tests.support.edge_stack import EdgeStack, edge_stack
from tests.support.fanout import ORIGIN, fast_settings, offset

PAGE = "http://localhost:5173"
OTHER = "http://evil.example"
WATCH = "/nearby.v1.NearbyService/Watch"
REPORT = "/nearby.v1.LocationService/ReportLocation"


@pytest.fixture(scope="module")
def browser_settings(redis_server: infra.RedisServer, pg_admin_url: str) -> Iterator[Settings]:
    """One database for the module's stack (tests use fresh user ids)."""
    name = f"nearby_browser_{uuid.uuid4().hex[:12]}"
    infra.create_database(pg_admin_url, name)
    base = Settings(redis_url=redis_server.url, database_url=infra.database_url(pg_admin_url, name))
    yield fast_settings(base)
    infra.drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
async def stack(browser_settings: Settings) -> AsyncIterator[EdgeStack]:
    port = infra.free_port()
    edge = {"cors_origins": (PAGE,), "dev_token": f"127.0.0.1:{port}"}
    async with edge_stack(browser_settings, edge=edge) as s:
        server = DevTokenServer(s.key, s.settings, port).start()
        try:
            yield s
        finally:
            await asyncio.to_thread(server.stop)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def dev_login(stack: EdgeStack, user_id: str, **extra: object) -> dict[str, object]:
    reply, doc = await asyncio.to_thread(
        browser.post_json, stack.envoy_addr, "/dev/token", {"user_id": user_id, **extra}, PAGE
    )
    assert reply.status == 200, reply.body
    return doc


async def dev_token(stack: EdgeStack, user_id: str) -> str:
    return str((await dev_login(stack, user_id))["token"])


async def befriend(stack: EdgeStack, a: str, b: str) -> None:
    ch = stack.channel()
    try:
        friends = fpb_grpc.FriendServiceStub(ch)
        await friends.SendFriendRequest(
            fpb.SendFriendRequestRequest(to_user_id=b), metadata=stack.auth(a)
        )
        await friends.AcceptFriendRequest(
            fpb.AcceptFriendRequestRequest(from_user_id=a), metadata=stack.auth(b)
        )
    finally:
        await ch.close()


def connect_report(addr: str, token: str, lat: float, lng: float) -> browser.Reply:
    """LocationService.ReportLocation over the Connect protocol (unary, binary)."""
    msg = lpb.ReportLocationRequest(position=geo_pb2.LatLng(latitude=lat, longitude=lng))
    headers = {**browser.CONNECT_UNARY, "authorization": f"Bearer {token}", "origin": PAGE}
    return browser.request(addr, "POST", REPORT, headers, msg.SerializeToString())


def watch(addr: str, headers: dict[str, str], token: str | None) -> browser.ServerStream:
    auth = {"authorization": f"Bearer {token}"} if token else {}
    return browser.open_stream(
        addr, WATCH, {**headers, **auth, "origin": PAGE}, pb.WatchRequest().SerializeToString()
    )


def next_message(stream: browser.ServerStream) -> pb.WatchResponse | browser.Frame | None:
    """The next WatchResponse, or the closing frame (trailers / end of stream)."""
    frame = stream.next()
    if frame is None or frame.flags:
        return frame
    return pb.WatchResponse.FromString(frame.data)


def until_kind(stream: browser.ServerStream, kind: str) -> pb.WatchResponse:
    while True:
        msg = next_message(stream)
        assert isinstance(msg, pb.WatchResponse), f"stream ended before a {kind}: {msg}"
        if msg.WhichOneof("kind") == kind:
            return msg


async def test_cors_grants_the_allowed_origin_only(stack: EdgeStack) -> None:
    for path in (WATCH, REPORT, "/dev/token"):
        ok = await asyncio.to_thread(browser.preflight, stack.envoy_addr, path, PAGE)
        assert ok.status == 200
        assert ok.headers.get("access-control-allow-origin") == PAGE
        assert "authorization" in ok.headers.get("access-control-allow-headers", "")
        assert "POST" in ok.headers.get("access-control-allow-methods", "")
        denied = await asyncio.to_thread(browser.preflight, stack.envoy_addr, path, OTHER)
        assert "access-control-allow-origin" not in denied.headers
    # the call itself: the page may read the reply (and the gRPC status headers)
    token = stack.token(await stack.create_user(uid("cors")))
    ok = await asyncio.to_thread(connect_report, stack.envoy_addr, token, *ORIGIN)
    assert ok.status == 200
    assert ok.headers.get("access-control-allow-origin") == PAGE
    assert "grpc-status" in ok.headers.get("access-control-expose-headers", "")
    other = await asyncio.to_thread(
        browser.request,
        stack.envoy_addr,
        "POST",
        REPORT,
        {**browser.CONNECT_UNARY, "authorization": f"Bearer {token}", "origin": OTHER},
        lpb.ReportLocationRequest(
            position=geo_pb2.LatLng(latitude=ORIGIN[0], longitude=ORIGIN[1])
        ).SerializeToString(),
    )
    assert "access-control-allow-origin" not in other.headers


async def test_dev_login_creates_the_user_and_never_mints_admin(stack: EdgeStack) -> None:
    carol = uid("carol")
    doc = await dev_login(stack, carol, display_name="Carol")
    assert doc["created"] is True and doc["user_id"] == carol
    claims = jwt.decode(str(doc["token"]), options={"verify_signature": False})
    assert claims["sub"] == carol and "admin" not in claims
    assert (await dev_login(stack, carol))["created"] is False  # a second login
    # the token works through Envoy, and the user exists with its name
    ch = stack.channel()
    try:
        got = await fpb_grpc.FriendServiceStub(ch).GetUser(
            fpb.GetUserRequest(), metadata=[("authorization", f"Bearer {doc['token']}")]
        )
        assert got.user.display_name == "Carol"
        # never admin: CreateUser with a dev-login token is refused
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await fpb_grpc.FriendServiceStub(ch).CreateUser(
                fpb.CreateUserRequest(user_id=uid("x"), display_name="X"),
                metadata=[("authorization", f"Bearer {doc['token']}")],
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await ch.close()
    for bad, words in (
        ({"user_id": carol, "admin": True}, "never mints admin"),
        ({"user_id": "no spaces"}, "user_id"),
        ({"user_id": carol, "ttl_s": 0}, "ttl_s"),
    ):
        reply, body = await asyncio.to_thread(
            browser.post_json, stack.envoy_addr, "/dev/token", bad, PAGE
        )
        assert reply.status == 400 and words in body["error"], body
        assert "token" not in body
    # a short-lived token, for pages that test their expiry handling
    short = await dev_login(stack, carol, ttl_s=5)
    claims = jwt.decode(str(short["token"]), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 5


async def test_watch_over_grpc_web_and_connect(stack: EdgeStack) -> None:
    a, b, nobody = uid("a"), uid("b"), uid("nobody")
    ta, tb, tn = [await dev_token(stack, u) for u in (a, b, nobody)]
    await befriend(stack, a, b)
    addr = stack.envoy_addr
    for token, pos in ((ta, ORIGIN), (tb, offset(*ORIGIN, 1500))):
        reply = await asyncio.to_thread(connect_report, addr, token, *pos)
        assert reply.status == 200, reply.body
        assert reply.headers["content-type"] == "application/proto"
        assert lpb.ReportLocationResponse.FromString(reply.body).location.position.latitude
    web = await asyncio.to_thread(watch, addr, browser.GRPC_WEB, ta)
    con = await asyncio.to_thread(watch, addr, browser.CONNECT_STREAM, ta)
    try:
        assert web.status == 200 and con.status == 200
        assert con.headers["content-type"] == "application/connect+proto"
        for stream in (web, con):
            snap = (await asyncio.to_thread(until_kind, stream, "snapshot")).snapshot
            assert [f.user_id for f in snap.friends] == [b]
            assert snap.friends[0].distance_meters == pytest.approx(1500, abs=5)
        # B moves (a unary Connect call): both of A's browser streams see it
        await asyncio.to_thread(connect_report, addr, tb, *offset(*ORIGIN, 700))
        for stream in (web, con):
            msg = await asyncio.to_thread(until_kind, stream, "events")
            upd = msg.events.events[0].friend_update.friend
            assert upd.user_id == b and upd.distance_meters == pytest.approx(700, abs=5)
        # A moves far away: B leaves A's list (A's own report moved A's stream)
        await asyncio.to_thread(connect_report, addr, ta, *offset(*ORIGIN, 30_000))
        for stream in (web, con):
            msg = await asyncio.to_thread(until_kind, stream, "events")
            gone = msg.events.events[0].friend_gone
            assert gone.user_id == b and gone.reason == pb.FRIEND_GONE_REASON_OUT_OF_RANGE
    finally:
        web.close()
        con.close()

    # no location reported first: FAILED_PRECONDITION, in each protocol's words
    s = await asyncio.to_thread(watch, addr, browser.GRPC_WEB, tn)
    assert s.status == 200 and s.headers.get("grpc-status") == "9"  # trailers-only
    assert "ReportLocation" in s.headers.get("grpc-message", "")
    s.close()
    s = await asyncio.to_thread(watch, addr, browser.CONNECT_STREAM, tn)
    end = await asyncio.to_thread(s.next)
    s.close()
    assert end is not None and end.flags == 0x02  # Connect's end-of-stream message
    error = json.loads(end.data)["error"]
    assert error["code"] == "failed_precondition" and "ReportLocation" in error["message"]
    ch = stack.channel()
    try:
        call = pb_grpc.NearbyServiceStub(ch).Watch(
            pb.WatchRequest(), metadata=[("authorization", f"Bearer {tn}")]
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await ch.close()
    # no token: 401, which grpc-web and Connect clients read as UNAUTHENTICATED
    # (with the CORS grant: the page can read it and show a sign-in error)
    for headers in (browser.GRPC_WEB, browser.CONNECT_STREAM):
        s = await asyncio.to_thread(watch, addr, headers, None)
        s.close()
        assert s.status == 401
        assert s.headers.get("access-control-allow-origin") == PAGE


async def test_connect_unary_errors_and_json_refused(stack: EdgeStack) -> None:
    """A unary error over the Connect protocol is JSON with an HTTP status; the
    backends speak binary protobuf only, so a JSON request is refused at the
    edge, saying what to send (it would fail as UNKNOWN there)."""
    token = stack.token(uid("json"))
    bad = await asyncio.to_thread(connect_report, stack.envoy_addr, token, 95.0, 0.0)
    assert bad.status == 400 and bad.headers["content-type"] == "application/json"
    error = json.loads(bad.body)
    assert error["code"] == "invalid_argument"
    assert error["message"].startswith("position.latitude")
    assert bad.headers.get("access-control-allow-origin") == PAGE
    for content_type in ("application/json", "application/connect+json"):
        reply = await asyncio.to_thread(
            browser.request,
            stack.envoy_addr,
            "POST",
            REPORT,
            {
                "content-type": content_type,
                "connect-protocol-version": "1",
                "authorization": f"Bearer {token}",
                "origin": PAGE,
            },
            b'{"position": {"latitude": 52.5, "longitude": 13.4}}',
        )
        assert reply.status == 415
        error = json.loads(reply.body)
        assert error["code"] == "invalid_argument"
        assert "useBinaryFormat" in error["message"]


async def test_drain_reaches_a_browser_stream_as_reconnect(stack: EdgeStack) -> None:
    """Last in the module: it stops the fan-out."""
    a = uid("a")
    token = await dev_token(stack, a)
    await asyncio.to_thread(connect_report, stack.envoy_addr, token, *ORIGIN)
    web = await asyncio.to_thread(watch, stack.envoy_addr, browser.GRPC_WEB, token)
    con = await asyncio.to_thread(watch, stack.envoy_addr, browser.CONNECT_STREAM, token)
    try:
        for stream in (web, con):
            await asyncio.to_thread(until_kind, stream, "snapshot")
        await stack.stop_fanout(0)
        for stream in (web, con):
            msg = await asyncio.to_thread(until_kind, stream, "reconnect")
            assert msg.reconnect.retry_after.ToTimedelta().total_seconds() >= 0
        end = await asyncio.to_thread(web.next)
        assert end is not None and end.flags & 0x80
        assert browser.grpc_web_trailers(end)["grpc-status"] == "14"  # UNAVAILABLE
        end = await asyncio.to_thread(con.next)
        assert end is not None and end.flags == 0x02
        assert json.loads(end.data)["error"]["code"] == "unavailable"
    finally:
        web.close()
        con.close()

"""friend_svc against a real Postgres and Redis: every RPC and error case."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nearby.v1 import friend_service_pb2 as pb2
from nearby.v1 import friend_service_pb2_grpc as pb2_grpc
from prometheus_client import REGISTRY

from friend_svc.app import FriendApp
from friend_svc.inbox import Inbox
from mesh import db, keys
from mesh.internal.v1 import events_pb2
from mesh.internal.v1 import friend_graph_service_pb2 as graph_pb2
from mesh.internal.v1 import friend_graph_service_pb2_grpc as graph_grpc
from mesh.redis import RedisEngine
from mesh.settings import Settings
from stack import infra
from tests.support.redis import subscription
from tests.support.services import running

ADMIN = (("x-nearby-admin", "true"),)
INCOMING = pb2.FRIEND_REQUEST_DIRECTION_INCOMING
OUTGOING = pb2.FRIEND_REQUEST_DIRECTION_OUTGOING
Code = grpc.StatusCode


def as_(user_id: str) -> tuple[tuple[str, str], ...]:
    return (("x-nearby-user-id", user_id),)


@dataclass
class Client:
    stub: Any
    graph: Any
    database_url: str

    async def create(self, user_id: str, name: str | None = None) -> None:
        await self.stub.CreateUser(
            pb2.CreateUserRequest(user_id=user_id, display_name=name or user_id.title()),
            metadata=ADMIN,
        )

    async def send(self, a: str, b: str) -> Any:
        return await self.stub.SendFriendRequest(
            pb2.SendFriendRequestRequest(to_user_id=b), metadata=as_(a)
        )

    async def accept(self, me: str, from_id: str) -> Any:
        return await self.stub.AcceptFriendRequest(
            pb2.AcceptFriendRequestRequest(from_user_id=from_id), metadata=as_(me)
        )

    async def befriend(self, a: str, b: str) -> None:
        await self.send(a, b)
        await self.accept(b, a)

    async def friend_ids(self, me: str) -> list[str]:
        resp = await self.stub.ListFriends(pb2.ListFriendsRequest(), metadata=as_(me))
        assert not resp.next_page_token
        return [f.user.user_id for f in resp.friends]

    async def requests(
        self, me: str, direction: pb2.FriendRequestDirection = INCOMING
    ) -> list[tuple[str, str]]:
        resp = await self.stub.ListFriendRequests(
            pb2.ListFriendRequestsRequest(direction=direction), metadata=as_(me)
        )
        return [(r.from_user.user_id, r.to_user.user_id) for r in resp.friend_requests]

    async def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the friend tables, to prove a failed call changed nothing."""
        out = {}
        async with await psycopg.AsyncConnection.connect(self.database_url) as conn:
            for table, order in (
                ("users", "user_id"),
                ("friend_requests", "from_id, to_id"),
                ("friendships", "user_id, friend_id"),
            ):
                cur = await conn.execute(f"SELECT * FROM {table} ORDER BY {order}")
                out[table] = await cur.fetchall()
        return out


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Client]:
    """friend_svc in-process, and a client of it."""
    async with running(FriendApp(settings)) as addr, grpc.aio.insecure_channel(addr) as ch:
        yield Client(
            pb2_grpc.FriendServiceStub(ch),
            graph_grpc.FriendGraphServiceStub(ch),
            settings.database_url,
        )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with serve(settings) as c:
        yield c


async def expect(code: grpc.StatusCode, call: Awaitable[Any], reason: str = "") -> str:
    """Assert the call fails with `code` (and ErrorInfo `reason`); returns the message."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    if reason:
        status = rpc_status.from_call(err.value)  # type: ignore[arg-type]
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert info.reason == reason
    return err.value.details() or ""


@contextlib.asynccontextmanager
async def gated(database_url: str, table: str) -> AsyncIterator[Callable[[int], Awaitable[None]]]:
    """Hold a SHARE lock on `table` (it blocks writes to it) while concurrent calls
    pile up behind it, so that they really overlap; released on exit.

    Yields `wait_for(n)`: returns once n other sessions are waiting for a lock.
    """
    async with await psycopg.AsyncConnection.connect(database_url) as conn, conn.transaction():
        await conn.execute(f"LOCK TABLE {table} IN SHARE MODE")
        watcher = await psycopg.AsyncConnection.connect(database_url, autocommit=True)

        async def wait_for(n: int) -> None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                cur = await watcher.execute(
                    """SELECT count(*) FROM pg_stat_activity
                           WHERE datname = current_database() AND wait_event_type = 'Lock'"""
                )
                row = await cur.fetchone()
                if row is not None and row[0] >= n:
                    return
                await asyncio.sleep(0.02)
            raise AssertionError(f"{n} calls never queued up behind the lock")

        try:
            yield wait_for
        finally:
            await watcher.close()


# --- users ---------------------------------------------------------------


async def test_create_and_get_user(client: Client) -> None:
    resp = await client.stub.CreateUser(
        pb2.CreateUserRequest(user_id="alice", display_name="Alice 🌍"), metadata=ADMIN
    )
    assert resp.user.user_id == "alice" and resp.user.display_name == "Alice 🌍"
    assert abs(resp.user.create_time.seconds - time.time()) < 60
    got = await client.stub.GetUser(pb2.GetUserRequest(user_id="alice"), metadata=as_("bob"))
    assert got.user == resp.user
    me = await client.stub.GetUser(pb2.GetUserRequest(), metadata=as_("alice"))
    assert me.user == resp.user


async def test_create_user_generates_an_id_when_empty(client: Client) -> None:
    a = await client.stub.CreateUser(pb2.CreateUserRequest(display_name="X"), metadata=ADMIN)
    b = await client.stub.CreateUser(pb2.CreateUserRequest(display_name="X"), metadata=ADMIN)
    assert len(a.user.user_id) == 32 and a.user.user_id != b.user.user_id
    got = await client.stub.GetUser(
        pb2.GetUserRequest(user_id=a.user.user_id), metadata=as_("someone")
    )
    assert got.user.display_name == "X"


async def test_create_user_errors(client: Client) -> None:
    await client.create("alice", "Alice")
    before = await client.snapshot()
    msg = await expect(
        Code.ALREADY_EXISTS,
        client.stub.CreateUser(
            pb2.CreateUserRequest(user_id="alice", display_name="Other"), metadata=ADMIN
        ),
        "USER_ALREADY_EXISTS",
    )
    assert "alice" in msg
    bad = [
        ("al ice", "Ok", "user_id"),
        ("x" * 65, "Ok", "user_id"),
        ("bob", "", "display_name"),
        ("bob", "   ", "display_name"),
        ("bob", "x" * 101, "display_name"),
        ("bob", "two\nlines", "display_name"),
        ("bob", "nul\x00", "display_name"),
    ]
    for user_id, name, field in bad:
        msg = await expect(
            Code.INVALID_ARGUMENT,
            client.stub.CreateUser(
                pb2.CreateUserRequest(user_id=user_id, display_name=name), metadata=ADMIN
            ),
            "INVALID_FIELD",
        )
        assert msg.startswith(f"{field}:"), msg
    await expect(
        Code.PERMISSION_DENIED,
        client.stub.CreateUser(
            pb2.CreateUserRequest(user_id="bob", display_name="Bob"), metadata=as_("alice")
        ),
        "NOT_ADMIN",
    )
    await expect(
        Code.PERMISSION_DENIED,
        client.stub.CreateUser(pb2.CreateUserRequest(user_id="bob", display_name="Bob")),
    )
    assert await client.snapshot() == before
    # the limits themselves are fine
    resp = await client.stub.CreateUser(
        pb2.CreateUserRequest(user_id="b" * 64, display_name="n" * 100), metadata=ADMIN
    )
    assert resp.user.display_name == "n" * 100


async def test_get_user_errors(client: Client) -> None:
    msg = await expect(
        Code.NOT_FOUND,
        client.stub.GetUser(pb2.GetUserRequest(user_id="ghost"), metadata=as_("alice")),
        "USER_NOT_FOUND",
    )
    assert "ghost" in msg
    await expect(
        Code.NOT_FOUND,
        client.stub.GetUser(pb2.GetUserRequest(), metadata=as_("alice")),
        "CALLER_NOT_FOUND",
    )
    msg = await expect(
        Code.INVALID_ARGUMENT,
        client.stub.GetUser(pb2.GetUserRequest(user_id="no/slash"), metadata=as_("alice")),
    )
    assert msg.startswith("user_id:")


async def test_every_call_but_create_user_needs_an_identity(client: Client) -> None:
    await client.create("alice")
    calls = [
        client.stub.GetUser(pb2.GetUserRequest(user_id="alice")),
        client.stub.SendFriendRequest(pb2.SendFriendRequestRequest(to_user_id="alice")),
        client.stub.AcceptFriendRequest(pb2.AcceptFriendRequestRequest(from_user_id="alice")),
        client.stub.DeclineFriendRequest(pb2.DeclineFriendRequestRequest(from_user_id="alice")),
        client.stub.ListFriendRequests(pb2.ListFriendRequestsRequest()),
        client.stub.RemoveFriend(pb2.RemoveFriendRequest(friend_user_id="alice")),
        client.stub.ListFriends(pb2.ListFriendsRequest()),
        # an admin claim is not an identity
        client.stub.ListFriends(pb2.ListFriendsRequest(), metadata=ADMIN),
    ]
    for call in calls:
        await expect(Code.UNAUTHENTICATED, call, "MISSING_IDENTITY")


# --- friend requests -------------------------------------------------------


async def test_send_accept_and_list(client: Client) -> None:
    await client.create("alice", "Alice")
    await client.create("bob", "Bob")
    sent = await client.send("alice", "bob")
    req = sent.friend_request
    assert (req.from_user.user_id, req.from_user.display_name) == ("alice", "Alice")
    assert (req.to_user.user_id, req.to_user.display_name) == ("bob", "Bob")
    assert req.create_time.seconds > 0
    assert await client.requests("bob") == [("alice", "bob")]
    assert await client.requests("bob", pb2.FRIEND_REQUEST_DIRECTION_UNSPECIFIED) == [
        ("alice", "bob")
    ]
    assert await client.requests("alice", OUTGOING) == [("alice", "bob")]
    assert await client.requests("alice") == []
    assert await client.requests("bob", OUTGOING) == []

    accepted = await client.accept("bob", "alice")
    assert accepted.friend.user.user_id == "alice"
    assert accepted.friend.user.display_name == "Alice"
    assert accepted.friend.friends_since.seconds >= req.create_time.seconds
    assert await client.friend_ids("alice") == ["bob"]
    assert await client.friend_ids("bob") == ["alice"]
    listed = await client.stub.ListFriends(pb2.ListFriendsRequest(), metadata=as_("alice"))
    assert listed.friends[0].user.display_name == "Bob"
    assert listed.friends[0].friends_since == accepted.friend.friends_since
    assert await client.requests("bob") == []
    assert await client.requests("alice", OUTGOING) == []


async def test_send_friend_request_errors(client: Client) -> None:
    for uid in ("alice", "bob", "carol", "dave"):
        await client.create(uid)
    await client.befriend("alice", "carol")
    await client.send("alice", "bob")
    await client.send("dave", "alice")
    before = await client.snapshot()

    await expect(Code.NOT_FOUND, client.send("alice", "ghost"), "USER_NOT_FOUND")
    msg = await expect(Code.NOT_FOUND, client.send("ghost", "alice"), "CALLER_NOT_FOUND")
    assert "CreateUser" in msg
    await expect(Code.INVALID_ARGUMENT, client.send("alice", "alice"), "SELF_FRIEND_REQUEST")
    msg = await expect(Code.INVALID_ARGUMENT, client.send("alice", ""), "INVALID_FIELD")
    assert msg.startswith("to_user_id:")
    await expect(Code.INVALID_ARGUMENT, client.send("alice", "b c"), "INVALID_FIELD")
    await expect(Code.ALREADY_EXISTS, client.send("alice", "bob"), "FRIEND_REQUEST_ALREADY_EXISTS")
    await expect(Code.FAILED_PRECONDITION, client.send("alice", "carol"), "ALREADY_FRIENDS")
    await expect(Code.FAILED_PRECONDITION, client.send("carol", "alice"), "ALREADY_FRIENDS")
    msg = await expect(
        Code.FAILED_PRECONDITION, client.send("alice", "dave"), "REVERSE_REQUEST_PENDING"
    )
    assert "accept" in msg.lower()
    assert await client.snapshot() == before


async def test_accept_errors(client: Client) -> None:
    for uid in ("alice", "bob", "carol"):
        await client.create(uid)
    await client.send("alice", "bob")
    before = await client.snapshot()
    # the request goes from alice to bob: only bob can accept it
    await expect(Code.NOT_FOUND, client.accept("alice", "bob"), "FRIEND_REQUEST_NOT_FOUND")
    await expect(Code.NOT_FOUND, client.accept("bob", "carol"), "FRIEND_REQUEST_NOT_FOUND")
    await expect(Code.NOT_FOUND, client.accept("bob", "ghost"), "USER_NOT_FOUND")
    await expect(Code.NOT_FOUND, client.accept("ghost", "alice"), "CALLER_NOT_FOUND")
    await expect(Code.INVALID_ARGUMENT, client.accept("bob", "bob"), "INVALID_FIELD")
    await expect(Code.INVALID_ARGUMENT, client.accept("bob", ""), "INVALID_FIELD")
    assert await client.snapshot() == before
    await client.accept("bob", "alice")
    await expect(Code.NOT_FOUND, client.accept("bob", "alice"), "FRIEND_REQUEST_NOT_FOUND")


async def test_decline(client: Client) -> None:
    for uid in ("alice", "bob"):
        await client.create(uid)
    await client.send("alice", "bob")
    decline = client.stub.DeclineFriendRequest
    await expect(
        Code.NOT_FOUND,
        decline(pb2.DeclineFriendRequestRequest(from_user_id="bob"), metadata=as_("alice")),
        "FRIEND_REQUEST_NOT_FOUND",
    )
    await expect(
        Code.INVALID_ARGUMENT,
        decline(pb2.DeclineFriendRequestRequest(from_user_id="a b"), metadata=as_("bob")),
        "INVALID_FIELD",
    )
    assert await client.requests("bob") == [("alice", "bob")]
    await decline(pb2.DeclineFriendRequestRequest(from_user_id="alice"), metadata=as_("bob"))
    assert await client.requests("bob") == []
    assert await client.requests("alice", OUTGOING) == []
    assert await client.friend_ids("alice") == []
    await expect(
        Code.NOT_FOUND,
        decline(pb2.DeclineFriendRequestRequest(from_user_id="alice"), metadata=as_("bob")),
        "FRIEND_REQUEST_NOT_FOUND",
    )
    # declined requests may be sent again, in either direction
    await client.send("bob", "alice")
    assert await client.requests("alice") == [("bob", "alice")]


async def test_list_friend_requests_errors(client: Client) -> None:
    await client.create("alice")
    lst = client.stub.ListFriendRequests
    msg = await expect(
        Code.INVALID_ARGUMENT,
        lst(pb2.ListFriendRequestsRequest(page_size=-1), metadata=as_("alice")),
        "INVALID_FIELD",
    )
    assert msg.startswith("page_size:")
    msg = await expect(
        Code.INVALID_ARGUMENT,
        lst(pb2.ListFriendRequestsRequest(page_token="garbage!"), metadata=as_("alice")),
        "INVALID_FIELD",
    )
    assert msg.startswith("page_token:")
    await expect(
        Code.INVALID_ARGUMENT,
        lst(pb2.ListFriendRequestsRequest(direction=7), metadata=as_("alice")),  # type: ignore[arg-type]
        "INVALID_FIELD",
    )
    await expect(
        Code.NOT_FOUND,
        lst(pb2.ListFriendRequestsRequest(), metadata=as_("ghost")),
        "CALLER_NOT_FOUND",
    )


# --- friendships ---------------------------------------------------------


async def test_remove_friend(client: Client) -> None:
    for uid in ("alice", "bob", "carol"):
        await client.create(uid)
    await client.befriend("alice", "bob")
    await client.befriend("alice", "carol")
    remove = client.stub.RemoveFriend
    before = await client.snapshot()
    await expect(
        Code.NOT_FOUND,
        remove(pb2.RemoveFriendRequest(friend_user_id="carol"), metadata=as_("bob")),
        "NOT_FRIENDS",
    )
    await expect(
        Code.NOT_FOUND,
        remove(pb2.RemoveFriendRequest(friend_user_id="ghost"), metadata=as_("bob")),
        "USER_NOT_FOUND",
    )
    await expect(
        Code.INVALID_ARGUMENT,
        remove(pb2.RemoveFriendRequest(friend_user_id="bob"), metadata=as_("bob")),
        "INVALID_FIELD",
    )
    assert await client.snapshot() == before
    await remove(pb2.RemoveFriendRequest(friend_user_id="alice"), metadata=as_("bob"))
    assert await client.friend_ids("alice") == ["carol"]
    assert await client.friend_ids("bob") == []
    await expect(
        Code.NOT_FOUND,
        remove(pb2.RemoveFriendRequest(friend_user_id="bob"), metadata=as_("alice")),
        "NOT_FRIENDS",
    )
    # they can become friends again
    await client.befriend("bob", "alice")
    assert await client.friend_ids("bob") == ["alice"]


async def test_list_friends_errors(client: Client) -> None:
    await client.create("alice")
    assert await client.friend_ids("alice") == []
    lst = client.stub.ListFriends
    await expect(
        Code.INVALID_ARGUMENT,
        lst(pb2.ListFriendsRequest(page_size=-5), metadata=as_("alice")),
        "INVALID_FIELD",
    )
    await expect(
        Code.INVALID_ARGUMENT,
        lst(pb2.ListFriendsRequest(page_token="not-a-token"), metadata=as_("alice")),
        "INVALID_FIELD",
    )
    await expect(
        Code.NOT_FOUND, lst(pb2.ListFriendsRequest(), metadata=as_("ghost")), "CALLER_NOT_FOUND"
    )


async def test_list_friends_pages(client: Client) -> None:
    await client.create("alice")
    ids = [f"f{i:02d}" for i in range(7)]
    for uid in reversed(ids):
        await client.create(uid, f"Friend {uid}")
        await client.befriend(uid, "alice")
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        resp = await client.stub.ListFriends(
            pb2.ListFriendsRequest(page_size=3, page_token=token), metadata=as_("alice")
        )
        pages += 1
        assert len(resp.friends) == (3 if resp.next_page_token else 1)
        seen += [f.user.user_id for f in resp.friends]
        assert all(f.user.display_name == f"Friend {f.user.user_id}" for f in resp.friends)
        token = resp.next_page_token
        if not token:
            break
    assert pages == 3 and seen == ids
    # page_size 0 → the default (50): everything at once; huge → capped, still fine
    for size in (0, 100_000):
        resp = await client.stub.ListFriends(
            pb2.ListFriendsRequest(page_size=size), metadata=as_("alice")
        )
        assert [f.user.user_id for f in resp.friends] == ids and not resp.next_page_token
    # an exact multiple of the page size ends with an empty token, not an empty page
    resp = await client.stub.ListFriends(pb2.ListFriendsRequest(page_size=7), metadata=as_("alice"))
    assert len(resp.friends) == 7 and not resp.next_page_token


@pytest.mark.parametrize("direction", [INCOMING, OUTGOING])
async def test_list_friend_requests_pages(
    client: Client, direction: pb2.FriendRequestDirection
) -> None:
    await client.create("alice")
    others = [f"u{i}" for i in range(7)]
    for uid in others:
        await client.create(uid)
        if direction == INCOMING:
            await client.send(uid, "alice")
        else:
            await client.send("alice", uid)
    seen: list[Any] = []
    token = ""
    pages = 0
    while True:
        resp = await client.stub.ListFriendRequests(
            pb2.ListFriendRequestsRequest(direction=direction, page_size=3, page_token=token),
            metadata=as_("alice"),
        )
        pages += 1
        seen += list(resp.friend_requests)
        token = resp.next_page_token
        if not token:
            break
    assert pages == 3
    other = [r.from_user.user_id if direction == INCOMING else r.to_user.user_id for r in seen]
    assert other == list(reversed(others))  # newest first
    times = [r.create_time.ToDatetime() for r in seen]
    assert times == sorted(times, reverse=True)
    # a token of one direction is refused by the other
    first = await client.stub.ListFriendRequests(
        pb2.ListFriendRequestsRequest(direction=direction, page_size=1), metadata=as_("alice")
    )
    flipped = OUTGOING if direction == INCOMING else INCOMING
    await expect(
        Code.INVALID_ARGUMENT,
        client.stub.ListFriendRequests(
            pb2.ListFriendRequestsRequest(direction=flipped, page_token=first.next_page_token),
            metadata=as_("alice"),
        ),
        "INVALID_FIELD",
    )


async def test_list_all_friends(client: Client) -> None:
    for uid, name in (("alice", "Alice"), ("zed", "Zed"), ("bob", "Bob"), ("carol", "Carol")):
        await client.create(uid, name)
    await client.befriend("zed", "alice")
    await client.befriend("alice", "bob")
    resp = await client.graph.ListAllFriends(graph_pb2.ListAllFriendsRequest(user_id="alice"))
    assert [(f.user_id, f.display_name) for f in resp.friends] == [("bob", "Bob"), ("zed", "Zed")]
    resp = await client.graph.ListAllFriends(graph_pb2.ListAllFriendsRequest(user_id="carol"))
    assert list(resp.friends) == []
    await expect(
        Code.NOT_FOUND,
        client.graph.ListAllFriends(graph_pb2.ListAllFriendsRequest(user_id="ghost")),
        "USER_NOT_FOUND",
    )
    await expect(
        Code.INVALID_ARGUMENT,
        client.graph.ListAllFriends(graph_pb2.ListAllFriendsRequest(user_id="")),
        "INVALID_FIELD",
    )


# --- the friend cap and concurrency ---------------------------------------


async def test_friend_cap_on_both_sides(settings: Settings) -> None:
    async with serve(settings.replace(friend_cap=2)) as client:
        for uid in ("hub", "a", "b", "c", "d"):
            await client.create(uid)
        await client.befriend("a", "hub")
        await client.befriend("b", "hub")  # hub is at the cap
        await client.send("c", "hub")
        await client.send("hub", "d")
        before = await client.snapshot()
        msg = await expect(
            Code.FAILED_PRECONDITION, client.accept("hub", "c"), "FRIEND_CAP_REACHED"
        )
        assert "you already have 2 friends" in msg
        msg = await expect(
            Code.FAILED_PRECONDITION, client.accept("d", "hub"), "FRIEND_CAP_REACHED"
        )
        assert "'hub' already has 2 friends" in msg
        # nothing changed: the requests are still pending
        assert await client.snapshot() == before
        assert await client.requests("hub") == [("c", "hub")]
        # room again after a removal
        await client.stub.RemoveFriend(
            pb2.RemoveFriendRequest(friend_user_id="a"), metadata=as_("hub")
        )
        await client.accept("hub", "c")
        assert await client.friend_ids("hub") == ["b", "c"]


async def test_concurrent_accepts_respect_the_cap(settings: Settings) -> None:
    """Two users accept the same requester's requests at once; one slot is left."""
    async with serve(settings.replace(friend_cap=2)) as client:
        for uid in ("hub", "a", "x", "y"):
            await client.create(uid)
        await client.befriend("a", "hub")
        await client.send("hub", "x")
        await client.send("hub", "y")
        async with gated(client.database_url, "friendships") as wait_for:
            calls = [asyncio.ensure_future(client.accept(u, "hub")) for u in ("x", "y")]
            await wait_for(2)
        results = await asyncio.gather(*calls, return_exceptions=True)
        errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(errors) == 1 and errors[0].code() == Code.FAILED_PRECONDITION
        assert len(await client.friend_ids("hub")) == 2


async def test_concurrent_accept_of_one_request_makes_one_friendship(client: Client) -> None:
    for uid in ("alice", "bob"):
        await client.create(uid)
    for _ in range(3):
        await client.send("alice", "bob")
        async with gated(client.database_url, "friendships") as wait_for:
            calls = [asyncio.ensure_future(client.accept("bob", "alice")) for _ in range(2)]
            await wait_for(2)
        results = await asyncio.gather(*calls, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1, results
        assert isinstance(errors[0], grpc.aio.AioRpcError)
        assert errors[0].code() == Code.NOT_FOUND
        snap = await client.snapshot()
        assert [row[:2] for row in snap["friendships"]] == [("alice", "bob"), ("bob", "alice")]
        assert snap["friend_requests"] == []
        await client.stub.RemoveFriend(
            pb2.RemoveFriendRequest(friend_user_id="alice"), metadata=as_("bob")
        )


async def test_crossing_requests_leave_one_pending(client: Client) -> None:
    for uid in ("alice", "bob"):
        await client.create(uid)
    async with gated(client.database_url, "friend_requests") as wait_for:
        calls = [
            asyncio.ensure_future(client.send("alice", "bob")),
            asyncio.ensure_future(client.send("bob", "alice")),
        ]
        await wait_for(2)
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(errors) == 1 and errors[0].code() == Code.FAILED_PRECONDITION
    snap = await client.snapshot()
    assert len(snap["friend_requests"]) == 1


# --- inbox events ----------------------------------------------------------


async def _next_events(pubsub: Any, count: int) -> dict[str, events_pb2.InboxEvent]:
    """The next `count` messages (in order), by channel; fails if one repeats."""
    got: dict[str, events_pb2.InboxEvent] = {}
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if msg is not None:
            channel = msg["channel"].decode()
            assert channel not in got, "more events than expected"
            got[channel] = events_pb2.InboxEvent.FromString(msg["data"])
    return got


@pytest.fixture
async def client_on_engine(engine_settings: Settings) -> AsyncIterator[Client]:
    """`client` on each Redis engine in turn."""
    async with serve(engine_settings) as c:
        yield c


async def test_inbox_events_on_accept_and_remove(
    client_on_engine: Client, engine_client: Any
) -> None:
    client = client_on_engine
    await client.create("alice", "Alice")
    await client.create("bob", "Bob")
    a, b = keys.inbox_channel("alice"), keys.inbox_channel("bob")
    pubsub = subscription(engine_client)
    try:
        await pubsub.subscribe(a, b)
        await client.send("alice", "bob")
        await client.accept("bob", "alice")
        events = await _next_events(pubsub, 2)
        assert set(events) == {a, b}
        assert events[a].WhichOneof("kind") == "friend_added"
        assert events[a].friend_added.friend_id == "bob"
        assert events[a].friend_added.display_name == "Bob"
        assert events[b].friend_added.friend_id == "alice"
        assert events[b].friend_added.display_name == "Alice"
        assert abs(events[a].published_at_ms - time.time() * 1000) < 60_000

        # failed calls publish nothing (else the next events would not be removals)
        await expect(Code.NOT_FOUND, client.accept("bob", "alice"))
        await expect(Code.FAILED_PRECONDITION, client.send("bob", "alice"))

        await client.stub.RemoveFriend(
            pb2.RemoveFriendRequest(friend_user_id="bob"), metadata=as_("alice")
        )
        events = await _next_events(pubsub, 2)
        assert set(events) == {a, b}
        assert events[a].WhichOneof("kind") == "friend_removed"
        assert events[b].WhichOneof("kind") == "friend_removed"
        assert events[a].friend_removed.friend_id == "bob"
        assert events[b].friend_removed.friend_id == "alice"
    finally:
        await pubsub.aclose()


async def test_inbox_publish_failure_is_counted_not_raised() -> None:
    dead = RedisEngine(f"redis://127.0.0.1:{infra.free_port()}")
    before = REGISTRY.get_sample_value("friend_inbox_publish_failures_total") or 0
    try:
        await Inbox(dead).friends_removed("alice", "bob")
    finally:
        await dead.aclose()
    assert REGISTRY.get_sample_value("friend_inbox_publish_failures_total") == before + 2


# --- migrations ------------------------------------------------------------


async def test_migrations_are_idempotent(database_url: str) -> None:
    pool = await db.open_pool(database_url)
    try:
        first = await db.migrate(pool, "friend_svc", "friend_svc")
        assert first == [name for _, name, _ in db.migration_files("friend_svc")]
        assert await db.migrate(pool, "friend_svc", "friend_svc") == []
    finally:
        await pool.close()


async def test_migrations_from_two_replicas_at_once(database_url: str) -> None:
    pools = [await db.open_pool(database_url) for _ in range(2)]
    try:
        results = await asyncio.gather(*(db.migrate(p, "friend_svc", "friend_svc") for p in pools))
        assert sorted(len(r) for r in results) == [0, len(db.migration_files("friend_svc"))]
        async with pools[0].connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM schema_migrations WHERE component = 'friend_svc'"
            )
            row = await cur.fetchone()
            assert row is not None and row[0] == len(db.migration_files("friend_svc"))
    finally:
        for p in pools:
            await p.close()


async def test_two_apps_start_on_one_database_at_once(settings: Settings) -> None:
    async with contextlib.AsyncExitStack() as stack:
        one, two = await asyncio.gather(
            stack.enter_async_context(serve(settings)), stack.enter_async_context(serve(settings))
        )
        await one.create("alice")
        got = await two.stub.GetUser(pb2.GetUserRequest(), metadata=as_("alice"))
        assert got.user.user_id == "alice"

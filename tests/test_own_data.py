"""Own data through the real Envoy (JWT), on both Redis engines, with real
Postgres and the history writer running: DeleteUser leaves no row in any
table and no key (name or value) in Redis that names the user; the user's
live stream ends, friends' streams get UNFRIENDED; the user is gone from
every path; bad input changes nothing; DeleteLocationHistory through the
edge deletes exactly the range. Then a deletion that fails part way is
finished by a retry, or by friend_svc itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nearby.v1 import friend_service_pb2 as fpb
from nearby.v1 import friend_service_pb2_grpc as fpb_grpc
from nearby.v1 import geo_pb2
from nearby.v1 import location_service_pb2 as lpb
from nearby.v1 import location_service_pb2_grpc as lpb_grpc
from nearby.v1 import nearby_service_pb2 as pb
from nearby.v1 import nearby_service_pb2_grpc as pb_grpc
from nearby.v1 import presence_service_pb2 as ppb
from nearby.v1 import presence_service_pb2_grpc as ppb_grpc

from friend_svc.app import FriendApp
from location_svc.app import LocationApp
from mesh import keys
from mesh.clock import now_ms
from mesh.internal.v1 import user_data_service_pb2 as ud
from mesh.server import Runner
from mesh.settings import Settings
from presence_svc.app import PresenceApp
from presence_svc.flags import FlagSync
from presence_svc.service import UserDataServicer
from presence_svc.store import VisibilityStore
from stack import infra
from tests.support.edge_stack import EdgeStack, edge_stack
from tests.support.fanout import ORIGIN, Stream, fast_settings, offset, until, who
from tests.support.redis import RedisTarget, stream_lengths
from tests.support.services import running
from tests.support.traces import pg_dump, pg_traces, redis_traces, redis_values

T0 = now_ms() - 600_000  # history times: T0 + i s


def ts(i: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromMilliseconds(T0 + i * 1000)
    return t


async def expect(code: grpc.StatusCode, call: Awaitable[Any], reason: str = "") -> str:
    """The call fails with `code` (and ErrorInfo `reason`); returns its message."""
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


class Api:
    """The public API through Envoy, as any user."""

    def __init__(self, stack: EdgeStack, channel: grpc.aio.Channel) -> None:
        self.stack = stack
        self.friends = fpb_grpc.FriendServiceStub(channel)
        self.locations = lpb_grpc.LocationServiceStub(channel)
        self.presence = ppb_grpc.PresenceServiceStub(channel)
        self.nearby = pb_grpc.NearbyServiceStub(channel)

    def md(self, user: str, admin: bool = False) -> list[tuple[str, str]]:
        return self.stack.auth(user, admin=admin)

    async def create(self, *prefixes: str) -> list[str]:
        ids = [f"{p}-{uuid.uuid4().hex[:8]}" for p in prefixes]
        for u in ids:
            await self.friends.CreateUser(
                fpb.CreateUserRequest(user_id=u, display_name=u.title()),
                metadata=self.md("ops", admin=True),
            )
        return ids

    async def befriend(self, a: str, b: str) -> None:
        await self.friends.SendFriendRequest(
            fpb.SendFriendRequestRequest(to_user_id=b), metadata=self.md(a)
        )
        await self.friends.AcceptFriendRequest(
            fpb.AcceptFriendRequestRequest(from_user_id=a), metadata=self.md(b)
        )

    async def report(self, user: str, pos: tuple[float, float], i: int) -> None:
        await self.locations.ReportLocation(
            lpb.ReportLocationRequest(
                position=geo_pb2.LatLng(latitude=pos[0], longitude=pos[1]), recorded_at=ts(i)
            ),
            metadata=self.md(user),
        )

    async def history(self, user: str) -> list[int]:
        resp = await self.locations.ListLocationHistory(
            lpb.ListLocationHistoryRequest(page_size=1000), metadata=self.md(user)
        )
        return sorted((loc.recorded_at.ToMilliseconds() - T0) // 1000 for loc in resp.locations)

    async def connect(self, user: str, pos: tuple[float, float]) -> Stream:
        s = Stream(self.nearby, user, metadata=self.md(user))
        await s.open(*pos)
        await s.wait_for(lambda s: s.snapshots())
        return s


@pytest.fixture
async def stack(engine_settings: Settings) -> AsyncIterator[EdgeStack]:
    s = fast_settings(engine_settings, nearby_page_size=1)
    async with edge_stack(s) as st:
        yield st


def iso(i: int) -> str:
    return ts(i).ToDatetime(dt.UTC).isoformat()


async def cli(stack: EdgeStack, *args: str, user: str) -> str:
    """`nearby forget ARGS` as `user`, against the stack's Envoy; its output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stack.cli",
        "forget",
        *args,
        "--token",
        stack.token(user),
        "--target",
        stack.envoy_addr,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


async def drained(target: RedisTarget) -> None:
    """Until the history buffer is empty: every entry written and trimmed."""
    client = target.client()
    try:
        await until(lambda: _empty(client), within=30)
    finally:
        await client.aclose()


async def _empty(client: Any) -> bool:
    return await stream_lengths(client) == 0


async def state(url: str, target: RedisTarget) -> tuple[Any, Any]:
    """Every row and every Redis value but the history streams (the writer
    trims them on its own)."""
    client = target.client()
    try:
        values = await redis_values(client)
    finally:
        await client.aclose()
    streams = {s.encode() for s in keys.history_streams()}
    return await pg_dump(url), {k: v for k, v in values.items() if k not in streams}


async def traces(url: str, target: RedisTarget, user: str) -> tuple[dict[str, int], Any]:
    client = target.client()
    try:
        return await pg_traces(url, user), await redis_traces(client, user)
    finally:
        await client.aclose()


async def test_deleting_an_account_leaves_nothing_and_ends_its_streams(
    stack: EdgeStack, redis_target: RedisTarget
) -> None:
    url = stack.settings.database_url
    async with stack.channel() as channel:
        api = Api(stack, channel)
        alice, bob, carol, dave, erin, frank, gina = await api.create(
            "alice", "bob", "carol", "dave", "erin", "frank", "gina"
        )
        for a, b in ((alice, bob), (alice, carol), (bob, carol), (gina, bob)):
            await api.befriend(a, b)
        await api.friends.SendFriendRequest(
            fpb.SendFriendRequestRequest(to_user_id=dave), metadata=api.md(alice)
        )
        await api.friends.SendFriendRequest(
            fpb.SendFriendRequestRequest(to_user_id=alice), metadata=api.md(erin)
        )
        visible = ppb.SetVisibilityRequest(visibility=ppb.VISIBILITY_VISIBLE)
        hidden = ppb.SetVisibilityRequest(visibility=ppb.VISIBILITY_HIDDEN)
        await api.presence.SetVisibility(visible, metadata=api.md(alice))  # a row
        await api.presence.SetVisibility(hidden, metadata=api.md(gina))  # a row and a flag
        here = ORIGIN
        for i in range(3):
            await api.report(alice, offset(*here, 100), i)
            await api.report(gina, offset(*here, 300), i)
            await api.report(frank, offset(*here, 400), i)
        await api.report(carol, offset(*here, 200), 3)
        for i in range(3, 8):
            await api.report(frank, offset(*here, 400), i)

        bobs = await api.connect(bob, here)
        alices = await api.connect(alice, offset(*here, 100))
        await bobs.wait_for(lambda s: s.updates(alice))  # alice's stream reported
        first = bobs.snapshots()[0]
        assert first.total_size == 2 and first.next_page_token  # alice and carol, 1 a page
        await drained(redis_target)

        # Sanity: the checks below see what they look for.
        pg_before, redis_before = await traces(url, redis_target, alice)
        assert {"users", "friendships", "friend_requests", "user_visibility"} <= set(pg_before)
        assert any(t.startswith("location_history_") for t in pg_before)
        assert keys.location(alice).encode() in redis_before
        assert keys.presence_index_of(alice).encode() in redis_before
        assert keys.hidden(gina).encode() in (await traces(url, redis_target, gina))[1]

        # Bad input changes nothing (no row, no key, no deletion counter).
        before = await state(url, redis_target)
        nobody = f"nobody-{uuid.uuid4().hex[:8]}"
        PD, IA, NF = (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
        )
        delete_user, delete_history = api.friends.DeleteUser, api.locations.DeleteLocationHistory
        U, H = fpb.DeleteUserRequest, lpb.DeleteLocationHistoryRequest
        msg = await expect(PD, delete_user(U(user_id=carol), metadata=api.md(bob)), "NOT_OWNER")
        assert "your own account" in msg
        await expect(PD, delete_user(U(user_id=nobody), metadata=api.md(bob)), "NOT_OWNER")
        await expect(NF, delete_user(U(user_id=nobody), metadata=api.md("ops", admin=True)))
        await expect(NF, delete_user(U(), metadata=api.md(nobody)), "USER_NOT_FOUND")
        await expect(IA, delete_user(U(user_id="no such id!"), metadata=api.md(bob)))
        bad_ranges = [
            H(),  # neither a range nor all
            H(all=True, start_time=ts(1)),
            H(start_time=ts(5), end_time=ts(5)),
            H(start_time=ts(6), end_time=ts(5)),
            H(start_time=timestamp_pb2.Timestamp(seconds=253402300800)),  # year 10000
            H(user_id="no such id!", all=True),
        ]
        for req in bad_ranges:
            await expect(IA, delete_history(req, metadata=api.md(frank)), "INVALID_FIELD")
        await expect(PD, delete_history(H(user_id=frank, all=True), metadata=api.md(bob)))
        assert await state(url, redis_target) == before

        # History range through the edge: an admin deletes [2, 5) of frank's.
        assert await api.history(frank) == list(range(8))
        resp = await delete_history(
            H(user_id=frank, start_time=ts(2), end_time=ts(5)),
            metadata=api.md("ops", admin=True),
        )
        assert resp.deleted_count == 3
        resp = await delete_history(H(end_time=ts(1)), metadata=api.md(frank))
        assert resp.deleted_count == 1
        assert await api.history(frank) == [1, 5, 6, 7]
        out = await cli(stack, "history", "--since", iso(6), "--until", iso(7), user=frank)
        assert out == "deleted 1 location(s) from the history"
        assert await api.history(frank) == [1, 5, 7]

        # alice deletes herself (one more report first: maybe still buffered);
        # an admin deletes gina.
        await api.report(alice, offset(*here, 100), 9)
        deleted = await delete_user(U(), metadata=api.md(alice))
        assert deleted.user_id == alice
        deleted = await delete_user(U(user_id=gina), metadata=api.md("ops", admin=True))
        assert deleted.user_id == gina

        # Her stream ends with a clear status; bob's drops her.
        await asyncio.wait_for(alices.done.wait(), 10)
        assert alices.error is not None and alices.error.code() == grpc.StatusCode.NOT_FOUND
        assert "deleted" in (alices.error.details() or "")
        gone = await bobs.wait_for(lambda s: s.gones(alice))
        assert gone[-1].reason == pb.FRIEND_GONE_REASON_UNFRIENDED

        # Nothing names them anywhere, now or once the history writer caught up.
        for _ in range(2):
            for user in (alice, gina):
                assert await traces(url, redis_target, user) == ({}, {}), user
            await api.report(frank, offset(*here, 400), 10)
            await drained(redis_target)
        pg_frank, redis_frank = await traces(url, redis_target, frank)
        assert "users" in pg_frank and keys.location(frank).encode() in redis_frank

        # ... and no path shows them.
        friends = await api.friends.ListFriends(fpb.ListFriendsRequest(), metadata=api.md(bob))
        assert [f.user.user_id for f in friends.friends] == [carol]
        for user, direction in (
            (dave, fpb.FRIEND_REQUEST_DIRECTION_INCOMING),
            (erin, fpb.FRIEND_REQUEST_DIRECTION_OUTGOING),
        ):
            reqs = await api.friends.ListFriendRequests(
                fpb.ListFriendRequestsRequest(direction=direction), metadata=api.md(user)
            )
            assert not reqs.friend_requests
        await expect(
            NF, api.friends.GetUser(fpb.GetUserRequest(user_id=alice), metadata=api.md(bob))
        )
        listed = await api.nearby.ListNearbyFriends(
            pb.ListNearbyFriendsRequest(page_size=10), metadata=api.md(bob)
        )
        assert [f.user_id for f in listed.friends] == [carol] and listed.total_size == 1
        await bobs.page(first.next_page_token)
        page = (await bobs.wait_for(lambda s: s.pages()))[-1]
        assert page.total_size == 1 and alice not in [f.user_id for f in page.friends]
        again = await api.connect(bob, here)
        snap = again.snapshots()[0]
        assert [f.user_id for f in snap.friends] == [carol] and snap.total_size == 1
        assert await api.history(alice) == []
        await expect(NF, delete_user(U(), metadata=api.md(alice)))  # done already
        # her token is still valid: reporting with it records nothing
        reason = await expect(NF, api.report(alice, here, 11), "CALLER_NOT_FOUND")
        assert "has no account" in reason
        late = Stream(api.nearby, alice, metadata=api.md(alice))
        await late.open(*here)
        await asyncio.wait_for(late.done.wait(), 10)
        assert late.error is not None and late.error.code() == NF
        assert "has no account" in (late.error.details() or "")
        assert await traces(url, redis_target, alice) == ({}, {})
        for s in (bobs, alices, again):
            await s.close()


async def retried(stub: Any, user: str) -> fpb.DeleteUserResponse | None:
    """DeleteUser as `user`; None when it failed with UNAVAILABLE."""
    try:
        resp: fpb.DeleteUserResponse = await stub.DeleteUser(
            fpb.DeleteUserRequest(), metadata=who(user)
        )
        return resp
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return None


async def test_a_deletion_that_failed_part_way_is_finished_by_a_retry_or_by_itself(
    settings: Settings,
) -> None:
    """presence_svc is down: DeleteUser fails (UNAVAILABLE) but the user is
    already invisible; once presence is back, a retry finishes, and a
    deletion nobody retries is finished by friend_svc."""
    presence_port = infra.free_port()
    s = fast_settings(settings, presence_addr=f"127.0.0.1:{presence_port}")
    target = RedisTarget(s.redis_url, False)
    async with running(LocationApp(s, history_writer=False)) as loc:
        s = s.replace(location_addr=loc)
        friend_app = FriendApp(s)
        async with running(friend_app) as addr, grpc.aio.insecure_channel(addr) as ch:
            stub = fpb_grpc.FriendServiceStub(ch)
            ann, ben, cid = (f"{p}-{uuid.uuid4().hex[:8]}" for p in ("ann", "ben", "cid"))
            for u in (ann, ben, cid):
                await stub.CreateUser(
                    fpb.CreateUserRequest(user_id=u, display_name=u), metadata=who("ops", True)
                )
            for other in (ann, cid):
                await stub.SendFriendRequest(
                    fpb.SendFriendRequestRequest(to_user_id=ben), metadata=who(other)
                )
                await stub.AcceptFriendRequest(
                    fpb.AcceptFriendRequestRequest(from_user_id=other), metadata=who(ben)
                )
            for u in (ann, cid):
                await expect(
                    grpc.StatusCode.UNAVAILABLE,
                    stub.DeleteUser(fpb.DeleteUserRequest(), metadata=who(u)),
                    "UPSTREAM_UNAVAILABLE",
                )
            # invisible already: to friends, to requests, to lookups
            friends = await stub.ListFriends(fpb.ListFriendsRequest(), metadata=who(ben))
            assert not friends.friends
            await expect(
                grpc.StatusCode.NOT_FOUND,
                stub.SendFriendRequest(
                    fpb.SendFriendRequestRequest(to_user_id=ann), metadata=who(ben)
                ),
            )
            await expect(
                grpc.StatusCode.NOT_FOUND,
                stub.GetUser(fpb.GetUserRequest(user_id=ann), metadata=who(ben)),
            )
            assert "users" in (await traces(s.database_url, target, ann))[0]

            presence = Runner(PresenceApp(s), "127.0.0.1", presence_port, grace_s=2.0)
            await presence.start()
            try:
                # the client retries with backoff (friend_svc's channel to
                # presence reconnects with its own backoff meanwhile)
                resp = await until(lambda: retried(stub, ann), within=20, every=0.2)
                assert resp.user_id == ann
                assert await traces(s.database_url, target, ann) == ({}, {})
                # nobody retries cid's: friend_svc finishes deletions older than a minute
                async with await psycopg.AsyncConnection.connect(s.database_url) as conn:
                    await conn.execute(
                        "UPDATE users SET deleting_since = now() - interval '2 minutes' "
                        "WHERE user_id = %s",
                        (cid,),
                    )
                assert await friend_app.eraser.resume() == 1
                assert await traces(s.database_url, target, cid) == ({}, {})
            finally:
                await presence.stop()
            assert (await traces(s.database_url, target, ben))[0].keys() == {"users"}


async def test_a_ghost_flag_reload_racing_a_deletion_does_not_bring_the_flag_back(
    settings: Settings,
) -> None:
    """presence_svc reloads the ghost-mode flags from Postgres (at start, or
    after Redis lost them); a user deleted between its read and its writes
    must not get their flag back."""
    user = f"hid-{uuid.uuid4().hex[:8]}"
    app = PresenceApp(settings)
    async with running(app):
        await app.store.set_hidden(user, True)
        await app.cache.hide(user)
        eraser = UserDataServicer(app.store, app.cache, app.sharing_store, app.sharing_cache)

        class Racing(VisibilityStore):
            """Deletes the user right after the reload read the hidden users."""

            raced = False

            async def hidden_users(self) -> list[str]:
                found = await super().hidden_users()
                if not self.raced:
                    self.raced = True
                    await eraser.DeleteUserData(ud.DeleteUserDataRequest(user_id=user), None)  # type: ignore[arg-type]
                return found

        await FlagSync(Racing(app.pool), app.cache, app.sharing_store, app.sharing_cache).reload()
        assert await traces(
            settings.database_url, RedisTarget(settings.redis_url, False), user
        ) == (
            {},
            {},
        )

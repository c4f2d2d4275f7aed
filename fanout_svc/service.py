"""NearbyService: the live Connect and Watch streams and the stateless ListNearbyFriends."""

from __future__ import annotations

from nearby.v1 import nearby_service_pb2 as pb
from nearby.v1 import nearby_service_pb2_grpc as pb_grpc

from fanout_svc.nearby import Entry, fill, page_of, page_size
from fanout_svc.session import Session
from fanout_svc.streams import Streams
from fanout_svc.watch_session import WatchSession
from mesh.clock import now_ms
from mesh.errors import FailedPrecondition, Unavailable
from mesh.identity import caller_id
from mesh.sharing import APPROXIMATE, DEFAULT, place
from mesh.types import Context


class NearbyServicer(pb_grpc.NearbyServiceServicer):
    def __init__(self, streams: Streams) -> None:
        self.streams = streams
        self.settings = streams.settings

    async def Connect(self, request_iterator: object, context: Context) -> None:  # type: ignore[override]
        """Coroutine style (context.read/write): the kernel interceptor wraps the
        call once, not every message."""
        user_id = caller_id(context)
        if self.streams.draining:
            raise Unavailable("this server is shutting down; reconnect", reason="DRAINING")
        await Session(self.streams, user_id, context).serve()

    async def Watch(self, request: pb.WatchRequest, context: Context) -> None:  # type: ignore[override]
        """Connect's list for clients that cannot send on a stream (watch_session.py)."""
        user_id = caller_id(context)
        if self.streams.draining:
            raise Unavailable("this server is shutting down; reconnect", reason="DRAINING")
        await WatchSession(self.streams, user_id, context).serve()

    async def ListNearbyFriends(
        self, request: pb.ListNearbyFriendsRequest, context: Context
    ) -> pb.ListNearbyFriendsResponse:
        user_id = caller_id(context)
        size = page_size(request.page_size, self.settings.nearby_page_size)
        page_of([], request.page_token, size)  # validate the token before any call
        upstream = self.streams.upstream
        mine = await upstream.get_locations([user_id], include_hidden=True)
        if not mine:
            raise FailedPrecondition(
                "no recent location for you: report one (NearbyService.Connect or "
                "LocationService.ReportLocation) first",
                reason="NO_LOCATION",
            )
        lat, lng = mine[0].fix.latitude, mine[0].fix.longitude
        refs = await upstream.list_friends(user_id)
        names = {r.user_id: r.display_name for r in refs if r.user_id != user_id}
        radius = self.settings.nearby_radius_m
        entries = []
        locs, policies = await upstream.get_shared(list(names))
        now = now_ms()
        for loc in locs:
            f = loc.fix
            level = policies.get(loc.user_id, DEFAULT).access(user_id, now)[0]
            seen = place(level, lat, lng, f.latitude, f.longitude)
            if seen is None or loc.user_id not in names:
                continue
            flat, flng, d = seen
            if d <= radius:
                entries.append(
                    Entry(
                        d,
                        loc.user_id,
                        names[loc.user_id],
                        flat,
                        flng,
                        f.recorded_at_ms,
                        level == APPROXIMATE,
                    )
                )
        page = page_of(entries, request.page_token, size)
        resp = pb.ListNearbyFriendsResponse(total_size=page.total, next_page_token=page.next_token)
        for e in page.entries:
            fill(resp.friends.add(), e)
        return resp

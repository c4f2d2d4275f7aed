"""The servicers of presence_svc: public PresenceService (ghost mode of the
caller) and internal PresenceQueryService (user ids in the request body)."""

from __future__ import annotations

from nearby.v1 import presence_service_pb2, presence_service_pb2_grpc

from mesh.errors import invalid_field
from mesh.identity import caller_id, check_user_id, check_user_ids
from mesh.internal.v1 import (
    presence_query_service_pb2,
    presence_query_service_pb2_grpc,
    user_data_service_pb2,
    user_data_service_pb2_grpc,
)
from mesh.types import Context
from presence_svc import metrics
from presence_svc.cache import PresenceCache
from presence_svc.store import VisibilityStore

VISIBLE = presence_service_pb2.VISIBILITY_VISIBLE
HIDDEN = presence_service_pb2.VISIBILITY_HIDDEN


class PresenceServicer(presence_service_pb2_grpc.PresenceServiceServicer):
    def __init__(self, store: VisibilityStore, cache: PresenceCache) -> None:
        self.store = store
        self.cache = cache

    async def SetVisibility(
        self, request: presence_service_pb2.SetVisibilityRequest, context: Context
    ) -> presence_service_pb2.SetVisibilityResponse:
        user_id = caller_id(context)
        if request.visibility not in (VISIBLE, HIDDEN):
            raise invalid_field("visibility", "must be VISIBILITY_VISIBLE or VISIBILITY_HIDDEN")
        hidden = request.visibility == HIDDEN
        # Postgres first (the source of truth), then the Redis mirror + event.
        await self.store.set_hidden(user_id, hidden)
        if hidden:
            await self.cache.hide(user_id)
        else:
            await self.cache.show(user_id)
        metrics.VISIBILITY_CHANGES.labels("hidden" if hidden else "visible").inc()
        return presence_service_pb2.SetVisibilityResponse(visibility=request.visibility)

    async def GetVisibility(
        self, request: presence_service_pb2.GetVisibilityRequest, context: Context
    ) -> presence_service_pb2.GetVisibilityResponse:
        user_id = caller_id(context)
        hidden = await self.store.is_hidden(user_id)
        return presence_service_pb2.GetVisibilityResponse(visibility=HIDDEN if hidden else VISIBLE)


class UserDataServicer(user_data_service_pb2_grpc.UserDataServiceServicer):
    """Internal: friend_svc erases a deleted account's ghost-mode setting."""

    def __init__(self, store: VisibilityStore, cache: PresenceCache) -> None:
        self.store = store
        self.cache = cache

    async def DeleteUserData(
        self, request: user_data_service_pb2.DeleteUserDataRequest, context: Context
    ) -> user_data_service_pb2.DeleteUserDataResponse:
        user_id = check_user_id(request.user_id)
        # Postgres first: a flag reload in between cannot bring the flag back.
        rows = await self.store.delete(user_id)
        flags = await self.cache.forget(user_id)
        return user_data_service_pb2.DeleteUserDataResponse(deleted_count=rows + flags)


class PresenceQueryServicer(presence_query_service_pb2_grpc.PresenceQueryServiceServicer):
    def __init__(self, cache: PresenceCache, friend_cap: int) -> None:
        self.cache = cache
        self.friend_cap = friend_cap

    async def BatchGetPresence(
        self, request: presence_query_service_pb2.BatchGetPresenceRequest, context: Context
    ) -> presence_query_service_pb2.BatchGetPresenceResponse:
        ids = check_user_ids(request.user_ids, self.friend_cap)
        resp = presence_query_service_pb2.BatchGetPresenceResponse()
        for info in await self.cache.batch_presence(ids):
            resp.presences.add(
                user_id=info.user_id,
                active=info.active,
                last_active_ms=info.last_active_ms,
                hidden=info.hidden,
            )
        return resp

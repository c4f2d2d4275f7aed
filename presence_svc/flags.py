"""Keeps Redis' ghost-mode flags and sharing policies equal to Postgres.

Postgres is the source of truth. The flags are loaded into Redis when
presence starts and whenever a marker `hidden-synced:{t}` is missing (Redis
restarted without persistence, or was flushed), so a Redis restart never
un-hides anyone for longer than one check interval.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from redis.exceptions import RedisError

from presence_svc import metrics
from presence_svc.cache import PresenceCache
from presence_svc.sharing_cache import SharingCache
from presence_svc.sharing_store import SharingStore
from presence_svc.store import VisibilityStore

log = logging.getLogger("presence_svc.flags")

CHECK_INTERVAL_S = 2.0
# Changes committed while a reload runs are re-applied from this far back.
_RACE_MARGIN = dt.timedelta(seconds=5)


class FlagSync:
    def __init__(
        self,
        store: VisibilityStore,
        cache: PresenceCache,
        sharing_store: SharingStore,
        sharing_cache: SharingCache,
    ) -> None:
        self.store = store
        self.cache = cache
        self.sharing_store = sharing_store
        self.sharing_cache = sharing_cache

    async def reload(self) -> int:
        """Copy every flag from Postgres into Redis, then set the marker."""
        started = await self.store.now()
        hidden = await self.store.hidden_users()
        await self.cache.apply_flags(hidden)
        # A SetVisibility that committed after our read may have been
        # overwritten by the stale value just written: re-apply recent changes.
        changes = await self.store.changed_since(started - _RACE_MARGIN)
        # A row deleted meanwhile (DeleteUser) is no change: clear its flag too.
        still = set(await self.store.hidden_users())
        await self.cache.apply_flags(
            [uid for uid, h in changes if h],
            [uid for uid, h in changes if not h] + [uid for uid in hidden if uid not in still],
        )
        # sharing policies: versioned writes, so a reload never undoes a change
        await self.sharing_cache.apply(await self.sharing_store.all_policies())
        await self.cache.mark_synced()
        metrics.FLAG_RELOADS.inc()
        log.info("ghost-mode flags loaded into Redis", extra={"hidden_users": len(hidden)})
        return len(hidden)

    async def run(self, interval_s: float = CHECK_INTERVAL_S) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                if not await self.cache.synced():
                    log.warning("ghost-mode flags missing in Redis (restarted?): reloading")
                    await self.reload()
            except (RedisError, OSError) as exc:
                log.warning("cannot check the ghost-mode flags: %s", exc)
            except Exception:
                log.exception("ghost-mode flag reload failed; retrying")

"""The privacy timers: ghost mode "for 3 h" and per-friend rules "for the
next hour" end by themselves.

Postgres holds every timer (`user_visibility.hidden_until`,
`sharing_rules.expires_at`), so they survive a restart of any service and of
Redis. Every presence replica runs this loop; each due timer is ended once,
with the same Redis writes and events as the manual change (see the stores).
The fan-out also stops honouring an expired rule by itself (it knows the
rule's end from the policy), so a rule never outlives its time by more than
about a second even while presence is down; a ghost mode that ends late only
errs on the private side.
"""

from __future__ import annotations

import asyncio
import logging

from psycopg import Error as PgError
from redis.exceptions import RedisError

from presence_svc import metrics
from presence_svc.cache import PresenceCache
from presence_svc.sharing_cache import SharingCache
from presence_svc.sharing_store import SharingStore
from presence_svc.store import VisibilityStore

log = logging.getLogger("presence_svc.timers")

TICK_S = 0.5


class Timers:
    def __init__(
        self,
        visibility: VisibilityStore,
        sharing: SharingStore,
        presence: PresenceCache,
        policies: SharingCache,
    ) -> None:
        self.visibility = visibility
        self.sharing = sharing
        self.presence = presence
        self.policies = policies

    async def fire(self) -> int:
        """End every due timer once; returns how many ended."""
        n = await self.visibility.expire_due(self.presence.show)
        m = await self.sharing.expire_due(self.policies.publish)
        if n:
            metrics.TIMERS_FIRED.labels("ghost").inc(n)
        if m:
            metrics.TIMERS_FIRED.labels("precision").inc(m)
        return n + m

    async def run(self, tick_s: float = TICK_S) -> None:
        while True:
            try:
                await self.fire()
            except (RedisError, PgError, OSError) as exc:
                log.warning("privacy timers: %s; retrying", exc)
            except Exception:
                log.exception("privacy timers failed; retrying")
            await asyncio.sleep(tick_s)

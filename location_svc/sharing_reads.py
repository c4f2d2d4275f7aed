"""Sharing policies for the fan-out's reads (BatchGetLocations include_sharing).

A missing `sharing:{uid}` means the default policy (all friends, precise)
only if Redis holds every policy of Postgres. After Redis lost its data
(restarted without persistence, flushed, a master came back empty) it does
not until presence_svc has reloaded them, which it notices by its markers
(`hidden-synced:{t}`, one per presence shard, so every master holds some).
So the markers are read with the policies, in the same round trip per node,
and while any is missing the read fails with UNAVAILABLE: a stream is never
built on a policy that is merely missing (fail closed).
"""

from __future__ import annotations

from collections.abc import Sequence

from mesh import keys, resp
from mesh.errors import Unavailable
from mesh.redis import RedisEngine, Routed, check


class SharingReads:
    def __init__(self, engine: RedisEngine) -> None:
        self.engine = engine
        # the same commands on every read: built once
        self.markers: list[Routed] = [
            (m, resp.command(b"EXISTS", m)) for m in keys.visibility_synced_markers()
        ]

    async def policies(self, user_ids: Sequence[str]) -> list[tuple[str, bytes]]:
        """(user id, SharingPolicy bytes) of those who have a policy, in order."""
        commands = list(self.markers)
        for uid in user_ids:
            key = keys.sharing(uid)
            commands.append((key, resp.command(b"HGET", key, keys.SHARING_POLICY)))
        res = await self.engine.execute(commands)
        check(res)
        n = len(self.markers)
        if not all(res[:n]):
            raise Unavailable(
                "sharing settings are being reloaded after a Redis restart; retry",
                reason="SHARING_RELOADING",
                retry_after_s=1.0,
            )
        return [(uid, v) for uid, v in zip(user_ids, res[n:], strict=True) if v is not None]

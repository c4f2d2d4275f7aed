"""Redis side of presence_svc: ghost-mode flags and presence lookups."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mesh import keys, resp
from mesh.clock import now_ms
from mesh.redis import RedisEngine, Routed, check

_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class PresenceInfo:
    user_id: str
    active: bool
    last_active_ms: int
    hidden: bool


class PresenceCache:
    def __init__(self, engine: RedisEngine, timeout_s: float) -> None:
        self.engine = engine
        self.timeout_ms = int(timeout_s * 1000)

    async def hide(self, user_id: str) -> None:
        """Set the flag and tell the user's friends: one MULTI on the user's
        slot (flag and channel share the hash tag, so it works on a cluster)."""
        flag, channel = keys.hidden(user_id), keys.location_channel(user_id)
        (replies,) = await self.engine.transactions(
            [
                (
                    flag,
                    [
                        resp.command(b"SET", flag, b"1"),
                        resp.command(
                            self.engine.publish, channel, keys.hidden_event(user_id, now_ms())
                        ),
                    ],
                )
            ]
        )
        check([replies])
        check(replies)

    async def show(self, user_id: str) -> None:
        """Clear the flag: friends see the user again at their next update."""
        flag = keys.hidden(user_id)
        check(await self.engine.execute([(flag, resp.command(b"DEL", flag))]))

    async def forget(self, user_id: str) -> int:
        """Drop the user's flag without an event (account deletion: friends
        were told by friend_svc); keys deleted."""
        flag = keys.hidden(user_id)
        (n,) = await self.engine.execute([(flag, resp.command(b"DEL", flag))])
        check([n])
        return int(n)

    async def apply_flags(self, hidden: Iterable[str], visible: Iterable[str] = ()) -> None:
        """Mirror flags loaded from Postgres (no events: friends were told
        already); chunks of 1,000, each one round trip per node."""
        commands: list[Routed] = []
        for uid in hidden:
            flag = keys.hidden(uid)
            commands.append((flag, resp.command(b"SET", flag, b"1")))
            if len(commands) >= _CHUNK:
                check(await self.engine.execute(commands))
                commands = []
        for uid in visible:
            flag = keys.hidden(uid)
            commands.append((flag, resp.command(b"DEL", flag)))
            if len(commands) >= _CHUNK:
                check(await self.engine.execute(commands))
                commands = []
        check(await self.engine.execute(commands))

    async def synced(self) -> bool:
        """Whether every marker is there (a master that lost its data lost its own)."""
        markers = keys.visibility_synced_markers()
        res = await self.engine.execute([(m, resp.command(b"EXISTS", m)) for m in markers])
        check(res)
        return all(res)

    async def mark_synced(self) -> None:
        markers = keys.visibility_synced_markers()
        check(await self.engine.execute([(m, resp.command(b"SET", m, b"1")) for m in markers]))

    async def batch_presence(self, user_ids: Sequence[str]) -> list[PresenceInfo]:
        commands: list[Routed] = []
        for uid in user_ids:
            key, flag = keys.location(uid), keys.hidden(uid)
            commands.append((key, resp.command(b"HGET", key, keys.ACTIVE_MS)))
            commands.append((flag, resp.command(b"EXISTS", flag)))
        res = await self.engine.execute(commands)
        check(res)
        cutoff = now_ms() - self.timeout_ms
        out = []
        for i, uid in enumerate(user_ids):
            raw = res[2 * i]
            last = int(raw) if raw is not None else 0
            active = last > cutoff
            out.append(PresenceInfo(uid, active, last if active else 0, bool(res[2 * i + 1])))
        return out

"""Redis side of the sharing policies: `sharing:{uid}` and the event to friends.

A policy is written by a script on the user's slot (key and channel share the
hash tag, so it works on a cluster) only when its version is newer than the
stored one: writes that arrive out of order, or a reload racing a change,
can never bring an older policy back.
"""

from __future__ import annotations

from collections.abc import Iterable
from string import Template

from mesh import keys, resp
from mesh.clock import now_ms
from mesh.redis import RedisEngine, Routed, check
from mesh.sharing import Policy

_CHUNK = 1000

# KEYS: sharing:{uid}, loc:{uid} (the channel). ARGV: version, policy bytes,
# LocationEvent bytes ('' = do not publish).
WRITE_LUA = Template("""
local v = redis.call('HGET', KEYS[1], '$version')
if v and tonumber(v) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], '$version', ARGV[1], '$policy', ARGV[2])
if ARGV[3] ~= '' then redis.call('$publish', KEYS[2], ARGV[3]) end
return 1
""")


class SharingCache:
    def __init__(self, engine: RedisEngine) -> None:
        self.engine = engine
        self._write = engine.script(
            WRITE_LUA.substitute(
                version=keys.SHARING_VERSION, policy=keys.SHARING_POLICY, publish=engine.publish
            )
        )

    def _call(self, user_id: str, policy: Policy, publish: bool) -> Routed:
        proto = policy.to_proto()
        event = keys.sharing_event(user_id, proto, now_ms()) if publish else b""
        return self._write.call(
            [keys.sharing(user_id), keys.location_channel(user_id)],
            policy.version,
            proto.SerializeToString(),
            event,
        )

    async def publish(self, user_id: str, policy: Policy) -> None:
        """Store the policy and tell the user's friends' streams (a Mirror)."""
        check(await self.engine.execute([self._call(user_id, policy, True)]))

    async def apply(self, policies: Iterable[tuple[str, Policy]]) -> None:
        """Mirror policies loaded from Postgres (no events: nothing changed);
        chunks of 1,000, each one round trip per node."""
        calls: list[Routed] = []
        for uid, policy in policies:
            calls.append(self._call(uid, policy, False))
            if len(calls) >= _CHUNK:
                check(await self.engine.execute(calls))
                calls = []
        check(await self.engine.execute(calls))

    async def forget(self, user_id: str) -> int:
        """Drop the user's policy (account deletion); keys deleted."""
        key = keys.sharing(user_id)
        (n,) = await self.engine.execute([(key, resp.command(b"DEL", key))])
        check([n])
        return int(n)

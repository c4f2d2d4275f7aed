"""Redis key and channel names, in one place.

Every per-user key and channel carries the user id as a hash tag (`{uid}`),
so that under Redis Cluster a user's cache entry, flags and pub/sub channel
live in one slot (a Lua script may touch them together, and sharded pub/sub
routes the channel to that slot's shard). Keys that gather many users (the
presence index, the history buffer) are split into a fixed number of shards,
each its own slot.
"""

from __future__ import annotations

import zlib


def location(user_id: str) -> str:
    """Hash of the latest location: v = PositionFix bytes, t = fix ms, a = last
    active (server ms), p = last shared (server ms). TTL = inactivity timeout."""
    return f"loc:{{{user_id}}}"


def location_channel(user_id: str) -> str:
    """Pub/sub channel of a user's LocationEvents (moved, offline, hidden)."""
    return f"loc:{{{user_id}}}"


def inbox_channel(user_id: str) -> str:
    """Pub/sub channel of a user's InboxEvents (friend added/removed)."""
    return f"inbox:{{{user_id}}}"


def hidden(user_id: str) -> str:
    """Present while the user is in ghost mode (mirrors Postgres)."""
    return f"hidden:{{{user_id}}}"


def shard_of(user_id: str, shards: int) -> int:
    return zlib.crc32(user_id.encode()) % shards


PRESENCE_SHARDS = 16


def presence_index(shard: int) -> str:
    """Sorted set: member = user id, score = last active (server ms)."""
    return f"presence:{{{shard}}}"


def presence_index_of(user_id: str) -> str:
    return presence_index(shard_of(user_id, PRESENCE_SHARDS))


def presence_sweep_lock(shard: int) -> str:
    """Held briefly by the presence replica sweeping that shard."""
    return f"presence:{{{shard}}}:lock"


VISIBILITY_SYNCED = "hidden:synced"
"""Marker that the ghost-mode flags were loaded from Postgres into this Redis
(missing after a Redis restart without persistence: presence reloads them)."""

HISTORY_SHARDS = 4


def history_stream(shard: int) -> str:
    """Redis Stream buffering history rows until they are committed to Postgres."""
    return f"history:{{{shard}}}"


def history_stream_of(user_id: str) -> str:
    return history_stream(shard_of(user_id, HISTORY_SHARDS))


HISTORY_GROUP = "history-writers"

"""The Redis contract between the services, in one place.

- **Names.** Every per-user key and channel carries the user id as a hash tag
  (`{uid}`), so that under Redis Cluster a user's cache entry, ghost flag and
  channels live in one slot: a Lua script may touch them together, and
  sharded pub/sub routes the channel to that slot's shard. Keys that gather
  many users (the presence index, the history buffer) are split into shards
  whose hash tags sit on evenly spaced slots, so that they spread evenly over
  the masters whatever their number (see `shard_tag`).
- **Fields** of the `loc:{uid}` hash (written by location_svc, read by
  presence_svc): `FIX`, `FIX_MS`, `ACTIVE_MS`, `SHARED_MS`.
- **Payloads** published on the channels: `LocationEvent` and `InboxEvent`
  protobuf bytes, built and parsed here.
- **The publish verb**: `PUBLISH` on one Redis, `SPUBLISH` (sharded pub/sub)
  on a cluster.
"""

from __future__ import annotations

import binascii
import functools
import zlib

from mesh.internal.v1 import events_pb2

SLOTS = 16384

# --- the loc:{uid} hash ------------------------------------------------------

FIX = "v"
"""PositionFix bytes of the newest fix."""
FIX_MS = "t"
"""recorded_at_ms of that fix (newest wins)."""
ACTIVE_MS = "a"
"""Server ms of the user's last valid report (presence reads it)."""
SHARED_MS = "p"
"""Server ms of the last report that was published (the rate cap)."""


def location(user_id: str) -> str:
    """Hash of the latest location (fields above); TTL = inactivity timeout."""
    return f"loc:{{{user_id}}}"


def location_channel(user_id: str) -> str:
    """Channel of a user's LocationEvents (moved, offline, hidden)."""
    return f"loc:{{{user_id}}}"


def inbox_channel(user_id: str) -> str:
    """Channel of a user's InboxEvents (friend added/removed)."""
    return f"inbox:{{{user_id}}}"


def hidden(user_id: str) -> str:
    """Present while the user is in ghost mode (mirrors Postgres)."""
    return f"hidden:{{{user_id}}}"


def account(user_id: str) -> str:
    """Present while location_svc knows the user has an account (confirmed
    with friend_svc, which owns accounts); its report script records nothing
    without it. Expires (ACCOUNT_CONFIRM_MS) and is deleted with the account."""
    return f"acct:{{{user_id}}}"


ACCOUNT_CONFIRM_MS = 24 * 3600 * 1000
"""How long a confirmed account is trusted before friend_svc is asked again."""


def user_streams(user_id: str) -> str:
    """Sorted set of a user's open streams over all fan-out replicas: member =
    a stream, score = its lease end (server ms); the per-user stream cap
    (fanout_svc/admission.py). Expires with its last lease."""
    return f"streams:{{{user_id}}}"


# --- privacy: the sharing policy (presence_svc writes, location_svc reads) ----

SHARING_VERSION = "v"
"""Field of `sharing:{uid}`: the policy's version (a newer one always wins)."""
SHARING_POLICY = "p"
"""Field of `sharing:{uid}`: SharingPolicy bytes."""


def sharing(user_id: str) -> str:
    """Hash of the user's sharing policy (mirrors Postgres; absent: the default)."""
    return f"sharing:{{{user_id}}}"


def sharing_event(user_id: str, policy: events_pb2.SharingPolicy, now_ms: int) -> bytes:
    return events_pb2.LocationEvent(
        user_id=user_id, sharing=policy, published_at_ms=now_ms
    ).SerializeToString()


# --- sharded keys ------------------------------------------------------------


def shard_of(user_id: str, shards: int) -> int:
    return zlib.crc32(user_id.encode()) % shards


def slot_of(tag: str) -> int:
    """The cluster slot of a key whose hash tag is `tag` (CRC16 mod 16384)."""
    return binascii.crc_hqx(tag.encode(), 0) % SLOTS


@functools.cache
def shard_tag(shard: int, shards: int) -> str:
    """A hash tag for shard `shard` of `shards` whose slot lies in the shard's
    own 1/`shards` of the slot space.

    Slots are handed to masters in ranges (evenly by `redis-cli --cluster
    create` and `rebalance`), so shards on evenly spaced slots split evenly
    over any number of masters that divides `shards`, and within one shard of
    even otherwise; plain tags (`{0}`, `{1}`, ...) land where CRC16 puts them.
    """
    lo, hi = shard * SLOTS // shards, (shard + 1) * SLOTS // shards
    tag, n = str(shard), 0
    while not lo <= slot_of(tag) < hi:
        n += 1
        tag = f"{shard}.{n}"
    return tag


PRESENCE_SHARDS = 48
"""Presence index shards: 16 per master on 3 masters, 12 on 4, 8 on 6."""


@functools.cache
def presence_index(shard: int) -> str:
    """Sorted set: member = user id, score = last active (server ms)."""
    return f"presence:{{{shard_tag(shard, PRESENCE_SHARDS)}}}"


def presence_index_of(user_id: str) -> str:
    return presence_index(shard_of(user_id, PRESENCE_SHARDS))


def presence_sweep_lock(shard: int) -> str:
    """Held briefly by the presence replica sweeping that shard (same slot)."""
    return f"presence:{{{shard_tag(shard, PRESENCE_SHARDS)}}}:lock"


def visibility_synced(shard: int) -> str:
    """Marker that the ghost-mode flags and sharing policies were loaded from
    Postgres into Redis.

    One per presence shard tag, so every master holds some: a master that
    comes back empty (restarted without persistence, flushed) loses its
    markers and presence reloads the flags."""
    return f"hidden-synced:{{{shard_tag(shard, PRESENCE_SHARDS)}}}"


def visibility_synced_markers() -> list[str]:
    return [visibility_synced(k) for k in range(PRESENCE_SHARDS)]


HISTORY_SHARDS = 12
"""History buffer streams: 4 per master on 3 masters, 3 on 4, 2 on 6."""


@functools.cache
def history_stream(shard: int) -> str:
    """Redis Stream buffering history rows until they are committed to Postgres."""
    return f"history:{{{shard_tag(shard, HISTORY_SHARDS)}}}"


def history_stream_of(user_id: str) -> str:
    return history_stream(shard_of(user_id, HISTORY_SHARDS))


def history_streams() -> list[str]:
    return [history_stream(k) for k in range(HISTORY_SHARDS)]


@functools.cache
def history_deletes(shard: int) -> str:
    """Counter of the deletions from history stream `shard` (same slot as the
    stream): a writer that sees it change while it held entries re-checks
    that they are still buffered before it commits them."""
    return f"history-deletes:{{{shard_tag(shard, HISTORY_SHARDS)}}}"


HISTORY_GROUP = "history-writers"
HISTORY_ROW = b"r"
"""The one field of a history stream entry: a binary COPY row."""

# --- publishing --------------------------------------------------------------


def publish_verb(cluster: bool) -> str:
    """PUBLISH on one Redis; SPUBLISH on a cluster, where a channel belongs to
    its slot's shard (and a script may publish on its own slot)."""
    return "SPUBLISH" if cluster else "PUBLISH"


def moved_event(
    user_id: str, fix: events_pb2.PositionFix, now_ms: int, traceparent: str = ""
) -> bytes:
    return events_pb2.LocationEvent(
        user_id=user_id, moved=fix, published_at_ms=now_ms, traceparent=traceparent
    ).SerializeToString()


def offline_event(user_id: str, last_active_ms: int, now_ms: int) -> bytes:
    return events_pb2.LocationEvent(
        user_id=user_id,
        offline=events_pb2.UserOffline(last_active_ms=last_active_ms),
        published_at_ms=now_ms,
    ).SerializeToString()


def hidden_event(user_id: str, now_ms: int) -> bytes:
    return events_pb2.LocationEvent(
        user_id=user_id, hidden=events_pb2.UserHidden(), published_at_ms=now_ms
    ).SerializeToString()


def friend_added_event(friend_id: str, display_name: str, now_ms: int) -> bytes:
    return events_pb2.InboxEvent(
        friend_added=events_pb2.FriendAdded(friend_id=friend_id, display_name=display_name),
        published_at_ms=now_ms,
    ).SerializeToString()


def friend_removed_event(friend_id: str, now_ms: int) -> bytes:
    return events_pb2.InboxEvent(
        friend_removed=events_pb2.FriendRemoved(friend_id=friend_id), published_at_ms=now_ms
    ).SerializeToString()


def account_deleted_event(now_ms: int) -> bytes:
    """Published on the deleted user's own inbox: their streams end."""
    return events_pb2.InboxEvent(
        account_deleted=events_pb2.AccountDeleted(), published_at_ms=now_ms
    ).SerializeToString()


def parse_location_event(payload: bytes) -> events_pb2.LocationEvent:
    """A payload of a `loc:{uid}` channel (raises DecodeError when malformed)."""
    return events_pb2.LocationEvent.FromString(payload)


def parse_inbox_event(payload: bytes) -> events_pb2.InboxEvent:
    """A payload of an `inbox:{uid}` channel (raises DecodeError when malformed)."""
    return events_pb2.InboxEvent.FromString(payload)

"""Prometheus metrics of presence_svc."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

OFFLINE_EVENTS = Counter(
    "presence_offline_events_total", "Offline events published by the inactivity sweeper"
)
SWEEP_SECONDS = Histogram(
    "presence_sweep_seconds",
    "Time of one sweep over all presence shards",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
VISIBILITY_CHANGES = Counter(
    "presence_visibility_changes_total", "SetVisibility calls by the new setting", ["visibility"]
)
FLAG_RELOADS = Counter(
    "presence_hidden_flag_reloads_total", "Reloads of the ghost-mode flags from Postgres into Redis"
)
# --- privacy ---
SHARING_CHANGES = Counter(
    "presence_sharing_changes_total", "Sharing policy changes by RPC", ["rpc"]
)
TIMERS_FIRED = Counter(
    "presence_privacy_timers_fired_total", "Privacy timers ended by the server", ["kind"]
)

"""Prometheus metrics of location_svc."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REPORTS = Counter(
    "location_reports_total",
    "Location reports by disposition (accepted, coalesced = over the rate cap, stale, invalid, "
    "unknown_user = no such account, nothing recorded)",
    ["disposition"],
)
ACCEPTED = REPORTS.labels("accepted")
COALESCED = REPORTS.labels("coalesced")
STALE = REPORTS.labels("stale")
INVALID = REPORTS.labels("invalid")
UNKNOWN_USER = REPORTS.labels("unknown_user")

HISTORY_DROPPED = Counter(
    "location_history_dropped_total",
    "History entries not buffered because the buffer was at its bound",
)
HISTORY_ROWS = Counter("location_history_rows_written_total", "Rows committed to location_history")
HISTORY_BATCHES = Counter(
    "location_history_batches_total",
    "History batches committed (path: copy = straight COPY, merge = staging + ON CONFLICT)",
    ["path"],
)
HISTORY_RECLAIMED = Counter(
    "location_history_reclaimed_total", "History entries reclaimed from writers that died"
)
HISTORY_BUFFER = Gauge(
    "location_history_buffer_entries", "History entries waiting in the Redis buffer"
)
HISTORY_BUFFER_RATIO = Gauge(
    "location_history_buffer_ratio", "Buffered history entries / HISTORY_BUFFER_MAX"
)
HISTORY_LAG = Gauge(
    "location_history_lag_seconds",
    "Age of the oldest history entry not yet in Postgres (entries a dead writer "
    "committed before it could acknowledge them do not count)",
)
HISTORY_UNREPLICATED = Counter(
    "location_history_unreplicated_total",
    "History entries answered before HISTORY_WAIT_REPLICAS replicas confirmed them (WAIT timed "
    "out): they survive a restart of their master (AOF) but not its failover",
)

# --- deletion of history (DeleteLocationHistory, DeleteUser) ---------------
HISTORY_ERASED = Counter(
    "location_history_erased_total",
    "History locations deleted on request (stored rows and buffered entries)",
)
HISTORY_SKIPPED = Counter(
    "location_history_skipped_total",
    "Buffered history entries a writer held but did not write: deleted meanwhile",
)

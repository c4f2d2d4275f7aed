"""Prometheus metrics of the fan-out service (served on /metrics by the kernel)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STREAMS = Gauge("nearby_fanout_streams", "Connect streams open on this process")
HUB_CHANNELS = Gauge("nearby_fanout_hub_channels", "Redis channels the hub is subscribed to")
HUB_MESSAGES = Counter(
    "nearby_fanout_hub_messages_total", "Pub/sub messages received for a subscribed channel"
)
HUB_COMMANDS = Counter(
    "nearby_fanout_hub_commands_total", "SUBSCRIBE/UNSUBSCRIBE commands sent (batched)"
)
HUB_RECONNECTS = Counter(
    "nearby_fanout_hub_reconnects_total", "Times the hub lost and re-established Redis pub/sub"
)
PUSHES = Counter(
    "nearby_fanout_pushes_total",
    "Items pushed to clients, by kind (update, gone_<reason>, snapshot, page, heartbeat, reconnect)",
    ["kind"],
)
MESSAGES = Counter("nearby_fanout_messages_total", "ConnectResponse messages written")
DROPS = Counter(
    "nearby_fanout_drops_total",
    "Events replaced in a stream's queue by a newer event of the same friend before being sent",
)
FELL_BEHIND = Counter(
    "nearby_fanout_fell_behind_total", "Streams ended because the client fell behind", ["why"]
)
BATCH_EVENTS = Histogram(
    "nearby_fanout_batch_events",
    "Queue depth at flush: events packed into one NearbyEvents message",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
PUSH_LATENCY = Histogram(
    "nearby_fanout_push_latency_seconds",
    "Per written NearbyEvents message, age of its oldest friend update: from the "
    "LocationEvent's published_at_ms to the moment the message write completed",
    buckets=(
        0.001,
        0.0025,
        0.005,
        0.0075,
        0.01,
        0.015,
        0.02,
        0.03,
        0.05,
        0.075,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
    ),
)
REPORTS = Counter("nearby_fanout_reports_total", "Location reports forwarded to location_svc")
REPORT_BATCHES = Counter(
    "nearby_fanout_report_batches_total", "ReportLocations calls made (each carries many reports)"
)
RESYNCS = Counter("nearby_fanout_resyncs_total", "Fresh snapshots sent after a hub resync")

PUSH_UPDATE = PUSHES.labels("update")
PUSH_SNAPSHOT = PUSHES.labels("snapshot")
PUSH_PAGE = PUSHES.labels("page")
PUSH_HEARTBEAT = PUSHES.labels("heartbeat")
PUSH_RECONNECT = PUSHES.labels("reconnect")
PUSH_GONE = {
    1: PUSHES.labels("gone_out_of_range"),
    2: PUSHES.labels("gone_offline"),
    3: PUSHES.labels("gone_unfriended"),
    4: PUSHES.labels("gone_hidden"),
}

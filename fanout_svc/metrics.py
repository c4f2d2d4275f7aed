"""Prometheus metrics of the fan-out service (served on /metrics by the kernel).

The per-message and per-event figures are plain integers and bucket arrays
(`HOT`, `BATCH_EVENTS`, `PUSH_LATENCY`) read by a collector when /metrics is
scraped: a prometheus_client Counter or Histogram takes a lock on every
update, which cost ~10 % of the fan-out's CPU at 100K updates/s.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from nearby.v1 import nearby_service_pb2 as nearby_pb
from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

STREAMS = Gauge("nearby_fanout_streams", "Connect streams open on this process")
HUB_CHANNELS = Gauge("nearby_fanout_hub_channels", "Redis channels the hub is subscribed to")
HUB_COMMANDS = Counter(
    "nearby_fanout_hub_commands_total", "SUBSCRIBE/UNSUBSCRIBE commands sent (batched)"
)
HUB_RECONNECTS = Counter(
    "nearby_fanout_hub_reconnects_total", "Times the hub lost and re-established Redis pub/sub"
)
HUB_STREAMS_RESYNCED = Counter(
    "nearby_fanout_hub_streams_resynced_total",
    "Streams the hub asked to resync because a channel they listen to was lost",
)
# Redis Cluster (sharded pub/sub): what moved subscriptions, and how many moved
HUB_SUNSUBSCRIBE_PUSHES = Counter(
    "nearby_fanout_hub_sunsubscribe_pushes_total",
    "sunsubscribe pushed by a cluster node (the channel's slot migrated away)",
)
HUB_MOVED = Counter(
    "nearby_fanout_hub_moved_total", "MOVED replies to SSUBSCRIBE (resent to the slot's owner)"
)
HUB_NODE_RECONNECTS = Counter(
    "nearby_fanout_hub_node_reconnects_total",
    "Connections to a cluster master lost (its channels resubscribed at the slots' owner)",
)
HUB_TOPOLOGY_CHANGES = Counter(
    "nearby_fanout_hub_topology_changes_total",
    "Reads of the cluster's slot map that differed from the map the hub had",
)
HUB_CHANNELS_MOVED = Counter(
    "nearby_fanout_hub_channels_moved_total",
    "Channels subscribed again after a loss (slot migrated, node lost, owner changed)",
)
FELL_BEHIND = Counter(
    "nearby_fanout_fell_behind_total", "Streams ended because the client fell behind", ["why"]
)
REPORTS = Counter("nearby_fanout_reports_total", "Location reports forwarded to location_svc")
REPORT_BATCHES = Counter(
    "nearby_fanout_report_batches_total", "ReportLocations calls made (each carries many reports)"
)
RESYNCS = Counter("nearby_fanout_resyncs_total", "Fresh snapshots sent after a hub resync")

GONE_KINDS = {
    value: "gone_" + name.removeprefix("FRIEND_GONE_REASON_").lower()
    for name, value in nearby_pb.FriendGoneReason.items()
    if value
}


class Hot:
    """Counters of the hot path: plain ints, exported at scrape time."""

    __slots__ = (
        "drops",
        "gone",
        "heartbeat",
        "hub_messages",
        "messages",
        "page",
        "reconnect",
        "snapshot",
        "update",
    )

    def __init__(self) -> None:
        self.hub_messages = 0
        self.messages = 0
        self.drops = 0
        self.update = 0
        self.snapshot = 0
        self.page = 0
        self.heartbeat = 0
        self.reconnect = 0
        self.gone = [0] * (max(GONE_KINDS) + 1)  # by FriendGoneReason


class FastHistogram:
    """A lock-free histogram for one event loop (bucket bounds are `le`)."""

    def __init__(self, name: str, doc: str, buckets: Sequence[float]) -> None:
        self.name, self.doc = name, doc
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def count(self) -> int:
        return sum(self.counts)

    def family(self) -> HistogramMetricFamily:
        cumulative, acc = [], 0
        for bound, n in zip([*self.bounds, float("inf")], self.counts, strict=True):
            acc += n
            cumulative.append(("+Inf" if bound == float("inf") else repr(float(bound)), acc))
        fam = HistogramMetricFamily(self.name, self.doc)
        fam.add_metric([], cumulative, self.sum)
        return fam


HOT = Hot()
BATCH_EVENTS = FastHistogram(
    "nearby_fanout_batch_events",
    "Queue depth at flush: events packed into one NearbyEvents message",
    (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
PUSH_LATENCY = FastHistogram(
    "nearby_fanout_push_latency_seconds",
    "Per written NearbyEvents message, age of its oldest friend update: from the "
    "LocationEvent's published_at_ms to the moment the message write completed",
    (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5),
)


class _HotCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        h = HOT
        yield CounterMetricFamily(
            "nearby_fanout_hub_messages",
            "Pub/sub messages received for a subscribed channel",
            value=h.hub_messages,
        )
        yield CounterMetricFamily(
            "nearby_fanout_messages", "ConnectResponse messages written", value=h.messages
        )
        yield CounterMetricFamily(
            "nearby_fanout_drops",
            "Events replaced in a stream's queue by a newer event of the same friend "
            "before being sent",
            value=h.drops,
        )
        pushes = CounterMetricFamily(
            "nearby_fanout_pushes",
            "Items pushed to clients, by kind (update, gone_<reason>, snapshot, page, "
            "heartbeat, reconnect)",
            labels=["kind"],
        )
        for kind in ("update", "snapshot", "page", "heartbeat", "reconnect"):
            pushes.add_metric([kind], getattr(h, kind))
        for reason, kind in GONE_KINDS.items():
            pushes.add_metric([kind], h.gone[reason])
        yield pushes
        yield BATCH_EVENTS.family()
        yield PUSH_LATENCY.family()


REGISTRY.register(_HotCollector())

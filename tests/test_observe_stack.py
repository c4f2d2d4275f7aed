"""Observability against one real stack (processes, the real Envoy, two fan-out
replicas, tracing on to an in-process OTLP receiver), shared by every test here:

- traces: one update is one trace, from Envoy (or the stream's update span)
  through location_svc's publish to the friend's push span, across the batch;
- Debian's prometheus scrapes every process and counts what the fan-out counts;
- every metric a dashboard panel or a rule queries is in the real scrapes.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from nearby.v1 import friend_service_pb2 as fpb
from nearby.v1 import friend_service_pb2_grpc as fpb_grpc
from nearby.v1 import geo_pb2
from nearby.v1 import location_service_pb2 as lpb
from nearby.v1 import location_service_pb2_grpc as lpb_grpc
from nearby.v1 import nearby_service_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from mesh.settings import Settings
from stack import infra
from stack.prometheus import Prometheus, Target, targets_of
from tests.support.edge_stack import EdgeStack, edge_stack
from tests.support.fanout import ORIGIN, Stream, fast_settings, offset, uid, until
from tests.support.otlp import Receiver, Span, receiver

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "nearby.json"
INGEST = "mesh.internal.v1.LocationIngestService/ReportLocations"


@dataclass
class Observed:
    stack: EdgeStack
    otlp: Receiver
    tmp: Path

    def metrics_targets(self) -> list[Target]:
        children = [c for cs in self.stack.children.values() for c in cs]
        return targets_of(children, self.stack.envoy.admin_port)


@pytest.fixture(scope="module")
async def observed(
    redis_server: infra.RedisServer, pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Observed]:
    name = f"nearby_test_{uuid.uuid4().hex[:12]}"
    infra.create_database(pg_admin_url, name)
    try:
        async with receiver() as otlp:
            settings = fast_settings(
                Settings(
                    redis_url=redis_server.url,
                    database_url=infra.database_url(pg_admin_url, name),
                    otlp_endpoint=otlp.endpoint,
                    traces_sampler="parentbased_always_on",
                )
            )
            async with edge_stack(settings, fanout_replicas=2, processes=True) as stack:
                yield Observed(stack, otlp, tmp_path_factory.mktemp("observe"))
    finally:
        infra.drop_database(pg_admin_url, name)


async def people(stack: EdgeStack, pairs: list[tuple[str, str]]) -> None:
    """Create the users of `pairs` and make each pair friends (through Envoy)."""
    ch = stack.channel()
    try:
        friends = fpb_grpc.FriendServiceStub(ch)
        admin = stack.auth("operator", admin=True)
        for u in {u for pair in pairs for u in pair}:
            await friends.CreateUser(
                fpb.CreateUserRequest(user_id=u, display_name=u), metadata=admin
            )
        for a, b in pairs:
            await friends.SendFriendRequest(
                fpb.SendFriendRequestRequest(to_user_id=b), metadata=stack.auth(a)
            )
            await friends.AcceptFriendRequest(
                fpb.AcceptFriendRequestRequest(from_user_id=a), metadata=stack.auth(b)
            )
    finally:
        await ch.close()


def push_of(mover: str, subscriber: str) -> Callable[[list[Span]], Span | None]:
    def find(spans: list[Span]) -> Span | None:
        return next(
            (
                s
                for s in spans
                if s.name == "fanout push"
                and s.attributes.get("nearby.user_id") == mover
                and s.attributes.get("nearby.subscriber_id") == subscriber
            ),
            None,
        )

    return find


def span_with_id(span_id: str) -> Callable[[list[Span]], Span | None]:
    return lambda spans: next((s for s in spans if s.span_id == span_id), None)


# --- traces ---------------------------------------------------------------------
async def test_a_unary_report_through_envoy_is_one_trace_to_the_friends_push(
    observed: Observed,
) -> None:
    stack, otlp = observed.stack, observed.otlp
    a, b = uid("ta"), uid("tb")
    await people(stack, [(a, b)])
    ch = stack.channel()
    sb = Stream(pb_grpc.NearbyServiceStub(ch), b, metadata=stack.auth(b))
    try:
        await sb.open(*ORIGIN)
        await sb.wait_for(lambda st: st.snapshots())
        near = offset(*ORIGIN, 300)
        await lpb_grpc.LocationServiceStub(ch).ReportLocation(
            lpb.ReportLocationRequest(position=geo_pb2.LatLng(latitude=near[0], longitude=near[1])),
            metadata=stack.auth(a),
        )
        await sb.wait_for(lambda st: st.updates(a))
        push: Span = await otlp.wait_for(push_of(a, b))
        publish: Span = await otlp.wait_for(span_with_id(push.parent_id))
        server: Span = await otlp.wait_for(span_with_id(publish.parent_id))
        # Envoy exports its spans every few seconds
        edge: Span = await otlp.wait_for(span_with_id(server.parent_id))
    finally:
        await sb.close()
        await ch.close()
    assert (push.service, push.kind) == ("fanout_svc", "CONSUMER")
    assert (publish.service, publish.name, publish.kind) == (
        "location_svc",
        "location publish",
        "PRODUCER",
    )
    assert (server.service, server.name, server.kind) == (
        "location_svc",
        "nearby.v1.LocationService/ReportLocation",
        "SERVER",
    )
    assert edge.service == "envoy" and edge.parent_id == ""
    assert {s.trace_id for s in (edge, server, publish, push)} == {push.trace_id}
    assert publish.start_ns >= server.start_ns and push.end_ns >= publish.start_ns


async def test_a_stream_update_is_its_own_trace_across_the_batch(observed: Observed) -> None:
    stack, otlp = observed.stack, observed.otlp
    a, b = uid("sa"), uid("sb")
    await people(stack, [(a, b)])
    ch = stack.channel()
    stub = pb_grpc.NearbyServiceStub(ch)
    sa = Stream(stub, a, metadata=stack.auth(a))
    sb = Stream(stub, b, metadata=stack.auth(b))
    try:
        await sb.open(*ORIGIN)
        await sb.wait_for(lambda st: st.snapshots())
        await sa.open(*offset(*ORIGIN, 50_000))  # out of range: no push yet
        await sa.wait_for(lambda st: st.snapshots())
        await sa.move(*offset(*ORIGIN, 400))
        await sb.wait_for(lambda st: st.updates(a))
        push: Span = await otlp.wait_for(push_of(a, b))
        publish: Span = await otlp.wait_for(span_with_id(push.parent_id))
        report: Span = await otlp.wait_for(span_with_id(publish.parent_id))
    finally:
        await sa.close()  # ends the stream: Envoy exports its span of it
        await sb.close()
        await ch.close()
    assert (report.service, report.name, report.parent_id) == ("fanout_svc", "fanout report", "")
    assert publish.service == "location_svc"
    assert {s.trace_id for s in (report, publish, push)} == {report.trace_id}
    assert len(otlp.trace(report.trace_id)) == 3, otlp.trace(report.trace_id)
    # the batched ReportLocations call: its own trace, linked to the report
    batch: Span = await otlp.wait_for(
        lambda spans: next((s for s in spans if (report.trace_id, report.span_id) in s.links), None)
    )
    assert (batch.service, batch.name) == ("fanout_svc", "fanout report batch")
    calls = {(s.service, s.name, s.kind, s.parent_id) for s in otlp.trace(batch.trace_id)}
    client = next(s for s in otlp.trace(batch.trace_id) if s.kind == "CLIENT")
    assert ("fanout_svc", INGEST, "CLIENT", batch.span_id) in calls
    assert ("location_svc", INGEST, "SERVER", client.span_id) in calls
    # the update's span links to Envoy's span of the stream
    assert len(report.links) == 1
    stream_span: Span = await otlp.wait_for(span_with_id(report.links[0][1]))
    assert stream_span.service == "envoy" and stream_span.trace_id == report.links[0][0]


# --- Prometheus -------------------------------------------------------------------
@pytest.fixture(scope="module")
async def prometheus(observed: Observed) -> AsyncIterator[Prometheus]:
    prom = Prometheus(
        observed.tmp / "prometheus",
        observed.metrics_targets(),
        port=infra.free_port(),
        interval_s=1.0,
        die_with_parent=False,
    )
    await asyncio.to_thread(prom.start)
    try:
        yield prom
    finally:
        await asyncio.to_thread(prom.stop)


def scrape(target: Target) -> str:
    with urllib.request.urlopen(f"http://{target.address}{target.metrics_path}", timeout=5) as r:
        return str(r.read().decode())


def delivered(observed: Observed) -> float:
    """The fan-out's own count of friend updates pushed, over every replica."""
    total = 0.0
    for t in observed.metrics_targets():
        if t.job != "fanout_svc":
            continue
        for fam in text_string_to_metric_families(scrape(t)):
            for s in fam.samples:
                if s.name == "nearby_fanout_pushes_total" and s.labels.get("kind") == "update":
                    total += s.value
    return total


async def eventually(check: Callable[[], object], within_s: float = 30.0) -> None:
    """Until check() (run off the event loop: it does HTTP) is truthy."""
    await until(lambda: asyncio.to_thread(check), within=within_s, every=0.2)


async def test_prometheus_scrapes_every_process_and_counts_what_the_fanout_counts(
    observed: Observed, prometheus: Prometheus
) -> None:
    wanted = {(t.job, t.instance) for t in observed.metrics_targets()}
    assert len(wanted) == 6  # friend, location, presence, 2 fan-out replicas, Envoy

    def all_up() -> bool:
        active = prometheus.api("targets")["activeTargets"]
        seen = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in active}
        return set(seen) == wanted and all(h == "up" for h in seen.values())

    await eventually(all_up)
    query = 'sum(nearby_fanout_pushes_total{kind="update"})'
    before = await asyncio.to_thread(delivered, observed)
    await eventually(lambda: prometheus.scalar(query) == before)

    # a short load: 6 pairs of friends, each mover moving 5 times near its friend
    pairs = [(uid("pm"), uid("ps")) for _ in range(6)]
    await people(observed.stack, pairs)
    ch = observed.stack.channel()
    stub = pb_grpc.NearbyServiceStub(ch)
    streams = {u: Stream(stub, u, metadata=observed.stack.auth(u)) for pair in pairs for u in pair}
    try:
        for st in streams.values():
            await st.open(*ORIGIN)
            await st.wait_for(lambda s: s.snapshots())
        for step in range(1, 6):
            for mover, _ in pairs:
                await streams[mover].move(*offset(*ORIGIN, 100 * step))
            for mover, sub in pairs:
                await streams[sub].wait_for(
                    lambda s, m=mover, n=step: any(
                        f.distance_meters == pytest.approx(100 * n, abs=1) for f in s.updates(m)
                    )
                )
    finally:
        for st in streams.values():
            await st.close()
        await ch.close()
    after = await asyncio.to_thread(delivered, observed)
    assert after - before >= 6 * 5  # every mover's friend got every step (at least)
    await eventually(lambda: prometheus.scalar(query) == after)
    rate = await asyncio.to_thread(
        prometheus.scalar, 'sum(rate(nearby_fanout_pushes_total{kind="update"}[1m]))'
    )
    assert rate is not None and rate > 0
    # the recording rule the alerts and the dashboard read agrees
    await eventually(lambda: (prometheus.scalar("nearby:fanout_updates_delivered:rate1m") or 0) > 0)


# --- every queried metric exists ------------------------------------------------------
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric (and recording rule) names a PromQL expression reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group(0)
        rest = text[m.end() :].lstrip()
        if word.lower() in _KEYWORDS or rest.startswith("("):
            continue
        if m.start() > 0 and (text[m.start() - 1].isdigit() or text[m.start() - 1] in ".$"):
            continue  # 1e-9, $__rate_interval
        names.add(word)
    return names


def queried() -> Iterator[tuple[str, str]]:
    """(where, expr) of every dashboard query and rule."""
    board = json.loads(DASHBOARD.read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for name in ("recording.yml", "alerts.yml"):
        for group in yaml.safe_load((RULES / name).read_text())["groups"]:
            for rule in group["rules"]:
                yield f"{name} {rule.get('record') or rule.get('alert')}", rule["expr"]


def test_metric_names_are_read_from_promql() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="b"}[$__rate_interval])))'
    ) == {"a_bucket"}
    assert metric_names("x:y:z > 0.2 * b_total and c > 1e-9") == {"x:y:z", "b_total", "c"}


async def test_every_metric_a_panel_or_rule_queries_is_really_exported(
    observed: Observed,
) -> None:
    exported: set[str] = {"up"}  # Prometheus's own series of each target
    for t in observed.metrics_targets():
        text = await asyncio.to_thread(scrape, t)
        for fam in text_string_to_metric_families(text):
            exported.add(fam.name)
            exported.update(s.name for s in fam.samples)
            if fam.type == "counter":
                exported.add(fam.name + "_total")
            elif fam.type == "histogram":
                exported.update(fam.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    recorded = {
        rule["record"]
        for group in yaml.safe_load((RULES / "recording.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    missing = [
        (where, name)
        for where, expr in queried()
        for name in sorted(metric_names(expr))
        if name not in exported and name not in recorded
    ]
    assert not missing, missing
    assert len(list(queried())) > 40

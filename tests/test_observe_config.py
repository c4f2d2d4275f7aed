"""Observability without a stack: the rules under promtool, the committed
dashboard against its generator, the tracing settings, and what tracing off
leaves out (no interceptor, no trace context in any payload)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mesh import keys, tracing
from mesh.internal.v1 import events_pb2
from mesh.settings import Settings
from stack import envoy_config, tokens
from stack.edge import validate
from stack.prometheus import Target, config

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=RULES, capture_output=True, text=True, timeout=120
    )


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", "recording.yml", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_keeps_it_silent() -> None:
    import yaml

    alerts = {
        r["alert"]
        for g in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    }
    fired: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load((RULES / "alerts_test.yml").read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else silent).add(check["alertname"])
    assert alerts == fired == silent


def test_the_committed_dashboard_is_what_the_generator_makes() -> None:
    fresh = subprocess.run(
        [sys.executable, "deploy/grafana/generate.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr


def test_scrape_config_has_a_job_per_service_and_envoys_stats_path() -> None:
    import yaml

    doc = yaml.safe_load(
        config(
            [
                Target("fanout_svc", "127.0.0.1:1", instance="fanout_svc#0"),
                Target("fanout_svc", "127.0.0.1:2", instance="fanout_svc#1"),
                Target("envoy", "127.0.0.1:3", "/stats/prometheus", "envoy"),
            ],
            [Path("r.yml")],
            1.0,
        )
    )
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert set(jobs) == {"fanout_svc", "envoy"}
    assert len(jobs["fanout_svc"]["static_configs"]) == 2
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    assert doc["rule_files"] == ["r.yml"]


# --- tracing settings and tracing off ----------------------------------------------
def test_tracing_is_off_by_default_and_adds_nothing() -> None:
    assert not tracing.setup("test", Settings())
    assert tracing.TRACER is None
    assert tracing.server_interceptors() == [] and tracing.client_interceptors() == []
    assert tracing.current_traceparent() == ""
    fix = events_pb2.PositionFix(latitude=1.0, longitude=2.0, recorded_at_ms=3)
    plain = events_pb2.LocationEvent(user_id="u", moved=fix, published_at_ms=4)
    assert keys.moved_event("u", fix, 4) == plain.SerializeToString()  # no extra byte


@pytest.mark.parametrize(
    ("name", "arg", "message"),
    [("sometimes", 1.0, "OTEL_TRACES_SAMPLER='sometimes'"), ("traceidratio", 2.0, "between 0")],
)
def test_a_bad_sampler_is_named_in_the_error(name: str, arg: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tracing.sampler(name, arg)


def test_sampled_contexts_travel_as_w3c_traceparents() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    assert tracing.setup("test", Settings(traces_sampler="always_on"), exporter=exporter)
    try:
        span = tracing.publish_span("00-" + "ab" * 16 + "-" + "cd" * 8 + "-01", "u")
        assert span is not None
        tp = tracing.traceparent(span)
        assert tp.startswith("00-" + "ab" * 16 + "-") and tp.endswith("-01")
        span.end()
        (link,) = tracing.links([tp, ""])
        assert f"{link.context.span_id:016x}" == tp.split("-")[2]
    finally:
        tracing.shutdown()
    assert tracing.TRACER is None
    assert [s.name for s in exporter.get_finished_spans()] == ["location publish"]
    off = tracing.sampler("traceidratio", 0.0)
    assert off.should_sample(None, 1, "x").decision.name == "DROP"


def test_envoy_joins_the_trace_only_when_tracing_is_on(tmp_path: Path) -> None:
    key = tokens.load_or_create(tmp_path)
    off = envoy_config.build(envoy_config.from_settings(Settings(), jwks_path=str(key.jwks_path)))
    hcm = off["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    assert "tracing" not in hcm["typed_config"]
    on = envoy_config.from_settings(
        Settings(otlp_endpoint="http://127.0.0.1:4317", traces_sampler_arg=0.01),
        jwks_path=str(key.jwks_path),
    )
    doc = envoy_config.build(on)
    tracing_cfg = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]["tracing"]
    assert tracing_cfg["random_sampling"] == {"value": 1.0}
    assert "opentelemetry_collector" in [c["name"] for c in doc["static_resources"]["clusters"]]
    ok, output = validate(envoy_config.write(on, tmp_path / "envoy.yaml"))
    assert ok, output

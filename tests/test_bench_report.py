"""The benchmark's report and capacity code (no timing: the inputs are fixed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import capacity, cluster, report, stats
from bench.config import Config


def results(**scenarios: Any) -> dict[str, Any]:
    base: dict[str, Any] = {name: stats.not_measured("not selected") for name in report.TITLES}
    base.update(scenarios)
    return {"date": "2026-01-01 00:00 UTC", "machine": {"cores": 2}, "scenarios": base}


def test_median_and_paired_ratios() -> None:
    runs = [
        {"x": 1.0, "n": 3, "d": {"p": 5.0}},
        {"x": 3.0, "n": 1, "d": {"p": 1.0}},
        {"x": 2.0, "n": 2, "d": {"p": 3.0}},
    ]
    assert stats.median_of(runs) == {"x": 2.0, "n": 2, "d": {"p": 3.0}}
    ceilings = [{"y": 2.0}, {"y": 3.0}, {"y": 4.0}]
    s = stats.scenario(runs, ceilings, {"r": ("x", "y")})
    assert s["ratios"]["r"] == 0.5  # median of 0.5, 1.0, 0.5
    assert s["ceiling"]["median"] == {"y": 3.0}


def test_targets_report_met_missed_and_not_measured() -> None:
    r = results(
        fanout=stats.scenario([{"updates_per_cpu_s": 80_000.0}]),
        history=stats.scenario(
            [{"rows_per_s": 300.0}],
            [{"rows_per_s": 400.0}],
            {"per_s": ("rows_per_s", "rows_per_s")},
        ),
    )
    by_name = {t["name"]: t for t in report.targets(r)}
    fan = by_name["Fan-out, 10 updates per message (bench 1, an upper bound): updates per CPU-s"]
    assert fan["met"] is False and fan["verdict"] == "missed by 20%"
    hist = by_name["History: share of the bare COPY rate"]
    assert hist["met"] is True and hist["verdict"] == "met by 50%"
    lat = by_name["Latency p99 at 50% of max throughput"]
    assert lat["met"] is None and lat["measured"] == "not measured"


def test_capacity_table_never_guesses(tmp_path: Path) -> None:
    doc = tmp_path / "capacity.md"
    doc.write_text(f"# Model\n\nprose\n\n{capacity.BEGIN}\nold\n{capacity.END}\n\nmore prose\n")
    r = results(history=stats.scenario([{"rows_per_s": 100_000.0}], [{"rows_per_s": 200_000.0}]))
    capacity.update_doc(r, doc)
    text = doc.read_text()
    assert text.startswith("# Model\n\nprose\n") and text.endswith("more prose\n")
    assert "old" not in text
    lines = {x.what: x for x in capacity.model(r)}
    # 334,000 / (100,000 * 0.6) = 5.57 -> 6 writers; 334,000 / (200,000 * 0.6) -> 3 nodes
    assert lines["history writer processes (location_svc writers)"].result == "**6**"
    assert (
        "**3**" in lines["Postgres primaries for 334K history rows/s (sharded by user_id)"].result
    )
    assert all(
        x.result == "not measured" for name, x in lines.items() if name.startswith("fan-out")
    )
    assert lines["Envoy cores"].value is None


def test_docs_show_not_measured_with_the_reason(tmp_path: Path) -> None:
    r = results()
    r["targets"] = report.targets(r)
    out = report.write_docs(r, tmp_path / "benchmarks.md")
    text = out.read_text()
    assert "Not measured: not selected." in text
    assert report.chart(r, tmp_path / "x.png") is None


def brief_level(flush_ms: float, per_cpu: float, per_msg: float, p50: float) -> dict[str, Any]:
    m = {
        "updates_per_cpu_s": per_cpu,
        "updates_per_message": per_msg,
        "process_busy": 0.5,
        "latency_ms": {"p50": p50, "p99": p50 * 3},
        "delivered_share": 1.0,
        "hub_messages_per_update": 1.0,
        "redis_cpu_us_per_update": 4.0,
    }
    return {"flush_ms": flush_ms, "runs": [m], "median": m, "ratios": {"per_cpu_s": 0.8}}


def brief_results() -> dict[str, Any]:
    bare = {"updates_per_cpu_s": 25_000.0, "latency_ms": {"p50": 2.0, "p99": 5.0}}
    return {
        "status": "measured",
        "shape": {"streams": 3000, "friends_per_stream": 40, "period_s": 30.0},
        "ceiling": {"runs": [bare], "median": bare},
        "levels": [brief_level(5.0, 20_000.0, 1.02, 8.0), brief_level(1000.0, 30_000.0, 1.7, 600)],
        "default_flush_ms": 5.0,
    }


def test_capacity_prices_the_fan_out_from_the_brief_shape_at_the_default_window() -> None:
    r = results(brief=brief_results())
    lines = capacity.model(r)
    first = lines[0]
    assert "FANOUT_FLUSH_MS=5" in first.what and "default" in first.what
    # 14,000,000 / (20,000 * 0.6) = 1,166.7 -> 1,167
    assert first.result == "**1,167**"
    assert "FANOUT_FLUSH_MS=1000" in lines[1].what and lines[1].result == "**778**"
    rows = report.rows_of("brief", r["scenarios"]["brief"])
    labels = [label for label, *_ in rows]
    assert any(lbl.startswith("window 5 ms (default):") for lbl in labels)
    assert any(lbl.startswith("window 1000 ms:") for lbl in labels)
    by_name = {t["name"]: t for t in report.targets(r)}
    t = next(v for k, v in by_name.items() if k.startswith("Fan-out at the brief's shape"))
    assert t["met"] is False and t["value"] == 0.8


def test_cluster_figures_per_master_spread_and_ratio_to_standalone(tmp_path: Path) -> None:
    assert cluster.spread({"redis-1": 2.0, "redis-2": 1.0}) == 2.0
    assert cluster.spread({"redis-1": 2.0}) is None

    def engine(masters: int, per_cpu: float, per_master: dict[str, float]) -> dict[str, Any]:
        fig = {
            "updates_per_cpu_s": per_cpu,
            "redis_cpu_us_per_update": 4.0 / max(1, masters),
            "redis_cpu_per_master_s": per_master,
            "redis_spread": cluster.spread(per_master),
            "redis_cpu_us_per_update_per_shard": 2.0,
            "redis_cpu_us_per_update_max_shard": 2.5,
        }
        part = {"status": "measured", "runs": [fig], "median": fig}
        return {"masters": masters, "ingest": part, "fanout": part}

    s = {
        "status": "measured",
        "engines": [
            engine(0, 10_000.0, {"redis": 1.0}),
            engine(2, 12_000.0, {"redis-7001": 0.6, "redis-7002": 0.4}),
            {"masters": 3, "ingest": stats.not_measured("x"), "fanout": stats.not_measured("y")},
        ],
    }
    rows = {label: (v, c, ratio) for label, v, c, ratio in report.rows_of("cluster", s)}
    v, c, ratio = rows["2 masters: ingest: updates per mesh CPU-s"]
    assert (v, c, ratio) == (12_000.0, 10_000.0, 1.2)
    assert rows["2 masters: ingest: Redis CPU-s per master"][0] == "0.60 / 0.40 (max/min 1.50)"
    assert rows["3 masters: ingest"][0] == "not measured: x"
    r = results(cluster=s)
    r["targets"] = report.targets(r)
    text = report.write_docs(r, tmp_path / "benchmarks.md").read_text()
    assert (
        "| 2 masters: fan-out (1b, default window): Redis CPU µs per delivered update per " in text
    )


def test_config_overrides_parse_like_the_field() -> None:
    cfg = Config.make(quick=True)
    cfg.override(["idle_streams=123", "brief_windows=5,50", "brief_period_s=2.5"])
    assert (cfg.idle_streams, cfg.brief_windows, cfg.brief_period_s) == (123, (5.0, 50.0), 2.5)


def test_tracing_modes_rotate_and_set_the_otel_settings() -> None:
    from bench import tracing
    from bench.fanout import traced_share
    from mesh.settings import Settings

    assert [tracing.rotated(i) for i in range(4)] == [
        ["off", "sampled", "on"],
        ["sampled", "on", "off"],
        ["on", "off", "sampled"],
        ["off", "sampled", "on"],
    ]
    shares = {}
    for mode in tracing.MODES:
        env = tracing.mode_env(mode, "http://127.0.0.1:4317", 0.01)
        shares[mode] = traced_share(Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "x", **env}))
    # "off" wins over an endpoint in the environment; the publisher's share follows the sampler
    assert shares == {"off": 0.0, "sampled": 0.01, "on": 1.0}


def test_tracing_ratios_are_paired_per_round_and_reported() -> None:
    from bench import tracing

    def mode(rate: float, spans: int = 0) -> dict[str, Any]:
        return {"updates_per_cpu_s": rate, "spans": spans, "latency_ms": {"p50": 5.0, "p99": 9.0}}

    rounds = [
        {"off": mode(100.0), "sampled": mode(95.0, 10), "on": mode(50.0, 900)},
        {"off": mode(200.0), "sampled": mode(200.0, 12), "on": mode(80.0, 1000)},
        {"off": mode(150.0), "sampled": mode(120.0, 11), "on": mode(60.0, 950)},
    ]
    ceiling = [
        {"updates_per_cpu_s": 200.0},
        {"updates_per_cpu_s": 250.0},
        {"updates_per_cpu_s": 300.0},
    ]
    part = tracing.summary(rounds, ceiling, "updates_per_cpu_s")
    # per round: sampled 0.95, 1.0, 0.8; on 0.5, 0.4, 0.4 (a ratio of medians would say 0.8)
    assert part["ratios"] == {"sampled": 0.95, "on": 0.4}
    assert part["off_vs_ceiling"] == 0.5  # 0.5, 0.8, 0.5
    part["latency"] = {m: {"p50": 5.0, "p99": 9.0} for m in tracing.MODES}
    s = {
        "status": "measured",
        "sample": 0.01,
        "runs": rounds,
        "fanout": part,
        "brief": part,
        "hooks": {"ns_per_update": 20.0, "share_of_update_cpu": 0.002},
    }
    rows = {label: (v, c, r) for label, v, c, r in report.rows_of("tracing", s)}
    sampled = "the brief's shape (1b, default window), tracing sampled 1%"
    label = next(x for x in rows if x.startswith(sampled))
    assert "11 spans exported" in label and rows[label] == (120.0, 150.0, 0.95)
    by_name = {t["name"]: t for t in report.targets(results(tracing=s))}
    sampled_target = by_name[
        "Tracing sampled at 1 % (bench 7, the brief's shape): updates per CPU-s / tracing off, "
        "same round"
    ]
    assert sampled_target["met"] is True and sampled_target["measured"] == "0.95x"
    off = by_name["Tracing off (bench 7): its flag tests / the fan-out's CPU per update"]
    assert off["met"] is True and off["value"] == 0.2
    assert (
        "tracing" in tracing.notes({**s, "brief": {**part, "ratios": {"sampled": 0.5}}})[0].lower()
    )


def test_tracing_hook_statements_run_and_are_timed() -> None:
    from bench import tracing

    ns = tracing.hook_ns(repeat=2, number=20_000)
    assert 0.0 <= ns < 10_000  # a few attribute tests, whatever the machine's load
    span = tracing.span_us(n=50)
    assert span["spans"] == 50  # every span made was encoded, none dropped
    assert span["create_end_us"] > 0 and span["encode_us"] > 0

"""The benchmark's report and capacity code (no timing: the inputs are fixed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import capacity, report, stats


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
    fan = by_name["Fan-out: friend updates per fan-out CPU-second"]
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

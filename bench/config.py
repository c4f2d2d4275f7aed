"""Sizes of every scenario, full and quick (`--set FIELD=VALUE` overrides one)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mesh.settings import Settings


@dataclass
class Config:
    quick: bool = False
    runs: int = 3
    # the two longest scenarios (1b, 3) repeat fewer times (`--runs` sets them too)
    long_runs: int = 2
    # 1. fan-out: connected streams, mover users, movers per stream, rounds per run
    fanout_streams: int = 2000
    fanout_movers: int = 1000
    fanout_friends: int = 10
    fanout_rounds: int = 20
    fanout_single_rounds: int = 100  # rounds of the one-update-per-stream variant
    # 1b. the brief's shape: streams, nearby friends each, seconds between a
    # friend's reports, local subscribers per friend, flush windows (ms; the
    # first is the services' default), seconds of warm-up and of measurement
    brief_streams: int = 3000
    brief_friends: int = 40
    brief_period_s: float = 30.0
    brief_share: int = 1
    brief_windows: tuple[float, ...] = (Settings().fanout_flush_ms, 50.0, 250.0, 1000.0)
    brief_warmup_s: float = 8.0
    brief_seconds: float = 15.0
    # 2. latency: seconds per load level, probe senders, probe interval
    latency_levels: tuple[int, ...] = (10, 25, 50, 75)
    latency_seconds: float = 8.0
    latency_probes: int = 20
    latency_probe_interval_s: float = 0.25
    latency_fanout_replicas: int = 0  # 0 = one per core, as `nearby run`
    # 3. streams: the cap of the ramp to failure, the storm, the ramp's step,
    # the time bound of one run (seconds)
    idle_streams: int = 40_000
    idle_storm: int = 10_000
    idle_step: int = 10_000
    idle_time_limit_s: float = 300.0
    # 4. ingest: streams sending, seconds per run, interval between one stream's updates
    ingest_streams: int = 1000
    ingest_seconds: float = 8.0
    ingest_interval_s: float = 0.05
    # 5. history rows per run
    history_rows: int = 200_000
    # 6. Redis Cluster runs (--redis-cluster): master counts, runs per engine
    redis_cluster: tuple[int, ...] = ()
    cluster_runs: int = 1
    # privacy mix (bench/privacy.py): scenarios 1 and 1b also measure, in the
    # same run, with this share of movers approximate and selected-only
    privacy_compare: bool = True
    privacy_approximate: float = 0.2
    privacy_only: float = 0.1
    # 7. tracing: the share of new traces the "sampled" mode samples
    tracing_sample: float = 0.01
    # --profile: extra py-spy runs (brief, ingest)
    profile: bool = False
    # filled while running
    results: dict[str, Any] = field(default_factory=dict, repr=False)
    h_logs: str = ""

    @classmethod
    def make(cls, *, quick: bool, runs: int = 0) -> Config:
        if quick:
            c = cls(
                quick=True,
                runs=2,
                long_runs=1,
                fanout_streams=1000,
                fanout_movers=500,
                fanout_rounds=12,
                fanout_single_rounds=40,
                brief_streams=1500,
                brief_seconds=8.0,
                brief_warmup_s=3.0,
                latency_seconds=4.0,
                idle_streams=4000,
                idle_storm=2000,
                idle_step=1000,
                idle_time_limit_s=120.0,
                ingest_streams=500,
                ingest_seconds=4.0,
                history_rows=100_000,
            )
        else:
            c = cls()
        if runs:
            c.runs = c.long_runs = runs
        return c

    def override(self, assignments: list[str]) -> None:
        """Apply `field=value` strings (a tuple field takes comma-separated values)."""
        for item in assignments:
            name, sep, raw = item.partition("=")
            current = getattr(self, name, None)
            if not sep or name in ("results", "h_logs") or current is None:
                raise ValueError(f"--set {item}: not a FIELD=VALUE of bench/config.py")
            if isinstance(current, tuple):
                kind = type(current[0]) if current else float
                value: Any = tuple(kind(v) for v in raw.split(",") if v)
            elif isinstance(current, bool):
                value = raw.lower() in ("1", "true", "yes")
            else:
                value = type(current)(raw)
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("results", "h_logs")
        }

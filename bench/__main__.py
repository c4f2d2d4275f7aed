"""`make bench` / `python -m bench`: every scenario, its ceiling, the report.

    python -m bench                 # all scenarios (about 40 min on 2 busy cores)
    python -m bench --quick         # smaller and shorter (a few minutes)
    python -m bench --only history,ingest --runs 2
    python -m bench --only brief --redis-cluster 1,2,3   # + ingest and fan-out on clusters

Writes bench/results/latest.json, docs/bench-latency.png, docs/benchmarks.md
and the table of docs/capacity.md. A scenario that cannot run (a service
missing, an error) is reported as "not measured" with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import importlib.metadata
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import capacity, report
from bench.config import Config
from bench.harness import harness
from bench.procstat import machine
from bench.stats import not_measured

ORDER = ("history", "ingest", "fanout", "brief", "latency", "streams", "cluster", "tracing")


def _cmd_version(argv: list[str], pattern: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        m = re.search(pattern, out.stdout + out.stderr)
        return m.group(1) if m else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def versions() -> dict[str, str]:
    from stack import infra

    v: dict[str, str] = {"Python": platform.python_version()}
    for dist in ("grpcio", "protobuf", "redis", "hiredis", "psycopg", "uvloop"):
        try:
            v[dist if dist != "redis" else "redis-py"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            v[dist] = "not installed"
    try:
        v["Redis"] = _cmd_version([infra.find_binary("redis-server"), "--version"], r"v=(\S+)")
        v["Postgres"] = _cmd_version([infra.find_binary("postgres"), "--version"], r"(\d+\.\d+)")
    except FileNotFoundError:
        pass
    try:
        from stack.edge import envoy_binary

        v["Envoy"] = _cmd_version([envoy_binary(), "--version"], r"/(\d+\.\d+\.\d+)/")
    except (ImportError, FileNotFoundError):
        v["Envoy"] = "not installed"
    return v


def run_scenario(name: str, h: Any, cfg: Config, console: Console) -> dict[str, Any]:
    console.print(f"[bold cyan]▶ {report.TITLES[name]}[/]")
    t0 = time.monotonic()
    try:
        module = importlib.import_module(f"bench.{name}")
        result: dict[str, Any] = asyncio.run(module.run(h, cfg))
    except Exception as exc:
        (h.logs / f"{name}.error.txt").write_text(traceback.format_exc())
        console.print(f"[red]  not measured: {type(exc).__name__}: {exc}[/]")
        return not_measured(f"{type(exc).__name__}: {exc}".strip()[:300])
    result["wall_s"] = round(time.monotonic() - t0, 1)
    console.print(f"  done in {result['wall_s']} s")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smaller, shorter runs")
    p.add_argument(
        "--runs", type=int, default=0, help="repetitions per scenario (default 3, quick 2)"
    )
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(ORDER)}")
    p.add_argument("--out", type=Path, default=report.RESULTS, help="JSON output")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/ (JSON only)")
    p.add_argument("--keep", action="store_true", help="keep the data folder (logs) afterwards")
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the other scenarios' results from --out (each keeps its own date)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="add py-spy runs (not measured): the fan-out at the brief's shape, and ingest",
    )
    p.add_argument(
        "--redis-cluster",
        default="",
        metavar="N,N,...",
        help="also run ingest and the brief-shaped fan-out on Redis Clusters of these many "
        "masters (plus standalone), e.g. 1,2,3",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a size of bench/config.py, e.g. --set idle_streams=2000 (repeatable)",
    )
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()] or list(ORDER)
    try:
        masters = tuple(int(x) for x in args.redis_cluster.split(",") if x.strip())
    except ValueError:
        p.error(f"--redis-cluster {args.redis_cluster}: a comma-separated list of master counts")
    if any(m < 1 for m in masters):
        p.error("--redis-cluster: every master count must be at least 1")
    if masters and "cluster" not in only:
        only.append("cluster")
    unknown = set(only) - set(ORDER)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    cfg = Config.make(quick=args.quick, runs=args.runs)
    cfg.redis_cluster = masters
    cfg.profile = args.profile
    try:
        cfg.override(args.set)
    except ValueError as exc:
        p.error(str(exc))
    console = Console()
    started = time.monotonic()
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "config": cfg.as_dict(),
        "scenarios": {},
    }
    console.print(
        f"nearby benchmark: {results['machine']}, {cfg.runs} runs per scenario "
        f"({cfg.long_runs} for 1b and 3)"
    )
    root = Path(tempfile.mkdtemp(prefix="nearby-bench-"))
    earlier: dict[str, Any] = {}
    if args.merge and args.out.exists():
        earlier = json.loads(args.out.read_text()).get("scenarios", {})
    with harness(root) as h:
        cfg.h_logs = str(h.logs)
        for name in ORDER:
            if name in only:
                results["scenarios"][name] = run_scenario(name, h, cfg, console)
                results["scenarios"][name]["date"] = results["date"]
                results["scenarios"][name]["config"] = cfg.as_dict()
            elif name in earlier:
                results["scenarios"][name] = earlier[name]
            else:
                results["scenarios"][name] = not_measured("not selected in this run (--only)")
            # later scenarios use the max throughput of the fan-out scenario
            cfg.results = results
    results["wall_s"] = round(time.monotonic() - started, 1)
    results["targets"] = report.targets(results)
    results["notes"] = notes(results)
    report.write_json(results, args.out)
    report.print_tables(results, console)
    if not args.no_docs:
        report.chart(results)
        report.write_docs(results)
        capacity.update_doc(results)
        console.print(f"wrote {args.out}, {report.DOC}, {report.CHART}, {capacity.DOC}")
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    else:
        console.print(f"data and logs kept in {root}")
    return 0


def notes(results: dict[str, Any]) -> list[str]:
    """Each scenario may add its own explanation of a missed target."""
    out: list[str] = []
    for name in ORDER:
        s = results["scenarios"].get(name, {})
        out += s.get("missed_notes", [])
    return out


if __name__ == "__main__":
    sys.exit(main())

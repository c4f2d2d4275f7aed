"""py-spy profiles of running services, summarised for the report.

`profile(pid, seconds)` samples a process without pausing it
(`py-spy record --nonblocking --format raw`; idle threads are not sampled, so
shares are of the time the process was running) and returns where its time
goes: the functions most often on top of the stack (self time), the
project's own functions and any function most often anywhere on the stack
(inclusive time). `native=True` also unwinds Cython/C frames (grpc's cygrpc,
protobuf's upb), which shows what a Python frame's self time is made of; it
has to pause the process for each sample, so it costs the process more.

    python -m bench.profile --pid PID --seconds 15 [--native] [--out FILE]
    python -m bench.profile --raw FILE          # summarise a recorded profile
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")
OWN = ("fanout_svc/", "location_svc/", "presence_svc/", "friend_svc/", "mesh/")
# frames at the root of every sample of their thread: no information
_ENTRY = (
    "run (asyncio/runners.py)",
    "Runner.run (asyncio/runners.py)",
    "main (",
    "<module> (",
    "_run_module_as_main (",
    "_run_code (",
    "Thread._bootstrap (",
    "Thread._bootstrap_inner (",
)


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def _name(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), ""
    path = m.group("file")
    short = "/".join(path.split("/")[-2:])
    return f"{m.group('func')} ({short})", path


def summarise(raw: str, top: int = 6) -> dict[str, Any]:
    leaf: Counter[str] = Counter()
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    thread: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        leaf[frames[-1][0]] += n
        thread[_thread_of([name for name, _ in frames])] += n
        for name in {name for name, _ in frames if not name.startswith(_ENTRY)}:
            anywhere[name] += n
        for name in {
            name
            for name, path in frames
            if any(o in path for o in OWN) and not name.startswith(("main (", "<module> ("))
        }:
            own[name] += n
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "self": [(k, round(v / total, 3)) for k, v in leaf.most_common(top)],
        "inclusive_own": [(k, round(v / total, 3)) for k, v in own.most_common(top)],
        "inclusive": [(k, round(v / total, 3)) for k, v in anywhere.most_common(top * 3)],
        "threads": [(k, round(v / total, 3)) for k, v in thread.most_common(top)],
    }


def _thread_of(names: list[str]) -> str:
    """The event loop, or a thread named by the first frame below Thread.run
    (grpc's completion-queue poller has none: its body is Cython)."""
    for i, name in enumerate(names):
        if name.startswith("Thread.run ("):
            below = [x for x in names[i + 1 :] if not x.startswith("0x")]
            return f"thread {below[0]}" if below else "thread (native code)"
    return "event loop"


async def profile(
    pid: int, seconds: float, out: Path, rate: int = 100, *, native: bool = False
) -> dict[str, Any]:
    """Sample `pid` for `seconds`; {} when py-spy is unavailable or fails."""
    exe = py_spy()
    if exe is None:
        return {}
    proc = await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", str(rate), "--format", "raw", "--output", str(out),
        # py-spy cannot unwind native frames without pausing the process
        *(("--native",) if native else ("--nonblocking",)),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await proc.wait()
    if proc.returncode != 0:
        return {}
    try:
        raw = await asyncio.to_thread(out.read_text)
    except OSError:
        return {}
    return summarise(raw)


def describe(name: str, prof: dict[str, Any]) -> str:
    """One sentence for the report."""
    if not prof.get("samples"):
        return ""
    own = ", ".join(f"{k} {v:.0%}" for k, v in prof["inclusive_own"][:6])
    leaf = ", ".join(f"{k} {v:.0%}" for k, v in prof["self"][:8])
    threads = ", ".join(f"{k} {v:.0%}" for k, v in prof.get("threads", [])[:4])
    return (
        f"py-spy on {name} ({prof['samples']} samples): threads: {threads}; its own code on "
        f"the stack: {own}; top of the stack (self time): {leaf} (asyncio/runners.py = the "
        "event loop itself, i.e. uvloop and its system calls)."
    )


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--pid", type=int, default=0, help="process to sample")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--native", action="store_true", help="unwind Cython/C frames too")
    p.add_argument("--out", type=Path, default=Path("profile.pyspy"), help="raw samples file")
    p.add_argument("--raw", type=Path, help="summarise this recorded file instead")
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args(argv)
    if args.raw:
        summary = summarise(args.raw.read_text(), args.top)
    elif args.pid:
        asyncio.run(profile(args.pid, args.seconds, args.out, native=args.native))
        summary = summarise(args.out.read_text(), args.top) if args.out.exists() else {}
    else:
        p.error("give --pid or --raw")
    print(json.dumps(summary, indent=1))
    return 0 if summary.get("samples") else 1


if __name__ == "__main__":
    raise SystemExit(main())

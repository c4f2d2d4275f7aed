"""py-spy profiles of running services, summarised for the report.

`profile(pid, seconds)` samples a process without pausing it
(`py-spy record --nonblocking --format raw`) and returns where its time goes:
the functions most often on top of the stack (self time) and the project's own
functions most often anywhere on the stack (inclusive time).
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
    }


async def profile(pid: int, seconds: float, out: Path, rate: int = 100) -> dict[str, Any]:
    """Sample `pid` for `seconds`; {} when py-spy is unavailable or fails."""
    exe = py_spy()
    if exe is None:
        return {}
    proc = await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", str(rate), "--nonblocking", "--format", "raw", "--output", str(out),
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
    own = ", ".join(f"{k} {v:.0%}" for k, v in prof["inclusive_own"][:4])
    leaf = ", ".join(f"{k} {v:.0%}" for k, v in prof["self"][:4])
    return (
        f"py-spy on {name} ({prof['samples']} samples): its own code on the stack: {own}; "
        f"top of the stack (self time): {leaf} (asyncio/runners.py = the event loop itself, "
        "i.e. uvloop and its system calls)."
    )

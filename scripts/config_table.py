"""Write the README's configuration table from mesh.settings.Settings.

`--check` (part of `make test`) fails when the table is stale, so every
environment variable the code reads is documented.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from mesh.settings import documented_variables

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- config:start -->", "<!-- config:end -->"


def table() -> str:
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for env, default, doc in documented_variables():
        shown = f"`{default}`" if default != "" else "(empty)"
        rows.append(f"| `{env}` | {shown} | {doc} |")
    return "\n".join(rows)


def render(text: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {START} ... {END} section")
    return pattern.sub(lambda _: f"{START}\n{table()}\n{END}", text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    current = README.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print("README configuration table is stale; run `python scripts/config_table.py`")
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Medians over repeated runs and ratios to ceilings measured in the same run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def median_of(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Field-wise median of numeric fields (nested dicts too); other fields
    are taken from the first run."""
    if not runs:
        return {}
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [r[key] for r in runs if key in r]
        if isinstance(first, bool):
            out[key] = all(values) if key.startswith("ok") else first
        elif isinstance(first, (int, float)):
            nums = [v for v in values if isinstance(v, (int, float))]
            out[key] = statistics.median(nums) if nums else first
        elif isinstance(first, dict):
            out[key] = median_of([v for v in values if isinstance(v, dict)])
        else:
            out[key] = first
    return out


def ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def median_ratio(
    runs: Sequence[dict[str, Any]], ceilings: Sequence[dict[str, Any]], key: str, ceiling_key: str
) -> float:
    """Median of per-run ratios scenario[key] / ceiling[ceiling_key] (runs paired)."""
    pairs = [
        ratio(r.get(key, 0.0), c.get(ceiling_key, 0.0))
        for r, c in zip(runs, ceilings, strict=False)
    ]
    return statistics.median(pairs) if pairs else 0.0


def scenario(
    runs: list[dict[str, Any]],
    ceiling_runs: list[dict[str, Any]] | None = None,
    ratios: dict[str, tuple[str, str]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON of a measured scenario: runs, medians, paired ratios."""
    out: dict[str, Any] = {"status": "measured", "runs": runs, "median": median_of(runs)}
    if ceiling_runs is not None:
        out["ceiling"] = {"runs": ceiling_runs, "median": median_of(ceiling_runs)}
    if ratios and ceiling_runs:
        out["ratios"] = {
            name: round(median_ratio(runs, ceiling_runs, k, ck), 3)
            for name, (k, ck) in ratios.items()
        }
    out.update(extra)
    return out


def not_measured(reason: str) -> dict[str, Any]:
    return {"status": "not measured", "reason": reason}

"""Latency summaries: nearest-rank percentiles over every sample of a window."""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def summary(samples: Sequence[float]) -> dict[str, float | int]:
    """n, mean, p50, p90, p99, p99.9 and max of `samples` (seconds in), milliseconds out."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    out: dict[str, float | int] = {"n": len(ordered)}
    out["mean_ms"] = round(1000 * sum(ordered) / len(ordered), 4)
    for p in PERCENTILES:
        out[f"p{p:g}_ms"] = round(1000 * percentile(ordered, p), 4)
    out["max_ms"] = round(1000 * ordered[-1], 4)
    return out


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted samples (p99.9 needs >= 1000 of them)."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]

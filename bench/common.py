"""Shared helpers for benchmarks: timing, percentiles, the real-data files, tables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Fastest wall time of `repeat` calls, in seconds (the least noisy single figure)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def percentile(values: list[float], q: float) -> float:
    """q in [0, 100], linear interpolation."""
    if not values:
        return float("nan")
    return (
        statistics.quantiles(sorted(values), n=100, method="inclusive")[int(q) - 1]
        if len(values) > 1
        else values[0]
    )


def p50_p95(values: list[float], digits: int = 2) -> tuple[str, str]:
    """The median and the 95th percentile, formatted for a latency table."""
    return f"{percentile(values, 50):.{digits}f}", f"{percentile(values, 95):.{digits}f}"


def table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def real_file(name: str) -> Path | None:
    """A file from ../shared/data, or None where this checkout has no shared data."""
    p = SHARED_DATA / name
    return p if p.exists() else None

"""Shared helpers for benchmarks: timing, percentiles, the real-data files, tables, the bare
Unix-socket floor, and what the live benches share (pulse personalities, signal timing)."""

from __future__ import annotations

import datetime as dt
import socket
import statistics
import subprocess
import sys
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


def pcts(
    values: list[float], qs: tuple[int, ...] = (50, 95, 99), digits: int = 0, scale: float = 1000.0
) -> list[str]:
    """Percentiles `qs` of `values` times `scale` (default: seconds shown as ms), formatted;
    "–" for each when there are no values."""
    if not values:
        return ["–"] * len(qs)
    return [f"{percentile(values, q) * scale:.{digits}f}" for q in qs]


def table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def real_file(name: str) -> Path | None:
    """A file from ../shared/data, or None where this checkout has no shared data."""
    p = SHARED_DATA / name
    return p if p.exists() else None


# -- the bare Unix-socket floor ------------------------------------------------------------

_ECHO = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
f = s.makefile("rb")
for line in f:
    s.sendall(line)
"""


def uds_one_way(tmp: Path, line: bytes, n: int = 3000, warmup: int = 200) -> list[float]:
    """One-way times (RTT / 2, seconds) of `line` over a bare Unix socket to an echoing child
    process and back, `n` round trips after `warmup`: the least any hand-off between two
    processes on this machine costs. `tmp`: a directory for the socket."""
    path = str(tmp / "pingpong.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    child = subprocess.Popen([sys.executable, "-c", _ECHO, path])
    conn, _ = srv.accept()
    rtts = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        conn.sendall(line)
        got = b""
        while not got.endswith(b"\n"):
            got += conn.recv(65536)
        if i >= warmup:
            rtts.append(time.perf_counter() - t0)
    conn.close()
    child.wait(10)
    srv.close()
    Path(path).unlink(missing_ok=True)
    return [r / 2 for r in rtts]


# -- live benches: signals often enough to time, and when each arrived -----------------------

# Bench-only personalities, each a coin that flips often: a signal fires when a side becomes
# active, so each fires on about half the minutes; three nearly independent coins leave about
# one minute in eight without a signal.
PULSES = {
    "pulse_body": ("close > open", "close < open"),
    "pulse_volume": ("rising(volume)", "falling(volume)"),
    "pulse_range": ("rising(high - low)", "falling(high - low)"),
}


def pulse_files(home: Path) -> list[Path]:
    """The `PULSES` personalities written to `home` (paths to list under `personalities:`)."""
    files = []
    for name, (up, down) in PULSES.items():
        files.append(home / f"{name}.yaml")
        files[-1].write_text(
            f"name: {name}\n"
            'description: "Bench only: a signal most minutes."\n'
            "timeframes: [1m]\nthreshold: 0.5\ncooldown: none\nemit_degraded: true\nrules:\n"
            f'  - {{name: up, when: "{up}", direction: long, weight: 1, reason: "{up}"}}\n'
            f'  - {{name: down, when: "{down}", direction: short, weight: 1, reason: "{down}"}}\n'
        )
    return files


def close_of(msg: dict) -> dt.datetime:
    """A signal message's close_time."""
    return dt.datetime.fromisoformat(msg["close_time"].replace("Z", "+00:00"))


def first_per_candle(
    received: list[tuple[float, dict]], started: dt.datetime
) -> list[tuple[float, dict]]:
    """The first signal to arrive for each candle that closed a minute after `started` (the
    first minute is the warm-up)."""
    first: dict[dt.datetime, tuple[float, dict]] = {}
    for recv, msg in received:
        close = close_of(msg)
        if close > started + dt.timedelta(minutes=1) and close not in first:
            first[close] = (recv, msg)
    return list(first.values())

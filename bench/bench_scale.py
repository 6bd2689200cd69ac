"""The live path as symbols grow: latency, CPU and run overlap at 1, 10, 50, 100 (200) symbols.

For each size N, a real `dagster-daemon` runs the `live_candles` sensor against the replay
exchange on the wall clock serving a generated universe of N USDT perpetuals
(`ReplayExchange(symbols=["N"])`, the config listing them under `exchanges: {bybit: ...}`),
with `history_days: 0`: the first run catches up from today's midnight (the warm-up), then one
live run per minute ingests N candles and rebuilds, for every symbol, only what they change
(pipeline/candles/tail.py: the buckets that closed, their indicators over the derived warm-up,
their signals). Measured per size, over `BENCH_SCALE_MINUTES` live minutes:

- close → committed in DuckDB (the klines asset's latency records) and close → run ended
  (Dagster's run record: candles, indicators, signals and their checks included), p50/p95;
- CPU seconds per live minute of the daemon's whole process tree (sensor, run queue,
  forkserver, runs; a finished run's CPU is counted in its reaping parent), by psutil;
- overlap: how many live runs were still running when the next minute's run was requested
  (the sensor's runs go one at a time, so such a run waits in the queue).

The baseline is the 1-symbol row of the same run. The 1m indicators' warm-up window still grows
with the minutes already in the day (the derived warm-up starts before the day's first bar), so
the time of day is printed beside each row.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

TITLE = "Live path as symbols grow: close → committed, CPU per minute, overlapping runs"
SIZES = [int(n) for n in os.environ.get("BENCH_SCALE_SIZES", "1,10,50,100").split(",")]
MINUTES = int(os.environ.get("BENCH_SCALE_MINUTES", "3"))  # live minutes measured per size


def _tree_cpu(pid: int) -> float:
    """CPU seconds used so far by `pid` and its descendants (the reaped ones included)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _runs(dagster_home: str) -> list[Any]:
    """The live-mode runs the sensor requested, oldest first."""
    import dagster as dg

    from pipeline.orchestration import tags

    with dg.DagsterInstance.from_config(dagster_home) as inst:
        recs = inst.get_run_records(
            dg.RunsFilter(tags={tags.SENSOR: tags.LIVE_SENSOR, tags.MODE: tags.LIVE})
        )
    return sorted(recs, key=lambda r: r.create_timestamp)


def measure(n: int, minutes: int = MINUTES) -> dict[str, Any]:
    """One size: a daemon for `minutes` live minutes after the warm-up; the figures."""
    from pipeline.markets import synthetic_universe
    from pipeline.replay import ReplayExchange
    from pipeline.runtime.latency import read
    from tests.daemon import Daemon, write_config

    symbols = synthetic_universe(n)[:n]
    with tempfile.TemporaryDirectory() as tmp, ReplayExchange(seed=7, symbols=[str(n)]) as ex:
        home = Path(tmp)
        cfg = write_config(home, {"exchanges": {"bybit": symbols}}, history_days=0)
        daemon = Daemon(home, ex, cfg).start()
        assert daemon.proc is not None
        full = lambda: [x for x in read(home, "ingest") if x.get("minutes") == n]  # noqa: E731
        cpu0 = t0 = None
        try:
            # warm-up: the catch-up from midnight and the first live minute
            deadline = time.monotonic() + 60 * (minutes + 8)
            while time.monotonic() < deadline and len(full()) < 1:
                time.sleep(1)
            cpu0, t0, seen = _tree_cpu(daemon.proc.pid), time.time(), len(full())
            while time.monotonic() < deadline and len(full()) < seen + minutes:
                time.sleep(1)
            cpu1, t1 = _tree_cpu(daemon.proc.pid), time.time()
        finally:
            daemon.stop()
        lines = full()[seen:] if t0 else []
        if not lines:
            raise RuntimeError(f"{n} symbols: no live run logged:\n{daemon.tail()}")
        runs = [r for r in _runs(daemon.env["DAGSTER_HOME"]) if r.create_timestamp.timestamp() > t0]
    ends = {r.dagster_run.run_id: r.end_time for r in runs}
    done = [ends[x["run_id"]] - x["close"] for x in lines if ends.get(x["run_id"])]
    overlaps = sum(
        1
        for a, b in itertools.pairwise(runs)
        if a.end_time and a.end_time > b.create_timestamp.timestamp()
    )
    return {
        "n": n,
        "at": dt.datetime.fromtimestamp(t0, dt.UTC),
        "committed": [x["committed_at"] - x["close"] for x in lines],
        "done": done,
        "cpu_per_min": (cpu1 - cpu0) / max((t1 - t0) / 60, 1e-9),
        "overlaps": overlaps,
        "pairs": max(len(runs) - 1, 0),
        "detected": _detected(runs),
        "detect": [x["requested_at"] - x["close"] for x in lines],
    }


def detection(n: int) -> tuple[float, float]:
    """One sensor tick's detection of the newest candles of `n` markets, seconds (best of 3):
    one REST request per market (the sensor without the fast lane; loopback, so no network
    round trip) against one read of the fast lane's record (pipeline.fastlane.newest)."""
    from bench.common import best_of
    from pipeline.config import load_settings
    from pipeline.exchanges import client
    from pipeline.exchanges.sources import replay_endpoint
    from pipeline.fastlane import newest
    from pipeline.markets import synthetic_universe
    from pipeline.replay import ReplayExchange
    from tests.daemon import replay_env

    symbols = synthetic_universe(n)[:n]
    with tempfile.TemporaryDirectory() as tmp, ReplayExchange(seed=7, symbols=[str(n)]) as ex:
        home = Path(tmp)
        env = {**replay_env(home, ex), "SIGNALBOX_SYMBOLS": ",".join(symbols)}
        settings = load_settings(env=env)
        c = client("bybit", settings, replay_endpoint(settings))
        try:
            rest = best_of(lambda: [c.latest_closed_open_time(s) for s in symbols])
            latest = {s: c.latest_closed_open_time(s) for s in symbols}
            now = c.server_time()
        finally:
            c.close()
        newest.write(home, "bybit", latest, now)
        names, expected = [f"bybit:{s}" for s in symbols], min(latest.values())
        record = best_of(lambda: newest.read(home, names, expected))
    return rest, record


def _detected(runs: list[Any]) -> str:
    """How the sensor found the newest candles (its `signalbox/detected` tag on the runs)."""
    seen = {r.dagster_run.tags.get("signalbox/detected", "rest") for r in runs}
    return "/".join(sorted(seen)) or "?"


def run() -> str:
    import subprocess

    from bench.common import p50_p95, percentile, table

    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    results = []
    for n in SIZES:
        print(f"  {n} symbol(s)…", flush=True)
        results.append({**measure(n), "detection": detection(n)})
    rows = []
    for r in results:
        rows.append(
            [
                r["n"],
                f"{r['at']:%H:%M}",
                *p50_p95(r["detect"], 2),
                *p50_p95(r["committed"], 1),
                *p50_p95(r["done"], 1),
                f"{r['cpu_per_min']:.1f}",
                f"{r['overlaps']}/{r['pairs']}",
                r["detected"],
                f"{r['detection'][0]:.3f}",
                f"{r['detection'][1] * 1000:.2f}",
            ]
        )
    header = [
        "symbols",
        "UTC",
        "requested p50 s",
        "requested p95 s",
        "committed p50 s",
        "committed p95 s",
        "run ended p50 s",
        "run ended p95 s",
        "CPU s / minute",
        "overlapping",
        "detected",
        "REST detection s",
        "record read ms",
    ]
    return (
        f"{MINUTES} live minutes per size (`BENCH_SCALE_MINUTES`) after a warm-up, replay "
        "exchange on the wall clock, `history_days: 0` (each live run rebuilds the buckets its "
        "minute closed; their indicators read the day's warm-up window: the UTC column says how "
        "much of the day there was). Latencies from the candle's "
        "close; CPU of the daemon's process tree per live minute (60 s = one core busy); "
        "overlapping = live runs still running when the next minute's run was requested; "
        "detected = how the daemon's sensor found the newest candles (no fast lane runs here, so "
        "REST); REST detection = one tick asking each market's newest candle over loopback REST, "
        "record read = the same from the fast lane's `newest.json` (best of 3). "
        f"Machine load when it started: `{load}`.\n\n"
        + table(header, rows)
        + "\n\n"
        + limit([_point(r, percentile) for r in results])
        + "\n\n"
        + _detection_note(results[-1])
    )


def _detection_note(r: dict[str, Any]) -> str:
    rest, record = r["detection"]
    return (
        f"Detection: one tick asking each market's newest candle over REST took {rest:.2f} s for "
        f"{r['n']} markets on loopback; at a real 50-150 ms round trip to the exchange that is "
        f"{r['n'] * 0.05:.0f}-{r['n'] * 0.15:.0f} s a tick. Reading the fast lane's record took "
        f"{record * 1000:.2f} ms. (The daemons here ran without the fast lane, so their sensor "
        "fell back to REST and said so: `detected: rest`.)"
    )


def _point(r: dict[str, Any], percentile: Any) -> dict[str, Any]:
    """One size's figures for `limit`."""
    done, committed = percentile(r["done"], 50), percentile(r["committed"], 95)
    return {"n": r["n"], "at": r["at"], "done": done, "committed": committed,
            "cpu": r["cpu_per_min"]}  # fmt: skip


def limit(points: list[dict[str, Any]]) -> str:
    """Where one machine's limit sits, from the two largest sizes: each added symbol's cost in
    run time and CPU, the size at which a live run takes a whole minute (the next minute's
    run then waits, and the queue grows), at the hour measured and at the day's end (taken as
    growing with the minutes already in the day, as the 1m indicators' warm-up window does: an
    upper bound, since the buckets rebuilt do not), and the projection to 500 symbols."""
    pts = sorted(points, key=lambda p: p["n"])
    base, (a, b) = pts[0], pts[-2:]
    if b["n"] == a["n"]:
        return "Too few sizes measured to place the limit."
    per = (b["done"] - a["done"]) / (b["n"] - a["n"])  # run seconds per added symbol
    cpu_per = (b["cpu"] - a["cpu"]) / (b["n"] - a["n"])
    at = b["at"]
    day_min = at.hour * 60 + at.minute or 1
    eod = 1440 / day_min  # the day's end against the hour measured
    n_now = b["n"] + (60 - b["done"]) / per if per > 0 else float("inf")
    per_eod = per * eod
    n_eod = b["n"] + (60 - (base["done"] + (b["done"] - base["done"]) * eod)) / per_eod
    n_core = b["n"] + (60 - b["cpu"]) / cpu_per if cpu_per > 0 else float("inf")
    done500 = b["done"] + per * (500 - b["n"])
    cpu500 = b["cpu"] + cpu_per * (500 - b["n"])
    return (
        f"**Where one machine's limit sits.** Close → committed p95 is {base['committed']:.1f} s "
        f"at {base['n']} symbol(s) and {b['committed']:.1f} s at {b['n']}: the N candles are one "
        "paced REST pool and one insert, and it grows only when a minute's run waits behind the "
        "previous one. "
        "What grows is the rest of the run: the buckets the minute closed, their indicators over "
        "the derived warm-up (for 1m: the day so far plus the warm-up) and their signals, for "
        f"every symbol: from {a['n']} to {b['n']} symbols each added symbol costs "
        f"{per:.2f} s of run time and {cpu_per:.2f} CPU s per minute at {at:%H:%M} UTC "
        f"({day_min} minutes into the day). A live run takes the whole minute (the next "
        f"minute's run waits, and the queue only grows) at about {n_now:.0f} symbols at that "
        f"hour and about {max(n_eod, 0):.0f} by the day's end (if it grew with the day, "
        f"x{eod:.1f} at 24:00: an upper bound); its CPU reaches one core (60 CPU s per "
        f"minute) at about {n_core:.0f} symbols at that hour. Run times here are wall clock on "
        "a shared machine (see the load above), so the run-time limits are pessimistic; the "
        "CPU figures do not depend on the load. "
        f"Projected to 500 symbols at {at:%H:%M}: a live run ends {done500:.0f} s after the "
        f"close and uses {cpu500:.0f} CPU s per minute."
    )

"""100 symbols x 30 days backfilled end to end, against a bare insert and the exchange's limit.

The measured path is what a user runs on a fresh home: `signalbox backfill --start --end`
(the CLI, which starts `dagster job execute`: one run of the `backfill` job over the days) with
the config listing N symbols and the replay exchange serving a generated universe of them
(`ReplayExchange(symbols=["N"])`, its Bybit face's rate limit as configured). Measured:

- wall time per phase: the command's start (instance, `dagster` process, code location) up to
  the first step, then each step of the run (from Dagster's event log: STEP_START ->
  STEP_SUCCESS), with the klines step split into fetching and writing (its progress log lines:
  "fetched" when every page of a chunk is in, "written" when the chunk is committed);
- peak memory of the command's whole process tree (CLI, `dagster`, its step processes), summed,
  by sampling psutil every 0.2 s; and the largest single process's peak RSS from the kernel
  (`getrusage(RUSAGE_CHILDREN).ru_maxrss`, exact, but per process);
- rows/s.

Baselines in the same run: (a) a bare `INSERT ... SELECT` from Arrow of the same rows (read back
from the backfilled warehouse) into a fresh DuckDB table with `klines_1m`'s own DDL (primary key
included); (b) the exchange's rate limit: the page requests a backfill of this size needs
(1000 candles a page, windows as `pipeline/exchanges/ingest.py` cuts them) divided by Bybit's
documented IP limit for public market data (600 requests per 5 s) = the least time a real
backfill can take, whatever the machine; and the same against the replay's configured limit.

`BENCH_BACKFILL_SYMBOLS` and `BENCH_BACKFILL_DAYS` shrink it for development (default 100, 30).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TITLE = "Backfill at scale: 100 symbols x 30 days through Dagster"
N = int(os.environ.get("BENCH_BACKFILL_SYMBOLS", "100"))
DAYS = int(os.environ.get("BENCH_BACKFILL_DAYS", "30"))
FIRST = dt.date(2025, 6, 1)
BYBIT_LIMIT = (
    600,
    5.0,
)  # requests per window (s), per IP: https://bybit-exchange.github.io/docs/v5/rate-limit
TARGET_S, TARGET_GIB = 300.0, 4.0


class TreeMemory:
    """Peak summed RSS of a process and its descendants, sampled every `every_s` by psutil,
    and their CPU seconds so far at each sample (`cpu_at`: a phase's CPU, which unlike its
    wall time does not grow with what else the machine runs)."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.pid, self.every_s = pid, every_s
        self.peak, self.peak_procs, self.peak_at = 0, 0, 0.0
        self.cpu: list[tuple[float, float]] = []  # (epoch s, CPU s of the tree so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total, cpu = 0, 0.0
            for p in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    cpu += t.user + t.system + t.children_user + t.children_system
            self.cpu.append((time.time(), cpu))
            if total > self.peak:
                self.peak, self.peak_procs, self.peak_at = total, len(procs), time.time()
            self._stop.wait(self.every_s)

    def cpu_at(self, when: float) -> float:
        """CPU seconds the tree had used by `when` (the last sample at or before it)."""
        import bisect

        i = bisect.bisect_right(self.cpu, (when, float("inf")))
        return self.cpu[i - 1][1] if i else 0.0


def requests_needed(n: int, start: dt.datetime, end: dt.datetime) -> int:
    """Page requests a backfill of `n` symbols over [start, end) sends: one per 1000-minute
    window of each 30-day chunk (pipeline/exchanges/ingest.py)."""
    from pipeline.exchanges.ingest import windows

    chunk = dt.timedelta(days=30)
    return n * sum(len(list(windows(a, b))) for a, b in windows(start, end, chunk))


def phases(dagster_home: Path) -> list[tuple[str, float, float]]:
    """(step, started, ended) in epoch seconds for the one run in the instance, in start order;
    the klines step split at its "fetched" and "written" progress lines."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as inst:
        (run,) = inst.get_runs()
        logs = inst.all_logs(run.run_id)
    start: dict[str, float] = {}
    end: dict[str, float] = {}
    fetched = written = None
    for e in logs:
        kind = e.dagster_event.event_type_value if e.dagster_event else None
        if kind == "STEP_START":
            start.setdefault(e.step_key, e.timestamp)
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            end[e.step_key] = e.timestamp
        elif e.step_key == "klines_1m" and "progress" in (e.user_message or ""):
            if "fetched" in e.user_message and fetched is None:
                fetched = e.timestamp
            if "written" in e.user_message:
                written = e.timestamp
    out = []
    for key in sorted(start, key=start.get):
        a, b = start[key], end.get(key, start[key])
        if key == "klines_1m" and fetched and written:
            out += [
                ("klines_1m: fetch", a, fetched),
                ("klines_1m: write", fetched, written),
                ("klines_1m: checks", written, b),
            ]
        else:
            out.append((key, a, b))
    return out


def bare_insert(warehouse: Path, tmp: Path) -> tuple[float, int]:
    """Seconds to insert the backfilled `klines_1m` rows from Arrow into a fresh table with
    the same DDL (primary key included), and the row count."""
    import duckdb

    src = duckdb.connect(str(warehouse), read_only=True)
    sql = "SELECT sql FROM duckdb_tables() WHERE table_name = 'klines_1m'"
    ddl = src.execute(sql).fetchall()[0][0]
    rows = src.sql("SELECT * FROM klines_1m").to_arrow_table()
    src.close()
    con = duckdb.connect(str(tmp / "bare.duckdb"))
    con.execute(ddl)
    con.register("src", rows)
    t0 = time.perf_counter()
    con.execute("INSERT INTO klines_1m SELECT * FROM src")
    took = time.perf_counter() - t0
    con.close()
    return took, rows.num_rows


def backfill(n: int, days: int) -> dict[str, Any]:
    """One fresh home, `n` symbols x `days` days through `signalbox backfill`; the figures."""
    from pipeline.config import load_settings
    from pipeline.markets import synthetic_universe
    from pipeline.replay import ReplayExchange
    from tests.daemon import replay_env, write_config
    from warehouse import connect

    symbols = synthetic_universe(n)[:n]
    last = FIRST + dt.timedelta(days=days - 1)
    with tempfile.TemporaryDirectory() as tmp, ReplayExchange(seed=7, symbols=[str(n)]) as ex:
        home = Path(tmp) / "home"
        home.mkdir()
        cfg = write_config(home, {"exchanges": {"bybit": symbols}})
        env = {**replay_env(home, ex), "SIGNALBOX_CONFIG": str(cfg)}
        settings = load_settings(cfg, env=env)
        args = [sys.executable, "-m", "pipeline.runtime.cli", "backfill"]
        args += ["--start", str(FIRST), "--end", str(last)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.time()
        proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
        with TreeMemory(proc.pid) as mem:
            err = proc.stderr.read() if proc.stderr else ""
            proc.wait()
        t1 = time.time()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(err[-3000:])
        steps = phases(settings.dagster_home)
        warehouse = settings.warehouse_dir / "replay.duckdb"
        with connect(warehouse, read_only=True) as con:
            counts = {
                t: con.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0]
                for t in ("klines_1m", "candles", "indicators", "signals")
            }
        bare, bare_rows = bare_insert(warehouse, Path(tmp))
        limit = ex.limits.state()
    start = dt.datetime.combine(FIRST, dt.time(), dt.UTC)
    return {
        "n": n,
        "days": days,
        "total": t1 - t0,
        "t0": t0,
        "t1": t1,
        "steps": steps,
        "peak_tree": mem.peak,
        "peak_at": mem.peak_at,
        "cpu_at": mem.cpu_at,
        "peak_procs": mem.peak_procs,
        "maxrss_one": after.ru_maxrss * 1024,  # KiB on Linux
        "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "counts": counts,
        "bare": bare,
        "bare_rows": bare_rows,
        "requests": requests_needed(n, start, start + dt.timedelta(days=days)),
        "replay_limit": limit,
        "stderr": err,
    }


def run() -> str:
    from bench.common import table

    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    r = backfill(N, DAYS)
    rows, total = r["counts"]["klines_1m"], r["total"]
    assert rows == r["bare_rows"] == N * DAYS * 1440, (rows, r["bare_rows"])
    gib = 1024**3
    steps = r["steps"]
    first = steps[0][1] if steps else r["t1"]
    last = max((b for _, _, b in steps), default=r["t1"])
    cpu = r["cpu_at"]

    def phase(name: str, a: float, b: float, rate: str = "") -> list[str]:
        return [name, f"{b - a:.1f}", f"{cpu(b) - cpu(a):.1f}", rate]

    lines = [phase("command start → first step (instance, `dagster`, code location)",
                   r["t0"], first)]  # fmt: skip
    for name, a, b in steps:
        rate = f"{rows / (b - a):,.0f}" if name.startswith("klines_1m: ") and b > a else ""
        lines.append(phase(f"`{name}`", a, b, rate))
    lines.append(phase("last step → command exit", last, r["t1"]))
    lines.append(["**whole command**", f"**{total:.1f}**", f"{r['cpu']:.0f}",
                  f"{rows / total:,.0f}"])  # fmt: skip
    phase_table = table(["phase", "wall s", "CPU s (tree)", "candle rows/s"], lines)

    bybit_rate = BYBIT_LIMIT[0] / BYBIT_LIMIT[1]
    lim = r["replay_limit"]
    replay_rate = lim["limit"] / lim["window_s"] if lim["limit"] else float("inf")
    fetch = next((b - a for name, a, b in steps if name == "klines_1m: fetch"), float("nan"))
    base_table = table(
        ["path", "seconds", "rows/s", "vs the backfill"],
        [
            ["bare `INSERT ... SELECT` from Arrow, same rows, same DDL and key (baseline a)",
             f"{r['bare']:.2f}", f"{rows / r['bare']:,.0f}", f"{total / r['bare']:.0f}x faster"],
            [f"Bybit's IP limit, {BYBIT_LIMIT[0]} requests / {BYBIT_LIMIT[1]:.0f} s: "
             f"{r['requests']:,} pages (baseline b, the physical floor of a real backfill)",
             f"{r['requests'] / bybit_rate:.1f}", f"{rows / (r['requests'] / bybit_rate):,.0f}",
             f"{total / (r['requests'] / bybit_rate):.1f}x the floor"],
            [f"the replay's configured limit, {lim['limit']} / {lim['window_s']:g} s",
             f"{r['requests'] / replay_rate:.1f}", f"{rows / (r['requests'] / replay_rate):,.0f}",
             f"fetch took {fetch:.1f} s"],
            ["`signalbox backfill`, whole command", f"{total:.1f}", f"{rows / total:,.0f}", ""],
        ],
    )  # fmt: skip
    during = next((n for n, a, b in steps if a <= r["peak_at"] <= b), "outside the steps")
    mem_table = table(
        ["memory", "GiB"],
        [
            [f"peak RSS of the command's process tree, summed (psutil every 0.2 s; "
             f"{r['peak_procs']} processes at the peak, during `{during}`)",
             f"{r['peak_tree'] / gib:.2f}"],
            ["largest single process's peak RSS (`getrusage(RUSAGE_CHILDREN).ru_maxrss`)",
             f"{r['maxrss_one'] / gib:.2f}"],
        ],
    )  # fmt: skip
    ok_t, ok_m = total < TARGET_S, r["peak_tree"] < TARGET_GIB * gib
    verdict = (
        f"Target: under {TARGET_S / 60:.0f} minutes and {TARGET_GIB:.0f} GiB: "
        f"{'meets' if ok_t else 'misses'} the time ({total:.0f} s), "
        f"{'meets' if ok_m else 'misses'} the memory ({r['peak_tree'] / gib:.2f} GiB)."
    )
    c = r["counts"]
    return (
        f"{N} symbols x {DAYS} days ({FIRST} → {FIRST + dt.timedelta(days=DAYS - 1)}): "
        f"{rows:,} 1m candles, then {c['candles']:,} candle buckets of every timeframe, "
        f"{c['indicators']:,} indicator rows and {c['signals']:,} signals, on a fresh home, "
        "from the replay exchange on loopback (generated universe, seed 7) through "
        "`signalbox backfill` (one Dagster run of the `backfill` job). CPU of the command's "
        f"process tree: {r['cpu']:.0f} s. Machine load when it started: `{load}` (2 cores shared "
        "with other work make every figure here slower than on an idle machine).\n\n"
        f"{phase_table}\n\n{base_table}\n\n{mem_table}\n\n{verdict}"
    )

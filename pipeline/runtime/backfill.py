"""`signalbox backfill`: materialize daily partitions through Dagster, with progress.

The work runs as ONE run of the `backfill` job (single-run backfill policy) via the `dagster`
CLI against the persistent instance, so it shows up in the UI like any other run, honours the
DuckDB pool and records materializations and check results. This module only prepares the
environment and shows the run: steps and check results from Dagster's output, a bar per long
step from the structured progress records the run's assets append to a file it names.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pipeline.config import Settings
from pipeline.exchanges.sources import home_source
from pipeline.markets import describe_exchanges, format_markets
from pipeline.orchestration import tags as run_tags
from pipeline.orchestration.instance import dagster_env
from pipeline.runtime.processes import exchange, source_env, spawn, stop
from pipeline.runtime.progress import Follower

DAILY_SELECTION = "group:ingest or group:timeframes or group:signals"
BACKFILL_JOB = "backfill"  # pipeline/orchestration/definitions.py: DAILY_SELECTION as a named job
BACKTEST_JOB = "backtest_reports"  # assets/backtests.py: one personality's report
BACKFILL_ASSETS = ("klines_1m", "candles", "indicators", "signals")  # its assets, in order
CONTEXT_ASSETS = ("funding_rates", "open_interest_5m", "spot_klines_1m")  # one op: market_context
BACKFILL_ASSETS += CONTEXT_ASSETS
_STEP = re.compile(r" - (\w+) - STEP_START")
_CHECK = re.compile(
    r"ASSET_CHECK_EVALUATION - Asset check '(\w+)' on '([^']+)' (passed|did not pass)\."
    r"(?: Description: '(.*)')?\s*$"
)
# What a run waiting for the DuckDB pool says (sensors/reaper.py): whom it waits for, and
# which dead run's slot it freed.
_POOL = re.compile(r"((?:waiting for|freed) the \w+ pool: .*)")
_FAIL = re.compile(r"(STEP_FAILURE|RUN_FAILURE|Error|Exception|Traceback)")


class BackfillError(ValueError):
    pass


def validate_assets(assets: str) -> str | None:
    """`--assets`: "all" (None: the whole job) or some of its assets, comma-separated (Dagster's
    op selection, so `candles+` means candles and what follows it)."""
    if assets == "all":
        return None
    names = [a.strip() for a in assets.split(",") if a.strip()]
    for name in names:
        if name.strip("*+") not in BACKFILL_ASSETS:
            raise BackfillError(
                f"--assets: unknown asset {name[:40]!r}; the backfill job's assets are "
                f"{', '.join(BACKFILL_ASSETS)} (or 'all')"
            )
    ops = [  # the market context's three assets are one op (assets/context.py)
        "market_context" if n.strip("*+") in CONTEXT_ASSETS else n for n in names
    ]
    return ",".join(dict.fromkeys(ops)) or None


def validate_range(settings: Settings, start: dt.date, end: dt.date) -> None:
    from pipeline.runtime.partitions import first_partition

    today = dt.datetime.now(dt.UTC).date()
    if end < start:
        raise BackfillError(f"--end {end} is before --start {start}; give the last day, inclusive")
    first = first_partition(settings)
    if start < first.day and first.origin != "fallback":  # a new home's first backfill sets it
        raise BackfillError(
            f"--start {start} is before the first partition {first.day} ({first.why}); to go "
            f"further back set start_date: {start} in {settings.config_path or 'signalbox.yaml'}"
            " (then restart `signalbox up`)"
        )
    if end > today:
        raise BackfillError(f"--end {end} is in the future (today is {today} UTC)")


def _bar(pct: float, width: int = 30) -> str:
    filled = int(width * pct / 100)
    return "[" + "#" * filled + "." * (width - filled) + f"] {pct:5.1f}%"


def check_line(line: str, width: int = 150) -> str:
    """A check result from Dagster's log as "check: <name> on <asset> passed: <description>",
    wrapped, never cut: a check's description names what it found (every day with missing
    minutes, say), so none of it may be lost."""
    import textwrap

    if m := _CHECK.search(line):
        verdict = "passed" if m[3] == "passed" else "FAILED"
        text = f"check: {m[1]} on {m[2]} {verdict}" + (f": {m[4]}" if m[4] else "")
    else:
        text = "check: " + line.split("ASSET_CHECK_EVALUATION - ", 1)[-1]
    return textwrap.fill(
        text,
        width,
        initial_indent="  ",
        subsequent_indent="      ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def render(
    lines: Iterable[str], out=sys.stderr, progress: Callable[[], list[dict]] | None = None
) -> tuple[bool, list[str]]:
    """Show a run: its steps, check results and pool waits from Dagster's output, and a bar
    per long step from the progress records (`progress()`: the records appended since the
    last call, pipeline/runtime/progress.py). Returns (saw_failure, the last lines for errors).

    On a terminal each step's bar redraws one line in place (ended when anything else is
    printed); elsewhere every progress record is a line of its own. Never a blank line."""
    import shutil

    tty = out.isatty()
    width = shutil.get_terminal_size((150, 24)).columns - 1 if tty else 150
    tail: list[str] = []
    failed = False
    last_check = ""
    t0 = time.monotonic()
    bar_open = False  # a progress line drawn in place, not yet ended

    def emit(text: str) -> None:
        nonlocal bar_open
        if bar_open:
            print(file=out)
            bar_open = False
        print(text, file=out, flush=True)

    def draw(rec: dict) -> None:
        nonlocal bar_open
        done, total, unit, note = rec["done"], rec["total"], rec["unit"], rec.get("note", "")
        pct = 100 * done / max(total, 1)
        if unit == "minutes":
            rate = done / max(time.monotonic() - t0, 1e-6)
            msg = f"{_bar(pct)} {done}/{total} candle-minutes, {rate:,.0f}/s  {note}"
        else:
            msg = f"{_bar(pct)} {done}/{total} {unit}  {note}"
        if tty:
            print("\r" + msg[:width] + "\x1b[K", end="", file=out, flush=True)
            bar_open = True
        else:
            emit(msg)

    for raw in lines:
        for rec in progress() if progress else ():
            draw(rec)
        line = raw.rstrip("\n")
        tail = [*tail[-60:], line]
        if m := _POOL.search(line):
            emit(f"  {m[1][:200]}")
        elif m := _STEP.search(line):
            emit(f"→ {m[1]}")
        elif "ASSET_CHECK_EVALUATION" in line:
            text = check_line(line)
            if text != last_check:  # a check over a range is recorded once per day
                emit(text)
            last_check = text
        elif _FAIL.search(line) and "STEP_SUCCESS" not in line:
            failed = failed or "FAILURE" in line
    for rec in progress() if progress else ():
        draw(rec)
    if bar_open:
        print(file=out, flush=True)
    return failed, tail


def run_job(
    settings: Settings,
    job: str,
    days: tuple[dt.date, dt.date] | None = None,
    partition: str | None = None,
    run_config: dict | None = None,
    assets: str | None = None,
) -> int:
    """Run the named `job` (pipeline/orchestration/definitions.py) as ONE run, over the days
    [first, last]
    of a daily-partitioned job or over one `partition`, and show its progress. `assets`: a
    comma-separated subset of the job's assets."""
    import json
    import tempfile

    # Dagster's tags for a partition and a single-run partition range, which `dagster job
    # execute` has no option for; and what the run is.
    tags: dict[str, str] = {}
    if days:
        tags = {
            run_tags.RANGE_START: days[0].isoformat(),
            run_tags.RANGE_END: days[1].isoformat(),
            run_tags.MODE: run_tags.BACKFILL,
        }
    if partition:
        tags[run_tags.PARTITION] = partition
    args = ["-j", job, "--tags", json.dumps(tags)]
    if assets:
        args += ["--op-selection", assets]
    with (
        tempfile.TemporaryDirectory(prefix="signalbox-run-") as tmp,
        open(Path(tmp) / "run.json", "w") as cfg,
    ):
        # The run's long steps append their progress to this file (ProgressResource).
        progress = Path(tmp) / "progress.jsonl"
        resources = {"progress": {"config": {"path": str(progress)}}}
        json.dump({**(run_config or {}), "resources": resources}, cfg)
        cfg.flush()
        args += ["-c", cfg.name]
        return _dagster(settings, ["job", "execute"], args, Follower(progress))


def _dagster(
    settings: Settings,
    command: list[str],
    options: list[str],
    progress: Callable[[], list[dict]] | None = None,
) -> int:
    """Run one `dagster` CLI command (then its options) against the code location and the
    home's instance.

    The home's source is decided (first start) or checked, and its exchange verified and
    asked for every symbol, before the run starts; a `SourceError` says why not.
    """

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    ep = home_source(settings, say)
    with exchange(settings, ep, say) as live_ep:
        extra = source_env(live_ep)
        extra["SIGNALBOX_SYMBOLS"] = format_markets(settings.markets)
        env = dagster_env(settings, extra)
        # `dagster job execute` still works but points to the `dg` CLI, which is not installed.
        quiet = "ignore:Function `job_execute_command` is superseded"
        env["PYTHONWARNINGS"] = ",".join(w for w in (env.get("PYTHONWARNINGS"), quiet) if w)
        argv = [
            sys.executable,
            "-m",
            "dagster",
            *command,
            "-m",
            "pipeline.orchestration.definitions",
            *options,
        ]
        print(f"source: {live_ep.label} ({live_ep.rest_url})", file=sys.stderr)
        proc = spawn(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        try:
            assert proc.stdout is not None
            failed, tail = render(proc.stdout, progress=progress)
            code = proc.wait()
        except KeyboardInterrupt:
            stop(proc)
            raise
    if code != 0 or failed:
        print("\n".join(tail[-40:]), file=sys.stderr)
        print(
            f"signalbox: the Dagster run failed (exit {code}); see the run in the UI",
            file=sys.stderr,
        )
        return code or 1
    print("done: the run and its materializations are in the Dagster UI", file=sys.stderr)
    return 0


def backfill(settings: Settings, start: dt.date, end: dt.date, assets: str = "all") -> int:
    try:
        validate_range(settings, start, end)
        subset = validate_assets(assets)
    except BackfillError as err:
        print(f"signalbox backfill: {err}", file=sys.stderr)
        return 2
    from pipeline.runtime.partitions import ensure_recorded

    ensure_recorded(settings, dt.datetime.now(dt.UTC).date(), settings.live.history_days, start)
    print(
        f"backfilling {describe_exchanges(settings.exchanges)} {start} → {end} "
        f"({subset or DAILY_SELECTION})",
        file=sys.stderr,
    )
    return run_job(settings, BACKFILL_JOB, (start, end), assets=subset)

"""`signalbox backfill`: materialize daily partitions through Dagster, with progress.

The work runs as one Dagster run (single-run backfill policy) via the `dagster` CLI against
the persistent instance, so it shows up in the UI like any other run, honours the DuckDB pool
and records materializations and check results. This module only prepares the environment
and turns Dagster's event stream into a progress bar.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import time
from collections.abc import Iterable

from pipeline.config import Settings
from pipeline.instance import dagster_env
from pipeline.processes import exchange, source_env, spawn, stop
from pipeline.sources import home_source

DAILY_SELECTION = "group:ingest or group:timeframes or group:signals"
_PROGRESS = re.compile(r"progress (\d+)/(\d+) minutes \((\d+)%\) (.*)")
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


def validate_range(settings: Settings, start: dt.date, end: dt.date) -> None:
    from pipeline.partitions import first_partition

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


def render(lines: Iterable[str], out=sys.stderr) -> tuple[bool, list[str]]:
    """Echo Dagster's output as progress; returns (saw_failure, the last lines for errors)."""
    tty = out.isatty()
    tail: list[str] = []
    failed = False
    last_check = ""
    t0 = time.monotonic()
    for raw in lines:
        line = raw.rstrip("\n")
        tail = [*tail[-60:], line]
        if m := _PROGRESS.search(line):
            done, total, pct, note = int(m[1]), int(m[2]), float(m[3]), m[4]
            rate = done / max(time.monotonic() - t0, 1e-6)
            msg = f"{_bar(pct)} {done}/{total} candle-minutes, {rate:,.0f}/s  {note}"
            print(
                ("\r" + msg[:150].ljust(150)) if tty else msg,
                end="" if tty else "\n",
                file=out,
                flush=True,
            )
        elif m := _POOL.search(line):
            print(("\n" if tty else "") + f"  {m[1][:200]}", file=out, flush=True)
        elif m := _STEP.search(line):
            print(("\n" if tty else "") + f"→ {m[1]}", file=out, flush=True)
        elif "ASSET_CHECK_EVALUATION" in line:
            text = check_line(line)
            if text != last_check:  # a check over a range is recorded once per day
                print(("\n" if tty else "") + text, file=out)
            last_check = text
        elif _FAIL.search(line) and "STEP_SUCCESS" not in line:
            failed = failed or "FAILURE" in line
    if tty:
        print(file=out)
    return failed, tail


def materialize(
    settings: Settings,
    selection: str,
    partition_range: str | None = None,
    run_config: str | None = None,
    partition: str | None = None,
) -> int:
    """Run `dagster asset materialize` for `selection` and show its progress.

    The home's source is decided (first start) or checked, and its exchange verified and
    asked for every symbol, before the run starts; a `SourceError` says why not.
    """

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    ep = home_source(settings, say)
    with exchange(settings, ep, say) as live_ep:
        extra = source_env(live_ep)
        extra["SIGNALBOX_SYMBOLS"] = ",".join(settings.symbols)
        env = dagster_env(settings, extra)
        args = [sys.executable, "-m", "dagster", "asset", "materialize"]
        args += ["-m", "pipeline.definitions", "--select", selection]
        if partition_range:
            args += ["--partition-range", partition_range]
        if partition:
            args += ["--partition", partition]
        if run_config:
            args += ["--config-json", run_config]
        print(f"source: {live_ep.label} ({live_ep.rest_url})", file=sys.stderr)
        proc = spawn(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        try:
            assert proc.stdout is not None
            failed, tail = render(proc.stdout)
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
    except BackfillError as err:
        print(f"signalbox backfill: {err}", file=sys.stderr)
        return 2
    from pipeline.partitions import ensure_recorded

    selection = DAILY_SELECTION if assets == "all" else assets
    ensure_recorded(settings, dt.datetime.now(dt.UTC).date(), settings.live.history_days, start)
    print(
        f"backfilling {', '.join(settings.symbols)} {start} → {end} ({selection})", file=sys.stderr
    )
    return materialize(settings, selection, f"{start.isoformat()}...{end.isoformat()}")


def backtest(
    settings: Settings,
    personality: str,
    start: dt.date,
    end: dt.date,
    symbol: str | None = None,
    params: str | None = None,
) -> int:
    """Materialize one personality's backtest report over [start, end] through Dagster."""
    import json

    if personality not in settings.personality_names:
        known = ", ".join(settings.personality_names)
        print(
            f"signalbox backtest: unknown personality {personality!r}; configured: {known}",
            file=sys.stderr,
        )
        return 2
    if end < start:
        print(f"signalbox backtest: --end {end} is before --start {start}", file=sys.stderr)
        return 2
    cfg = {"start": start.isoformat(), "end": end.isoformat(), "params_json": params or "{}"}
    if symbol:
        cfg["symbol"] = symbol
    run_config = json.dumps({"ops": {"backtest_report": {"config": cfg}}})
    print(f"backtesting {personality} {start} → {end}", file=sys.stderr)
    code = materialize(settings, "backtest_report", partition=personality, run_config=run_config)
    if code == 0:
        reports = settings.home / settings.backtest.report_dir / personality
        print(f"reports: {reports}", file=sys.stderr)
    return code

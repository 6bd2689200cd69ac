"""`signalbox backtest`: check everything a run needs, run it through Dagster, print the result.

A backtest covers markets (exchange, symbol): `--symbol` names one (`hyperliquid:BTC`, or a
bare symbol configured on one venue), else every configured market. Before any Dagster run
starts: the personality, the market, the `--params` overrides (the same validation the asset
and signalbox.yaml use), the period, and whether the warehouse holds candles and warmed-up
signals for it per market (read from the replica). A mistake is one line and exit 2; a period
with nothing to trade is refused with the backfill that fixes it (exit 1). Neither leaves a
run behind. After a successful run the summary the asset saved beside each market's
report.html is printed as a table on standard output (progress and warnings go to standard
error).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

from pipeline.config import Settings
from pipeline.markets import Market

USAGE = 2  # a mistake in the command
NOTHING_TO_DO = 1  # the warehouse lacks what the period needs


def _say(msg: str) -> None:
    print(f"signalbox backtest: {msg}", file=sys.stderr, flush=True)


def backtest(
    settings: Settings,
    personality: str,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    days: int | None = None,
    timerange: str | None = None,
    symbol: str | None = None,
    params: str | None = None,
) -> int:
    """Validate, check the data, materialize `backtest_report` for one personality and the
    markets with something to trade, print a summary per market."""
    import duckdb

    from pipeline.backtest import coverage
    from pipeline.backtest.params import ParamError, parse_overrides
    from pipeline.backtest.period import period_bounds, resolve_period
    from pipeline.backtest.report import report_dir
    from pipeline.backtest.result import run_id_for
    from pipeline.markets import find_market
    from pipeline.runtime.backfill import BACKTEST_JOB, BackfillError, run_job, validate_range
    from pipeline.runtime.sql import one_line
    from warehouse import WarehouseBusy

    names = settings.personality_names
    if personality not in names:
        _say(f"unknown personality {personality!r}; configured: {', '.join(names)}")
        return USAGE
    try:
        markets = [find_market(symbol, settings.markets)] if symbol else list(settings.markets)
    except ValueError as err:
        _say(f"--symbol {symbol}: {err}")
        return USAGE
    today = dt.datetime.now(dt.UTC).date()
    try:
        overrides, _ = parse_overrides(params, settings.backtest.params)
        open_start = timerange is not None and timerange.strip().startswith("-")
        first_day = coverage.first_stored_day(settings, markets) if open_start else None
        first, last = resolve_period(
            today=today,
            default_days=settings.backtest.window_days,
            start=start,
            end=end,
            days=days,
            timerange=timerange,
            first_day=first_day,
        )
        validate_range(settings, first, last)
    except (ParamError, BackfillError) as err:
        _say(str(err))
        return USAGE

    p = coverage.configured_personality(settings, personality)
    try:
        cov = coverage.read_coverage(settings, personality, markets, first, last)
    except coverage.NoData as err:
        warm = coverage.warmup_needed(p)
        fix = coverage.backfill_hint(settings, markets, first - dt.timedelta(days=warm.days), last)
        _say(f"no candles yet ({err}); backfill first: {fix}")
        return NOTHING_TO_DO
    except (WarehouseBusy, duckdb.Error) as err:
        cov = {}
        print(
            f"warning: could not check the stored data first ({one_line(err)}); running anyway",
            file=sys.stderr,
        )
    refusals, warnings = coverage.assess(settings, p, cov, first, last)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if cov and len(refusals) == len(cov):
        for r in refusals.values():
            _say(f"nothing to backtest: {r}")
        return NOTHING_TO_DO
    for r in refusals.values():
        print(f"warning: skipped {r}", file=sys.stderr)
    markets = [m for m in markets if m not in refusals]

    cfg = {"start": first.isoformat(), "end": last.isoformat()}
    cfg["params_json"] = json.dumps(overrides)
    cfg["markets"] = [str(m) for m in markets]
    run_config = {"ops": {"backtest_report": {"config": cfg}}}
    n_days = (last - first).days + 1
    on = ", ".join(str(m) for m in markets)
    print(f"backtesting {personality} on {on}, {first} → {last} ({n_days} days)", file=sys.stderr)
    started = time.time()
    code = run_job(settings, BACKTEST_JOB, partition=personality, run_config=run_config)
    if code != 0:
        return code
    lo, hi = period_bounds(first, last)
    shown = 0
    for m in markets:
        rid = run_id_for(personality, m.symbol, p.signal_tf, lo, hi, overrides, m.exchange)
        path = report_dir(settings.reports_dir, rid) / "summary.json"
        shown += _print_summary(path, m, started)
    if not shown:
        _say(f"the run wrote no report; see the run in the UI (reports: {settings.reports_dir})")
        return NOTHING_TO_DO
    return 0


def _print_summary(path: Path, market: Market, since: float) -> int:
    """Print the summary the run saved at `path` for `market`; 0 when the run wrote none
    there. The title names the market as run ids do: Bybit's symbol alone, another venue's
    with its name (`on hyperliquid:BTC`)."""
    from pipeline.backtest.report import summary_text

    try:
        if path.stat().st_mtime < since - 1:
            return 0  # an earlier run's
        s = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    if market.exchange != "bybit":
        s["title"] = s["title"].replace(f" on {market.symbol}", f" on {market}", 1)
    print("\n" + summary_text(s), flush=True)
    return 1

"""`candles` (every timeframe) and `indicators`, per daily partition, with their checks.

A bucket belongs to the partition of the day its last minute falls in
(pipeline/candles/resample.py),
so a 37m bucket across midnight, a week or a month is written exactly once. Indicators are
computed day by day from exactly the derived warm-up window, in backfills as in the live
run, so both give byte-identical values.
"""

import datetime as dt

import dagster as dg

from assets.common import (
    DAILY,
    check_result,
    daily_table,
    display,
    for_each_partition,
    live_start,
)
from assets.common import window as partition_window
from pipeline.orchestration import tags
from pipeline.orchestration.resources import (
    ExchangeResource,
    ProgressResource,
    SettingsResource,
    WarehouseResource,
)

CANDLE_CHECKS = {
    "ohlc_sane": "Every bucket's low <= open, close <= high; volume >= 0; prices positive.",
    "no_duplicates": "At most one row per (exchange, symbol, timeframe, open_time).",
    "on_grid": "open_time starts a bucket of its timeframe on the epoch-anchored grid (1w on "
    "Monday, 1M on the 1st) and close_time ends it.",
    "complete_consistent": "1 <= n_1m <= the bucket's minutes, and complete exactly when every "
    "minute is there.",
    "counts_match_1m": "Each bucket's n_1m equals the 1m rows inside it, and the buckets account "
    "for every 1m row the day owns.",
}
INDICATOR_CHECKS = {
    "ranges": "Bounds (RSI, Stochastic, ADX in [0, 100]; ATR >= 0 ...) and orderings (Bollinger "
    "upper >= middle >= lower) hold within 1e-9 of their scale; no NaN or infinity stored.",
    "nulls_where_not_due": "NULL exactly where a value's derived warm-up is not available; a "
    "value everywhere else.",
    "no_lookahead": "For a sample of bars (the newest always), recomputing from the candles up "
    "to that bar only gives the stored value.",
}
DAY = dt.timedelta(days=1)


def _days(start: dt.datetime, end: dt.datetime) -> list[dt.date]:
    return [(start + i * DAY).date() for i in range((end - start) // DAY)]


@daily_table(
    "candles",
    CANDLE_CHECKS,
    deps=["klines_1m"],
    group_name="timeframes",
    kinds={"duckdb", "polars"},
    description=(
        "Every configured timeframe (1m … 1M, 37m and 148m included) built from each venue's 1m "
        "candles on the epoch-anchored grid; closed buckets only; n_1m and complete say how whole "
        "each is. Keyed by (exchange, symbol, timeframe, open_time)."
    ),
)
def candles(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    exchange: ExchangeResource,
    warehouse: WarehouseResource,
    progress: ProgressResource,
) -> dg.MaterializeResult:
    import polars as pl

    from pipeline.candles.build import build_candles, write_candles
    from pipeline.candles.tail import build_tail_candles, live_tail, write_tail_candles

    s, wh = settings.get(), warehouse.get()
    with wh.session() as wh:  # one connection for the step's reads and write
        start, end = partition_window(context)
        days = _days(start, end)
        since = live_start(context)
        if since is not None:  # mode=live: the buckets the new minutes change, checked
            tails = [live_tail(wh, v, start, end, since, s.timeframes) for v in venues(s)]
            builds = [build_tail_candles(wh, t, s.timeframes) for t in tails]
            written = write_tail_candles(wh, builds, tails)
            outcomes = _tail_candle_checks(builds, tails)
        else:
            builds = [build_candles(wh, v, start, end, s.timeframes) for v in venues(s)]
            written = write_candles(wh, builds, start, end)
            outcomes = _candle_checks(builds, days, s.timeframes, progress.reporter(
                context, "days", len(days), enabled=not tags.from_sensor(context.run.tags)
            ))  # fmt: skip
        frame = pl.concat([b.frame for b in builds]) if builds else pl.DataFrame()
        as_of = min(b.as_of for b in builds) if builds else end
        per_tf = frame.group_by("timeframe").agg(
            pl.len().alias("buckets"), (~pl.col("complete")).sum().alias("incomplete")
        )
        meta = {
            "source": exchange.source().label,
            "rows_written": written,
            "as_of": as_of.isoformat(),
            "days": len(days),
            "klines_read": sum(b.klines.height for b in builds),
            "incomplete_buckets": int(per_tf["incomplete"].sum()) if per_tf.height else 0,
            "buckets_per_timeframe": dg.MetadataValue.json(
                {
                    r["timeframe"]: r["buckets"]
                    for r in per_tf.sort("timeframe").iter_rows(named=True)
                }
            ),
        }
        if since is not None:
            meta["rebuilt"] = _ranges_json(tails)
        return dg.MaterializeResult(
            metadata=display(meta),
            check_results=[
                check_result(n, _merge(outcomes[n], "market-days"), "candles")
                for n in CANDLE_CHECKS
            ],
        )


def _ranges_json(tails) -> dg.JsonMetadataValue:
    """A live run's rebuilt close_time ranges, per venue and timeframe, for the UI."""
    return dg.MetadataValue.json(
        {
            t.exchange: {tf: f"{lo:%Y-%m-%d %H:%M} < close <= {hi:%H:%M}"
                         for tf, (lo, hi) in t.ranges.items()}
            for t in tails
        }
    )  # fmt: skip


def venues(s) -> list[str]:
    """The configured venues, in configuration order."""
    from pipeline.markets import by_venue

    return list(by_venue(s.markets))


def _candle_checks(builds, days, timeframes, report) -> dict[str, list]:
    """The candle checks of whole partitions: per market and day, the 1m data accounted for."""
    from pipeline.candles.build import with_exchange
    from pipeline.candles.checks import check_candles
    from pipeline.candles.rollup import Minutes
    from pipeline.candles.timeframes import owned_by
    from pipeline.quality.checks import by_market

    outcomes: dict[str, list] = {name: [] for name in CANDLE_CHECKS}
    # checks name the market (bybit:BTCUSDT); the 1m candles as numpy once, not once a day
    minutes = [Minutes(by_market(with_exchange(b.klines, b.exchange))) for b in builds]
    for i, day in enumerate(days, 1):
        for b, klines in zip(builds, minutes, strict=True):
            owned = by_market(b.frame.filter(owned_by(day)))
            for name, outcome in check_candles(owned, klines, day, timeframes, b.as_of).items():
                outcomes[name].append(outcome)
        report(i, f"{day}: buckets written and checked")
    return outcomes


def _tail_candle_checks(builds, tails) -> dict[str, list]:
    """The candle checks of a live run: the rows it rebuilt, against the 1m candles it read."""
    from pipeline.candles.build import with_exchange
    from pipeline.candles.checks import check_candles
    from pipeline.candles.tail import check_tail_counts
    from pipeline.quality.checks import by_market

    outcomes: dict[str, list] = {name: [] for name in CANDLE_CHECKS}
    for b, t in zip(builds, tails, strict=True):
        rows = by_market(b.frame)
        found = check_candles(rows)
        found["counts_match_1m"] = check_tail_counts(
            rows, by_market(with_exchange(b.klines, b.exchange)), t.ranges
        )
        for name, outcome in found.items():
            outcomes[name].append(outcome)
    return outcomes


def _merge(outcomes: list, unit: str):
    """One outcome for a run over several windows (days, or day x timeframe)."""
    from pipeline.quality.checks import CheckOutcome

    if len(outcomes) == 1:
        return outcomes[0]
    failed = [o for o in outcomes if not o.passed]
    if not failed:
        return CheckOutcome(True, f"passed on all {len(outcomes)} {unit}")
    meta = {**failed[0].metadata, "windows_failed": len(failed), "windows": len(outcomes)}
    more = f" (and {len(failed) - 1} more of {len(outcomes)} {unit})" if len(failed) > 1 else ""
    return CheckOutcome(False, failed[0].description + more, meta)


@daily_table(
    "indicators",
    INDICATOR_CHECKS,
    deps=["candles"],
    group_name="timeframes",
    kinds={"talib", "duckdb", "polars"},
    description=(
        "TA-Lib indicators for every market and timeframe (pipeline/indicators.yaml). Each day "
        "reads exactly its derived warm-up; a value whose warm-up reaches a minute that is "
        "neither stored nor confirmed absent by the exchange is NULL."
    ),
)
def indicators(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    exchange: ExchangeResource,
    warehouse: WarehouseResource,
    progress: ProgressResource,
) -> dg.MaterializeResult:
    from pipeline.candles.tail import live_tail
    from pipeline.indicators import load_spec, warmup_bars
    from pipeline.indicators.build import (
        INDICATOR_ROWS,
        indicator_runs,
        write_indicator_runs,
        write_indicators,
    )

    s, wh, spec = settings.get(), warehouse.get(), load_spec()
    with wh.session() as wh:  # one connection for the step's reads and write
        start, end = partition_window(context)
        days = _days(start, end)
        since = live_start(context)  # mode=live: the rows of the bars the candles rebuilt
        tails = {v: live_tail(wh, v, start, end, since, s.timeframes) for v in venues(s)} if (
            since is not None
        ) else None  # fmt: skip
        live = tags.is_live(context.run.tags)
        not_live = not tags.from_sensor(context.run.tags)  # the sensor's runs: no progress lines
        steps = len(s.timeframes) * len(venues(s))
        report = progress.reporter(context, "timeframes", steps, enabled=not_live)
        found: dict[str, list] = {}
        runs = {
            venue: indicator_runs(
                wh,
                venue,
                days,
                end,
                s.timeframes,
                spec,
                outcomes=found,
                # a tail is checked whole; a live day (no tail) on the timeframe of every minute
                checked=lambda tf: tails is not None or not live or tf == "1m",
                progress=lambda n, note, k=k: report(k * len(s.timeframes) + n, note),
                ranges=tails[venue].ranges if tails else None,
                most=None if tails else INDICATOR_ROWS,  # a tail is small: one run
            )
            for k, venue in enumerate(venues(s))
        }
        if tails:
            frames = {v: next(r, None) for v, r in runs.items()}
            written = write_indicators(
                wh, frames, start, end, {v: t.ranges for v, t in tails.items()}
            )
        else:  # whole days: each run written as it is made, in one transaction
            written = write_indicator_runs(wh, runs, start, end, spec.columns)
        outcomes = {name: found.get(name, []) for name in INDICATOR_CHECKS}
        meta = {
            "source": exchange.source().label,
            "rows_written": written,
            "days": len(days),
            "indicators": len(spec.columns),
            "warmup_bars": dg.MetadataValue.json(warmup_bars(spec)),
        }
        if tails:
            meta["rebuilt"] = _ranges_json(tails.values())
        return dg.MaterializeResult(
            metadata=display(meta),
            check_results=[
                check_result(
                    n, _merge(outcomes[n], "market x day x timeframe windows"), "indicators"
                )
                for n in INDICATOR_CHECKS
            ],
        )


@dg.asset_check(
    asset="indicators",
    name="warmup_matches_full_history",
    blocking=False,
    pool="duckdb",
    partitions_def=DAILY,
    description=(
        "Values computed from only the derived warm-up equal those from all stored history "
        "within the stated tolerance (sampled from the newest bars up to the day's end; daily "
        "for yesterday on the quality schedule, and in backfills)."
    ),
)
def indicators_warmup(
    context: dg.AssetCheckExecutionContext,
    settings: SettingsResource,
    warehouse: WarehouseResource,
) -> dg.AssetCheckResult:
    from pipeline.indicators import check_warmup, load_spec
    from pipeline.indicators.build import with_history
    from pipeline.markets import by_venue

    spec = load_spec()
    wh = warehouse.get()
    end = partition_window(context.op_execution_context)[1]
    outcomes = []
    for venue in by_venue(settings.get().markets):
        for tf in settings.get().timeframes:
            hist = wh.query(
                "SELECT * EXCLUDE (exchange) FROM candles WHERE exchange = ? AND timeframe = ?"
                " AND close_time <= ? ORDER BY symbol, open_time DESC LIMIT ?",
                [venue, tf, end, 4 * spec.max_warmup],
            ).sort("symbol", "open_time")
            if hist.height > spec.max_warmup:
                outcomes.append(check_warmup(with_history(wh, venue, hist), spec))
    outcome = _merge(outcomes, "timeframes") if outcomes else None
    if outcome is None:
        result = dg.AssetCheckResult(passed=True, description="not enough history to compare yet")
    else:
        result = check_result("warmup_matches_full_history", outcome, "indicators")
    return for_each_partition(context, result)

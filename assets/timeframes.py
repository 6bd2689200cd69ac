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
    OWNERS,
    SINGLE_RUN,
    check_result,
    check_specs,
    display,
    for_each_partition,
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
    "no_duplicates": "At most one row per (symbol, timeframe, open_time).",
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


def _as_of(wh, end: dt.datetime) -> dt.datetime:
    """Buckets closing by this time are closed: the newest minute the exchange has answered
    for (a candle, or a minute it confirmed it has no candle for), capped at `end`."""
    row = wh.query(
        "SELECT greatest((SELECT max(close_time) FROM bybit_klines_1m WHERE open_time < $1),"
        " (SELECT max(open_time) + INTERVAL 1 MINUTE FROM kline_gaps WHERE open_time < $1))"
        " AS as_of",
        [end],
    )
    newest = row["as_of"][0]
    return min(end, newest) if newest is not None else end


# Runs of consecutive confirmed-absent minutes (gaps and islands: minute - row number is
# constant along a run), so a long exchange gap is one row, not one per minute.
_GAP_RUNS = (
    "SELECT symbol, min(open_time) AS start, count(*) AS minutes FROM ("
    " SELECT symbol, open_time, open_time - to_minutes(row_number() OVER"
    " (PARTITION BY symbol ORDER BY open_time)) AS run"
    " FROM kline_gaps WHERE open_time >= ? AND open_time < ?) GROUP BY symbol, run"
)


def with_history(wh, candles):
    """`candles` marked with which rows count as indicator history (pipeline.indicators.history):
    minutes the exchange confirmed absent (`kline_gaps`) from each symbol's first stored minute
    on are explained, every other missing minute breaks the series."""
    from pipeline.indicators.history import mark_history

    first = wh.query("SELECT symbol, min(open_time) AS first FROM bybit_klines_1m GROUP BY symbol")
    return mark_history(
        candles, dict(first.iter_rows()), lambda lo, hi: wh.query(_GAP_RUNS, [lo, hi])
    )


def _owned_where(start: dt.datetime, end: dt.datetime) -> tuple[str, list[dt.datetime]]:
    return "close_time > ? AND close_time <= ?", [start, end]


@dg.asset(
    partitions_def=DAILY,
    backfill_policy=SINGLE_RUN,
    deps=["bybit_klines_1m"],
    pool="duckdb",
    group_name="timeframes",
    owners=OWNERS,
    kinds={"duckdb", "polars"},
    description=(
        "Every configured timeframe (1m … 1M, 37m and 148m included) built from the 1m candles "
        "on the epoch-anchored grid; closed buckets only; n_1m and complete say how whole each is."
    ),
    check_specs=check_specs("candles", CANDLE_CHECKS),
    metadata={"table": "candles"},
)
def candles(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    exchange: ExchangeResource,
    warehouse: WarehouseResource,
    progress: ProgressResource,
) -> dg.MaterializeResult:
    import polars as pl

    from pipeline.candles.resample import check_candles, owned_by, resample
    from pipeline.candles.timeframes import partition_input_window

    s, wh = settings.get(), warehouse.get()
    start, end = partition_window(context)
    days = _days(start, end)
    read_from = partition_input_window(days[0], s.timeframes)[0]
    klines = wh.query(
        "SELECT symbol, open_time, close_time, open, high, low, close, volume, turnover "
        "FROM bybit_klines_1m WHERE open_time >= ? AND open_time < ? ORDER BY symbol, open_time",
        [read_from, end],
    )
    as_of = _as_of(wh, end)
    frame = resample(klines, s.timeframes, as_of=as_of)
    frame = frame.filter((pl.col("close_time") > start) & (pl.col("close_time") <= end))
    written = wh.replace("candles", frame, *_owned_where(start, end))
    outcomes: dict[str, list] = {name: [] for name in CANDLE_CHECKS}
    not_live = not tags.from_sensor(context.run.tags)  # the sensor's runs: no progress lines
    report = progress.reporter(context, "days", len(days), enabled=not_live)
    for i, day in enumerate(days, 1):
        owned = frame.filter(owned_by(day))
        for name, outcome in check_candles(owned, klines, day, s.timeframes, as_of).items():
            outcomes[name].append(outcome)
        report(i, f"{day}: {owned.height} buckets written and checked")
    per_tf = frame.group_by("timeframe").agg(
        pl.len().alias("buckets"), (~pl.col("complete")).sum().alias("incomplete")
    )
    meta = {
        "source": exchange.source().label,
        "rows_written": written,
        "as_of": as_of.isoformat(),
        "days": len(days),
        "incomplete_buckets": int(per_tf["incomplete"].sum()) if per_tf.height else 0,
        "buckets_per_timeframe": dg.MetadataValue.json(
            {r["timeframe"]: r["buckets"] for r in per_tf.sort("timeframe").iter_rows(named=True)}
        ),
    }
    return dg.MaterializeResult(
        metadata=display(meta),
        check_results=[
            check_result(n, _merge(outcomes[n], "days"), "candles") for n in CANDLE_CHECKS
        ],
    )


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


@dg.asset(
    partitions_def=DAILY,
    backfill_policy=SINGLE_RUN,
    deps=["candles"],
    pool="duckdb",
    group_name="timeframes",
    owners=OWNERS,
    kinds={"talib", "duckdb", "polars"},
    description=(
        "TA-Lib indicators for every symbol and timeframe (pipeline/indicators.yaml). Each day "
        "reads exactly its derived warm-up; a value whose warm-up reaches a minute that is "
        "neither stored nor confirmed absent by the exchange is NULL."
    ),
    check_specs=check_specs("indicators", INDICATOR_CHECKS),
    metadata={"table": "indicators"},
)
def indicators(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    exchange: ExchangeResource,
    warehouse: WarehouseResource,
    progress: ProgressResource,
) -> dg.MaterializeResult:
    import polars as pl

    from pipeline.indicators import (
        check_indicators,
        indicator_input_window,
        indicators_for_partition,
        load_spec,
        warmup_bars,
    )

    s, wh, spec = settings.get(), warehouse.get(), load_spec()
    start, end = partition_window(context)
    days = _days(start, end)
    live = tags.is_live(context.run.tags)
    not_live = not tags.from_sensor(context.run.tags)  # the sensor's runs: no progress lines
    report = progress.reporter(context, "timeframes", len(s.timeframes), enabled=not_live)
    parts, outcomes = [], {name: [] for name in INDICATOR_CHECKS}
    # One read for every timeframe's window (from its warm-up before the first day).
    windows = [(tf, indicator_input_window(days[0], tf, spec)[0]) for tf in s.timeframes]
    values = ", ".join("(?, ?)" for _ in windows)
    everything = wh.query(
        f"SELECT c.* FROM candles c JOIN (VALUES {values}) w(tf, lo) ON c.timeframe = w.tf"
        " AND c.open_time >= w.lo AND c.close_time <= ?"
        " ORDER BY c.timeframe, c.symbol, c.open_time",
        [v for pair in windows for v in pair] + [end],
    )
    by_tf = with_history(wh, everything).partition_by("timeframe", as_dict=True)
    for n, tf in enumerate(s.timeframes, 1):
        hist_all = by_tf.get((tf,), everything.clear())
        for day in days:
            lo, hi = indicator_input_window(day, tf, spec)
            hist = hist_all.filter((pl.col("open_time") >= lo) & (pl.col("close_time") <= hi))
            ind = indicators_for_partition(hist, day, spec)
            parts.append(ind)
            if live and tf != "1m":
                continue  # the live run checks the timeframe that changes every minute
            for name, outcome in check_indicators(hist, ind, spec).items():
                outcomes[name].append(outcome)
        report(n, f"{tf}: {len(days)} day(s)")
    frame = pl.concat([p for p in parts if p.height], how="diagonal_relaxed") if parts else None
    columns = [
        c
        for c in (frame.columns if frame is not None else [])
        if c not in ("symbol", "timeframe", "open_time", "close_time")
    ]
    wh.ensure_columns(
        "indicators", {c: "BOOLEAN" if c == "bb_squeeze" else "DOUBLE" for c in columns}
    )
    written = wh.replace(
        "indicators", frame if frame is not None else pl.DataFrame(), *_owned_where(start, end)
    )
    meta = {
        "source": exchange.source().label,
        "rows_written": written,
        "days": len(days),
        "indicators": len(columns),
        "warmup_bars": dg.MetadataValue.json(warmup_bars(spec)),
    }
    return dg.MaterializeResult(
        metadata=display(meta),
        check_results=[
            check_result(n, _merge(outcomes[n], "day x timeframe windows"), "indicators")
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

    spec = load_spec()
    wh = warehouse.get()
    end = partition_window(context.op_execution_context)[1]
    outcomes = []
    for tf in settings.get().timeframes:
        hist = wh.query(
            "SELECT * FROM candles WHERE timeframe = ? AND close_time <= ?"
            " ORDER BY symbol, open_time DESC LIMIT ?",
            [tf, end, 4 * spec.max_warmup],
        ).sort("symbol", "open_time")
        if hist.height > spec.max_warmup:
            outcomes.append(check_warmup(with_history(wh, hist), spec))
    outcome = _merge(outcomes, "timeframes") if outcomes else None
    if outcome is None:
        result = dg.AssetCheckResult(passed=True, description="not enough history to compare yet")
    else:
        result = check_result("warmup_matches_full_history", outcome, "indicators")
    return for_each_partition(context, result)

"""One venue's indicators for a span of daily partitions, from exactly the derived warm-up.

Plain Python: the `indicators` asset calls it once per venue, the tests too. Reads are scoped
by `exchange` (its candles, its first stored minute, its confirmed gaps), so one venue's
indicators never see another's candles, and the caller replaces them per venue.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.candles.build import with_exchange
from pipeline.indicators.compute import ID_COLUMNS

if TYPE_CHECKING:
    import polars as pl

    from pipeline.candles.tail import Ranges
    from pipeline.indicators.spec import IndicatorSpec

# Runs of consecutive confirmed-absent minutes (gaps and islands: minute - row number is
# constant along a run), so a long exchange gap is one row, not one per minute.
_GAP_RUNS = (
    "SELECT symbol, min(open_time) AS start, count(*) AS minutes FROM ("
    " SELECT symbol, open_time, open_time - to_minutes(row_number() OVER"
    " (PARTITION BY symbol ORDER BY open_time)) AS run"
    " FROM kline_gaps WHERE exchange = ? AND open_time >= ? AND open_time < ?)"
    " GROUP BY symbol, run"
)
# Indicator rows a backfill holds before writing them (~30 columns: ~250 MB), and DuckDB's
# memory limit while it writes them (its buffer cache grew to ~1.5 GB over 7.4M rows without;
# 1 GB held 7.4M rows in 1M-row runs: bench/bench_backfill_scale.py).
INDICATOR_ROWS = 1_000_000
RUN_MEMORY = "1GB"


def with_history(wh: Any, exchange: str, candles: pl.DataFrame) -> pl.DataFrame:
    """One venue's `candles` marked with which rows count as indicator history
    (pipeline.indicators.history): minutes the venue confirmed absent (`kline_gaps`) from each
    symbol's first stored minute on are explained, every other missing minute breaks it."""
    from pipeline.indicators.history import mark_history

    first = wh.query(
        "SELECT symbol, min(open_time) AS first FROM klines_1m WHERE exchange = ? GROUP BY symbol",
        [exchange],
    )
    return mark_history(
        candles, dict(first.iter_rows()), lambda lo, hi: wh.query(_GAP_RUNS, [exchange, lo, hi])
    )


def build_indicators(
    *args: Any, **options: Any
) -> tuple[pl.DataFrame | None, dict[str, list[Any]]]:
    """`indicator_runs` (the same arguments, but `outcomes` and `most`) in one run: the
    indicators `days` own for the venue (`exchange` first; None when there are none), and the
    checks' outcomes per check name."""
    outcomes: dict[str, list[Any]] = {}
    parts = list(indicator_runs(*args, outcomes=outcomes, most=None, **options))
    return (parts[0] if parts else None), outcomes


def indicator_runs(
    wh: Any,
    exchange: str,
    days: Sequence[dt.date],
    end: dt.datetime,
    timeframes: Sequence[str],
    spec: IndicatorSpec,
    *,
    outcomes: dict[str, list[Any]],
    checked: Callable[[str], bool] = lambda tf: True,
    progress: Callable[[int, str], None] | None = None,
    ranges: Ranges | None = None,
    most: int | None = INDICATOR_ROWS,
) -> Iterator[pl.DataFrame]:
    """The indicators `days` own for the venue (`exchange` first) in runs of whole
    timeframe-days of about `most` rows each (None: one run), in row order; the outcomes of
    the checks, for the timeframes `checked` selects, are added to `outcomes` (check name ->
    list) as each day is checked. A backfill writes each run as it comes, so its output is
    never in memory whole (7.4M rows x 30 columns at 100 symbols x 30 days).

    With `ranges` (a live run's tail, pipeline.candles.tail): only the rows in them, of their
    timeframes, each computed over the day's warm-up window up to the range's end (the same
    values as over the whole day: a value never depends on a later bar)."""
    import polars as pl

    from pipeline.candles.tail import in_ranges
    from pipeline.indicators import check_indicators, indicator_input_window
    from pipeline.indicators.compute import indicators_for_partition
    from pipeline.quality.checks import by_market

    if ranges is not None:
        if not ranges:
            return
        timeframes, end = list(ranges), max(hi for _, hi in ranges.values())
    parts: list[pl.DataFrame] = []
    held = 0
    for n, tf in enumerate(timeframes, 1):
        # Each timeframe's candles from its warm-up before the first day, read on their own:
        # all of them at once (and their copies while read) was the backfill's memory peak.
        hist_all = with_history(
            wh,
            exchange,
            wh.query(
                "SELECT * EXCLUDE (exchange) FROM candles WHERE exchange = ? AND timeframe = ?"
                " AND open_time >= ? AND close_time <= ? ORDER BY symbol, open_time",
                [exchange, tf, indicator_input_window(days[0], tf, spec)[0], end],
            ),
        )
        for day in days:
            lo, hi = indicator_input_window(day, tf, spec)
            hist = hist_all.filter((pl.col("open_time") >= lo) & (pl.col("close_time") <= hi))
            ind = indicators_for_partition(hist, day, spec)
            if ranges is not None:
                ind = in_ranges(ind, {tf: ranges[tf]})
            if ind.height:
                parts.append(ind)
                held += ind.height
            if checked(tf):  # checked by market, so what they report names the venue
                # Day by day, against exactly the candles the day was computed from: checked
                # over runs of days, real gaps made `nulls_where_not_due` expect values the
                # day's own warm-up window cannot give (tests/test_real_data.py).
                named = by_market(with_exchange(hist, exchange))
                found = check_indicators(named, by_market(with_exchange(ind, exchange)), spec)
                for name, outcome in found.items():
                    outcomes.setdefault(name, []).append(outcome)
            if most is not None and held >= most:
                run, parts, held = with_exchange(_concat(parts), exchange), [], 0
                yield run
                del run
        del hist_all
        if progress:
            progress(n, f"{exchange} {tf}: {len(days)} day(s)")
    if parts:
        yield with_exchange(_concat(parts), exchange)


def candle_rows_per_day(
    wh: Any, exchange: str, days: Sequence[dt.date], timeframes: Sequence[str]
) -> list[int]:
    """The venue's candle rows of `timeframes` each of `days` owns (how big a run of them is)."""
    from pipeline.candles.timeframes import DAY_MS, MINUTE_MS, day_bounds_ms, from_ms

    if not timeframes or not days:
        return [0] * len(days)
    d0, d1 = day_bounds_ms(days[0])[0], day_bounds_ms(days[-1])[1]
    marks = ", ".join("?" * len(timeframes))
    counted = wh.query(
        "SELECT (epoch_ms(close_time) - ?) // ? AS day, count(*) AS n FROM candles"
        f" WHERE exchange = ? AND timeframe IN ({marks}) AND close_time > ? AND close_time <= ?"
        " GROUP BY day",
        [MINUTE_MS, DAY_MS, exchange, *timeframes, from_ms(d0), from_ms(d1)],
    )
    per_day = dict(counted.iter_rows())
    return [int(per_day.get(day_bounds_ms(d)[0] // DAY_MS, 0)) for d in days]


def runs_of(sizes: Sequence[int], most: int) -> list[tuple[int, int]]:
    """Consecutive [a, b) index ranges of `sizes` (rows per day) adding up to at most `most`
    (one item at least): the runs of days a step works over in bounded memory."""
    out, a, held = [], 0, 0
    for i, n in enumerate(sizes):
        if i > a and held + n > most:
            out.append((a, i))
            a, held = i, 0
        held += n
    return [*out, (a, len(sizes))] if sizes else out


def _concat(frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """The frames one after another: their chunks, not a copy, when their schemas agree."""
    import polars as pl

    if all(f.schema == frames[0].schema for f in frames):
        return pl.concat(frames, how="vertical", rechunk=False)
    return pl.concat(frames, how="diagonal_relaxed")


def write_indicators(
    wh: Any,
    built: dict[str, pl.DataFrame | None],
    start: dt.datetime,
    end: dt.datetime,
    tails: dict[str, Ranges] | None = None,
) -> int:
    """Replace each venue's indicators in (start, end] (venue -> frame or None), in one
    transaction, adding any indicator column the table lacks first. With `tails` (venue ->
    a live run's ranges), only the rows in each venue's ranges."""
    import polars as pl

    from pipeline.candles.build import owned_where
    from pipeline.candles.tail import tail_replacements
    from warehouse import Replacement

    _ensure_columns(wh, [c for f in built.values() if f is not None for c in f.columns])
    if tails is not None:
        return wh.replace_many(
            [
                r
                for v, f in built.items()
                for r in tail_replacements(
                    "indicators", f if f is not None else pl.DataFrame(), v, tails[v]
                )
            ]
        )
    return wh.replace_many(
        [
            Replacement(
                "indicators",
                f if f is not None else pl.DataFrame(),
                *owned_where(v, start, end),
            )
            for v, f in built.items()
        ]
    )


def write_indicator_runs(
    wh: Any,
    runs: dict[str, Iterator[pl.DataFrame]],
    start: dt.datetime,
    end: dt.datetime,
    columns: Sequence[str],
) -> int:
    """`write_indicators` of whole partitions from each venue's `indicator_runs` (venue ->
    its runs, made while they are written), each run committed and freed once inserted
    (`Warehouse.replace_many(commit_runs=True)`: DuckDB would hold a 7M-row transaction in
    memory). `columns`: the indicator columns the runs carry (added to the table first)."""
    from pipeline.candles.build import owned_where
    from warehouse import Replacement

    _ensure_columns(wh, columns)
    return wh.replace_many(
        [Replacement("indicators", r, *owned_where(v, start, end)) for v, r in runs.items()],
        commit_runs=True,
        memory_limit=RUN_MEMORY,
    )


def _ensure_columns(wh: Any, columns: Sequence[str]) -> None:
    """Add any indicator column the table lacks (bb_squeeze BOOLEAN, every other DOUBLE)."""
    ids = {"exchange", *ID_COLUMNS}
    wh.ensure_columns(
        "indicators",
        {c: "BOOLEAN" if c == "bb_squeeze" else "DOUBLE" for c in dict.fromkeys(columns)
         if c not in ids},
    )  # fmt: skip

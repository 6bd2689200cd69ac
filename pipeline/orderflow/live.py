"""Order flow in a live run: only what changed since the last run, so the minute's order flow
reaches the signals in the same run as its candle.

- Ingest: the journal bytes the collector appended after the day's cursor (`order_flow_ingest`)
  become rows of `order_flow_1m`, merged with the rows already stored for the minutes they
  cover; the cursor's `bars_from` remembers the earliest minute whose bars are stale.
- Bars: per timeframe, the buckets from the one holding `bars_from` on are rebuilt by the same
  `bars()` as a whole partition (from every minute those buckets and the day's CVDs read, the
  new minutes taken as ingested instead of re-read) and replace exactly those rows.
- One transaction: the minutes, the bars and the moved cursor (`bars_from` cleared) commit
  together, or nothing does (a failed rebuild leaves the journal to the next run). Only when
  the new minutes fail a blocking check do they go in without their bars, `bars_from` kept.
- Waiting: a running collector journals a minute at most its grace after the minute's end, so
  the run waits (bounded) until the collector's mark passes the run's own minute: a minute
  that was watched is never left out of the run that computes its bar's signal.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import jsonfile
from pipeline.candles.timeframes import (
    DAY_MS,
    bucket_end,
    bucket_start,
    day_bounds_ms,
    from_ms,
    to_ms,
)
from pipeline.orderflow import journal
from warehouse import Replacement

if TYPE_CHECKING:
    import polars as pl

    from warehouse import Warehouse

CURSOR = "order_flow_ingest"
CURSOR_WHERE = "exchange = ? AND day = ?"
MARK_STALE_S = 90.0  # a collector whose mark has not moved for this long is not waited for
FLOW_COLUMNS_READ = (
    "exchange, symbol, open_time, taker_buy_volume, taker_sell_volume, volume_matches"
)


def mark_path(home: Path, exchange: str) -> Path:
    return home / "orderflow" / exchange / "closed.json"


def write_mark(home: Path, exchange: str, through_ms: int) -> None:
    """The collector's mark: every covered minute opening before `through` is journaled."""
    jsonfile.replace(
        mark_path(home, exchange),
        {"through": from_ms(through_ms).isoformat(), "at": time.time()},
    )


def wait_for_mark(home: Path, exchange: str, through: dt.datetime, timeout_s: float) -> str:
    """Wait until the collector has journaled every minute opening before `through`: 'ready',
    'timeout' (it is running but has not got there), or 'no collector' (no mark, or one that
    has not moved for MARK_STALE_S: nothing is coming)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rec = jsonfile.read(mark_path(home, exchange), {"through", "at"})
        if rec is None or time.time() - float(rec["at"]) > MARK_STALE_S:
            return "no collector"
        if dt.datetime.fromisoformat(rec["through"]) >= through:
            return "ready"
        if time.monotonic() >= deadline:
            return "timeout"
        time.sleep(0.02)


def cursor(wh: Warehouse, exchange: str, day: dt.date) -> tuple[int, dt.datetime | None]:
    """How far the day's journal is ingested (bytes) and its earliest stale minute."""
    with wh.writer() as con:  # one row: no frame (a live run's fixed cost)
        rows = con.execute(
            f"SELECT bytes, bars_from FROM {CURSOR} WHERE {CURSOR_WHERE}", [exchange, day]
        ).fetchall()
    if not rows:
        return 0, None
    row = rows[0]
    stale = row[1] if row[1] is None else row[1].astimezone(dt.UTC)
    return int(row[0]), stale


def cursor_row(
    exchange: str, day: dt.date, end: int, bars_from: dt.datetime | None, now: dt.datetime
) -> Replacement:
    import polars as pl

    ts = pl.Datetime("us", "UTC")
    row = pl.DataFrame(
        {"exchange": [exchange], "day": [day], "bytes": [end], "bars_from": [bars_from],
         "ingested_at": [now]},
        schema={"exchange": pl.String, "day": pl.Date, "bytes": pl.Int64, "bars_from": ts,
                "ingested_at": ts},
    )  # fmt: skip
    return Replacement(CURSOR, row, CURSOR_WHERE, (exchange, day.isoformat()))  # JSON in the log


@dataclass(frozen=True)
class Advance:
    """One venue's live step: the new minutes (annotated), the bars rebuilt (None: not
    asked), and what to write: `items` (minutes, bars and the cursor, ONE transaction) or,
    when the new minutes fail a blocking check, `minutes_only()` (the cursor keeps their bars
    stale for the next run; made only if asked)."""

    new: pl.DataFrame
    bars: pl.DataFrame | None
    items: list[Replacement]
    minutes_only: Callable[[], list[Replacement]]


def advance(
    wh: Warehouse,
    home: Path,
    exchange: str,
    day: dt.date,
    markets: Sequence[str],
    timeframes: Sequence[str] | None,
    now: dt.datetime,
    *,
    ingest: bool = True,
) -> Advance:
    """The day's journal after the cursor merged into `order_flow_1m` (configured markets;
    `ingest=False`: not read), then, unless `timeframes` is None, the buckets from the
    earliest stale minute on rebuilt by the same `bars()` as a whole partition. One cursor
    read and one read of `order_flow_1m` (the bars' input, the new minutes in it instead of
    re-read; all columns only where a stored minute must be kept beside them)."""
    import polars as pl

    from pipeline.orderflow.checks import annotate

    offset, stale = cursor(wh, exchange, day)
    if ingest:
        fresh, end = journal.read_from(home, exchange, day, offset)
    else:
        fresh, end = journal.empty(exchange), offset
    market = pl.concat_str("exchange", pl.lit(":"), "symbol")
    fresh = fresh.filter(market.is_in(list(markets)))
    span, klines = None, None
    if fresh.height:
        span = (fresh["open_time"].min(), fresh["open_time"].max())
        klines = wh.query(
            "SELECT exchange, symbol, open_time, low, high, volume FROM klines_1m"
            " WHERE exchange = ? AND open_time >= ? AND open_time <= ?",
            [exchange, *span],
        )
        stale = span[0] if stale is None else min(stale, span[0])
    new = annotate(fresh, empty_klines() if klines is None else klines, now)
    rebuild = timeframes is not None and stale is not None
    if end == offset and not rebuild:
        return Advance(new, None, [], list)
    d0, d1 = (from_ms(x) for x in day_bounds_ms(day))
    flow, kept = None, None
    if rebuild:
        assert stale is not None and timeframes is not None
        first = tail_input_start(day, timeframes, stale)
        flow, kept = _bars_input(wh, exchange, (first, d1), new, span)
    written = [] if span is None else [_merged(wh, exchange, span, new, kept)]

    def minutes_only() -> list[Replacement]:
        return [*written, cursor_row(exchange, day, end, stale, now)]

    if not rebuild:
        return Advance(new, None, minutes_only(), minutes_only)
    assert flow is not None and stale is not None and timeframes is not None
    from pipeline.orderflow.derived import bars

    # The buckets holding `stale` and after are exactly those closing after it: one range.
    lo = max(stale, d0)
    rows = bars(flow, list(timeframes), day, stale).filter(pl.col("close_time") > lo)
    where = "exchange = ? AND close_time > ? AND close_time <= ?"
    items = [
        *written,
        Replacement("order_flow_bars", rows, where, (exchange, lo, d1)),
        cursor_row(exchange, day, end, None, now),
    ]
    return Advance(new, rows, items, minutes_only)


def _bars_input(
    wh: Warehouse,
    exchange: str,
    read: tuple[dt.datetime, dt.datetime],
    new: pl.DataFrame,
    span: tuple[dt.datetime, dt.datetime] | None,
) -> tuple[pl.DataFrame, bool]:
    """The minutes the rebuilt bars read over `read` = [from, to): the stored ones, the new
    ones taken as ingested in place of any stored at the same minute, sorted as bars() sorts
    them (by DuckDB: polars re-sorting sorted rows is cheap, sorting them is not); and whether
    stored minutes the new ones do not replace lie in the new ones' `span`."""
    cols = FLOW_COLUMNS_READ.split(", ")
    lo, hi = span or read  # no new minutes: nothing is kept beside them
    with wh.writer() as con:
        con.register("_new", new.select(cols).to_arrow())
        try:
            flow = con.sql(
                f"SELECT {FLOW_COLUMNS_READ}, open_time BETWEEN ? AND ? AS kept"
                " FROM order_flow_1m ANTI JOIN _new USING (exchange, symbol, open_time)"
                " WHERE exchange = ? AND open_time >= ? AND open_time < ?"
                f" UNION ALL SELECT {FLOW_COLUMNS_READ}, false FROM _new"
                " ORDER BY symbol, open_time",
                params=[lo, hi, exchange, *read],
            ).pl()
        finally:
            con.unregister("_new")
    kept = span is not None and bool(flow["kept"].any())
    return flow.drop("kept"), kept


def _merged(
    wh: Warehouse,
    exchange: str,
    span: tuple[dt.datetime, dt.datetime],
    new: pl.DataFrame,
    kept: bool | None,
) -> Replacement:
    """The write of the new minutes: the range they span, with the stored minutes in it that
    they do not replace (read whole only if `kept`: the bars' input showed there are some, or
    None: it was not read)."""
    import polars as pl

    lo, hi = span
    key = ["symbol", "open_time"]
    frame = new
    if kept is None or kept:
        stored = wh.query(
            "SELECT * FROM order_flow_1m WHERE exchange = ? AND open_time >= ? AND open_time <= ?",
            [exchange, lo, hi],
        ).join(new.select(key), on=key, how="anti")
        frame = pl.concat([stored, new.select(stored.columns)], how="vertical_relaxed")
    return Replacement(
        "order_flow_1m", frame, "exchange = ? AND open_time >= ? AND open_time <= ?",
        (exchange, lo, hi),
    )  # fmt: skip


def empty_klines() -> pl.DataFrame:
    import polars as pl

    ts = pl.Datetime("us", "UTC")
    return pl.DataFrame(
        schema={"exchange": pl.String, "symbol": pl.String, "open_time": ts, "low": pl.Float64,
                "high": pl.Float64, "volume": pl.Float64}
    )  # fmt: skip


def tail_input_start(day: dt.date, timeframes: Sequence[str], since: dt.datetime) -> dt.datetime:
    """Where a tail rebuild from minute `since` reads from: the start of the earliest bucket
    holding `since` that closes within the day, the day's CVD anchor, or the 24 h before
    `since` that its rolling CVD sums, whichever is earliest."""
    d0, d1 = day_bounds_ms(day)
    t = to_ms(since)
    starts = [bucket_start(tf, t) for tf in timeframes if bucket_end(tf, bucket_start(tf, t)) <= d1]
    return from_ms(min([d0, t - DAY_MS, *starts]))

"""Order flow in a live run: only what changed since the last run, so the minute's order flow
reaches the signals in the same run as its candle.

- Ingest: the journal bytes the collector appended after the day's cursor (`order_flow_ingest`)
  become rows of `order_flow_1m`, merged with the rows already stored for the minutes they
  cover; the rows and the moved cursor are one transaction, and the cursor's `bars_from`
  remembers the earliest minute whose bars are now stale.
- Bars: per timeframe, the buckets from the one holding `bars_from` on are rebuilt by the same
  `bars()` as a whole partition (from every minute those buckets and the day's CVD anchor
  read), replace exactly those rows, and clear `bars_from` in the same transaction.
- Waiting: a running collector journals a minute at most its grace after the minute's end, so
  the run waits (bounded) until the collector's mark passes the newest candle: a minute that
  was watched is never left out of the run that computes its bar's signal.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
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
    rows = wh.query(f"SELECT bytes, bars_from FROM {CURSOR} WHERE {CURSOR_WHERE}", [exchange, day])
    return (int(rows["bytes"][0]), rows["bars_from"][0]) if rows.height else (0, None)


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
class Ingest:
    """One venue's live ingest: the new minutes (annotated) and what to write."""

    new: pl.DataFrame
    items: list[Replacement]


def ingest(
    wh: Warehouse, home: Path, exchange: str, day: dt.date, markets: Sequence[str], now: dt.datetime
) -> Ingest:
    """The day's journal after the cursor, merged into `order_flow_1m` (configured markets)."""
    import polars as pl

    from pipeline.orderflow.checks import annotate

    offset, bars_from = cursor(wh, exchange, day)
    fresh, end = journal.read_from(home, exchange, day, offset)
    market = pl.concat_str("exchange", pl.lit(":"), "symbol")
    fresh = fresh.filter(market.is_in(list(markets)))
    if end == offset:
        return Ingest(annotate(fresh, empty_klines(), now), [])
    if fresh.is_empty():
        return Ingest(
            annotate(fresh, empty_klines(), now), [cursor_row(exchange, day, end, bars_from, now)]
        )
    lo, hi = fresh["open_time"].min(), fresh["open_time"].max()
    klines = wh.query(
        "SELECT exchange, symbol, open_time, low, high, volume FROM klines_1m"
        " WHERE exchange = ? AND open_time >= ? AND open_time <= ?",
        [exchange, lo, hi],
    )
    new = annotate(fresh, klines, now)
    kept = wh.query(
        "SELECT * FROM order_flow_1m WHERE exchange = ? AND open_time >= ? AND open_time <= ?",
        [exchange, lo, hi],
    ).join(new.select("symbol", "open_time"), on=["symbol", "open_time"], how="anti")
    merged = pl.concat([kept, new.select(kept.columns)], how="vertical_relaxed")
    stale = lo if bars_from is None else min(bars_from, lo)
    return Ingest(
        new,
        [
            Replacement(
                "order_flow_1m",
                merged,
                "exchange = ? AND open_time >= ? AND open_time <= ?",
                (exchange, lo, hi),
            ),
            cursor_row(exchange, day, end, stale, now),
        ],
    )


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


def tail_bars(
    wh: Warehouse, exchange: str, day: dt.date, timeframes: Sequence[str], now: dt.datetime
) -> tuple[pl.DataFrame, list[Replacement]]:
    """The bars a live run's new minutes changed (with the replacements writing them and
    clearing `bars_from`); nothing when no minute is stale."""
    import polars as pl

    from pipeline.orderflow.derived import bars

    offset, since = cursor(wh, exchange, day)
    if since is None:
        return pl.DataFrame(), []
    d0, d1 = (from_ms(x) for x in day_bounds_ms(day))
    flow = wh.query(
        f"SELECT {FLOW_COLUMNS_READ} FROM order_flow_1m"
        " WHERE exchange = ? AND open_time >= ? AND open_time < ?",
        [exchange, tail_input_start(day, timeframes, since), d1],
    )
    # The buckets holding `since` and after are exactly those closing after it: one range.
    lo = max(since, d0)
    rows = bars(flow, list(timeframes), day, since).filter(pl.col("close_time") > lo)
    where = "exchange = ? AND close_time > ? AND close_time <= ?"
    items = [Replacement("order_flow_bars", rows, where, (exchange, lo, d1))]
    items.append(cursor_row(exchange, day, offset, None, now))
    return rows, items

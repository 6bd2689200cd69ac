"""One venue's candles for a span of daily partitions: read its 1m candles, resample, write.

Plain Python: the `candles` asset calls it once per venue, the tests too. Every read and every
replacement is scoped by `exchange`, so rebuilding one venue's partition never touches another
venue's rows, even where both list a symbol of the same name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.candles.timeframes import OWNED
from warehouse import Replacement

if TYPE_CHECKING:
    import polars as pl


def owned_where(exchange: str, start: dt.datetime, end: dt.datetime) -> tuple[str, tuple]:
    """The replacement predicate and parameters of one venue's rows in (start, end]."""
    return OWNED, (exchange, start, end)


def with_exchange(frame: pl.DataFrame, exchange: str) -> pl.DataFrame:
    """`frame` with `exchange` as its first column (the first key column of every table)."""
    import polars as pl

    return frame.select(pl.lit(exchange, dtype=pl.String).alias("exchange"), pl.all())


def as_of(wh: Any, exchange: str, end: dt.datetime) -> dt.datetime:
    """Buckets closing by this time are closed: the newest minute the venue has answered for
    (a candle, or a minute it confirmed it has no candle for), capped at `end`."""
    row = wh.query(
        "SELECT greatest("
        "(SELECT max(close_time) FROM klines_1m WHERE exchange = $1 AND open_time < $2),"
        " (SELECT max(open_time) + INTERVAL 1 MINUTE FROM kline_gaps"
        " WHERE exchange = $1 AND open_time < $2)) AS as_of",
        [exchange, end],
    )
    newest = row["as_of"][0]
    return min(end, newest) if newest is not None else end


@dataclass(frozen=True)
class VenueCandles:
    """What one venue's candle build read and made, for the write and the checks."""

    exchange: str
    frame: pl.DataFrame  # the buckets (start, end] owns, `exchange` first
    klines: pl.DataFrame  # the 1m candles read (without `exchange`)
    as_of: dt.datetime


def build_candles(
    wh: Any, exchange: str, start: dt.datetime, end: dt.datetime, timeframes: Sequence[str]
) -> VenueCandles:
    """Every timeframe's buckets closing in (start, end] from the venue's 1m candles."""
    import polars as pl

    from pipeline.candles.resample import resample
    from pipeline.candles.timeframes import partition_input_window

    read_from = partition_input_window(start.date(), timeframes)[0]
    klines = wh.query(
        "SELECT symbol, open_time, close_time, open, high, low, close, volume, turnover "
        "FROM klines_1m WHERE exchange = ? AND open_time >= ? AND open_time < ?"
        " ORDER BY symbol, open_time",
        [exchange, read_from, end],
    )
    newest = as_of(wh, exchange, end)
    frame = resample(klines, timeframes, as_of=newest)
    frame = frame.filter((pl.col("close_time") > start) & (pl.col("close_time") <= end))
    return VenueCandles(exchange, with_exchange(frame, exchange), klines, newest)


def write_candles(
    wh: Any, builds: Sequence[VenueCandles], start: dt.datetime, end: dt.datetime
) -> int:
    """Replace each built venue's candles in (start, end], all in one transaction."""
    return wh.replace_many(
        [Replacement("candles", b.frame, *owned_where(b.exchange, start, end)) for b in builds]
    )

"""1m klines to every timeframe (the `candles` table), over any span or per partition.

The work is numpy on sorted int64 times: each timeframe is rolled up from the coarsest finer
one that nests into it (1m -> 5m -> 15m -> ... -> 1d -> 1M; 37m -> 148m) with `reduceat` over
the bucket boundaries, which keeps a year of 1m candles to all 17 timeframes under 0.1 s. A
partition builds exactly the buckets it owns (see `pipeline.candles.timeframes`) from the 1m window
`partition_input_window` gives it; nested buckets inside an owned one are whole, so
partition-by-partition output is identical, bit for bit, to one pass over the whole history.
The aggregation itself is in pipeline.candles.rollup, the checks in pipeline.candles.checks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.candles.rollup import PRICES, Level, Minutes, build_levels, repeat_names
from pipeline.candles.timeframes import (
    MINUTE_MS,
    Timeframe,
    bucket_end,
    expected_minutes,
    from_ms,
    owned_by,
    parse_timeframes,
    partition_input_window,
    to_ms,
)

if TYPE_CHECKING:
    import polars as pl

KEYS = ["symbol", "timeframe", "open_time"]
# Above this many 1m rows `resample` returns a chunk per timeframe instead of one joint chunk.
BIG_INPUT = 50_000


def candles_schema() -> dict[str, Any]:
    import polars as pl

    ts = pl.Datetime("us", "UTC")
    return {
        "symbol": pl.String,
        "timeframe": pl.String,
        "open_time": ts,
        "close_time": ts,
        **{c: pl.Float64 for c in PRICES},
        "n_1m": pl.Int32,
        "complete": pl.Boolean,
    }


def _frame(m: Minutes, levels: list[tuple[Timeframe, Level]], as_of_ms: int) -> pl.DataFrame:
    """The `candles` rows of some levels, closed buckets only, as one frame (one set of columns
    to build: the live path builds 17 timeframes from a few thousand rows every minute)."""
    import numpy as np
    import polars as pl

    parts: list[dict[str, Any]] = []
    for tf, lvl in levels:
        be = bucket_end(tf, lvl.start)
        keep: Any = be <= as_of_ms
        if keep.all():  # the usual case: no copies of a year of 1m columns
            keep = slice(None)
        bs, n1 = lvl.start[keep], lvl.n1[keep]
        parts.append(
            {
                "sid": lvl.sid[keep],
                "open_time": bs,
                "close_time": be[keep],
                "n_1m": n1,
                "complete": n1 == expected_minutes(tf, bs),
                "tf": (tf.name, len(bs)),
                **{k: v[keep] for k, v in lvl.cols.items()},
            }
        )

    def col(k: str) -> Any:
        return parts[0][k] if len(parts) == 1 else np.concatenate([p[k] for p in parts])

    names = [pl.repeat(p["tf"][0], p["tf"][1], eager=True, dtype=pl.String) for p in parts]
    return pl.DataFrame(
        {
            "symbol": pl.concat([repeat_names(m.names, p["sid"]) for p in parts]),
            "timeframe": pl.concat(names),
            "open_time": pl.Series(col("open_time") * 1000).cast(pl.Datetime("us", "UTC")),
            "close_time": pl.Series(col("close_time") * 1000).cast(pl.Datetime("us", "UTC")),
            **{k: pl.Series(k, col(k), nan_to_null=k == "turnover") for k in PRICES},
            "n_1m": col("n_1m"),
            "complete": col("complete"),
        }
    )


def resample(
    klines: pl.DataFrame, timeframes: Sequence[str | Timeframe], *, as_of: dt.datetime | None = None
) -> pl.DataFrame:
    """1m klines (any symbols) to the `candles` layout for every timeframe; closed buckets only.

    A bucket is written when its close_time <= `as_of`: the close_time of the newest 1m candle
    known to have closed (default: the newest in `klines`). Rows come grouped by timeframe in
    the order given, then by symbol and open_time. open = first, high = max, low = min,
    close = last, volume/turnover summed (turnover is NULL if any minute lacks it), n_1m = 1m
    candles present, complete = n_1m equals the bucket's minutes.
    """
    import polars as pl

    tfs = parse_timeframes(timeframes)
    m = Minutes(klines)
    if m.n == 0 or not tfs:
        return pl.DataFrame(schema=candles_schema())
    as_of_ms = to_ms(as_of) if as_of is not None else int(m.t.max()) + MINUTE_MS
    levels = build_levels(m, tfs)
    if m.n < BIG_INPUT:
        return _frame(m, [(tf, levels[tf.name]) for tf in tfs], as_of_ms)
    # A long history: a chunk per timeframe rather than copying it all into one.
    return pl.concat([_frame(m, [(tf, levels.pop(tf.name))], as_of_ms) for tf in tfs])


def iter_resample(
    klines: pl.DataFrame, timeframes: Sequence[str | Timeframe], *, as_of: dt.datetime | None = None
) -> Iterator[pl.DataFrame]:
    """`resample` one timeframe at a time (for whole-history passes that must stay small)."""
    tfs = parse_timeframes(timeframes)
    m = Minutes(klines)
    if m.n == 0:
        return
    as_of_ms = to_ms(as_of) if as_of is not None else int(m.t.max()) + MINUTE_MS
    levels = build_levels(m, tfs)
    for tf in tfs:
        yield _frame(m, [(tf, levels.pop(tf.name))], as_of_ms)


def resample_partition(
    klines: pl.DataFrame,
    day: dt.date,
    timeframes: Sequence[str | Timeframe],
    as_of: dt.datetime | None = None,
) -> pl.DataFrame:
    """Exactly the candles the daily partition `day` owns: closed buckets whose last minute is
    in `day`.

    `klines` must cover `partition_input_window(day, timeframes)` (more is ignored). `as_of` as
    in `resample`; by default the newest 1m close_time in the window, so a live partition gets
    the buckets closed so far and a re-run later adds the rest. For a past day whose last
    minutes are missing from the exchange, pass the day's end to still write those (incomplete)
    buckets.
    """
    import polars as pl

    start, end = partition_input_window(day, timeframes)
    window = klines.filter((pl.col("open_time") >= start) & (pl.col("open_time") < end))
    if as_of is not None:
        as_of = from_ms(min(to_ms(as_of), to_ms(end)))  # naive = UTC, like everywhere
    out = resample(window, timeframes, as_of=as_of)
    return out.filter(owned_by(day))


__all__ = [
    "BIG_INPUT",
    "KEYS",
    "candles_schema",
    "iter_resample",
    "resample",
    "resample_partition",
]

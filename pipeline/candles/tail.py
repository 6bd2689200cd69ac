"""What a live run's new minutes change, and the candles of exactly that: the tail path.

A live run ingests the minutes [start, end) of one daily partition. The rows that can change
are, per timeframe, the buckets from the one holding the first changed minute on, up to the
newest closed one (`as_of`): a bucket holding a new or late minute, a bucket that closed with
it, and (late minutes) the closed buckets after it, whose indicators read it. The first changed
minute is the run's `start`, or earlier when the venue had not answered for the minutes before
`start` yet (their buckets close only now). Each timeframe's range is a close_time interval
(lo, hi] inside the partition; a timeframe with no bucket closing in it is left alone.

Candles, indicators and signals of the tail are computed by the same domain functions as the
whole partition (`resample` over the configured levels, `indicators_for_partition` over the
day's derived warm-up, `compute_signals` over `bar_input_window`), so the rows come out bit for
bit as a whole-partition rebuild gives them; they replace exactly those ranges, per exchange and
timeframe (signals: per personality), never another row of the day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.candles.build import VenueCandles, as_of, with_exchange
from pipeline.candles.timeframes import (
    bucket_end,
    bucket_start,
    expected_minutes,
    from_ms,
    parse_timeframes,
    to_ms,
)
from pipeline.quality.checks import MAX_LISTED, CheckOutcome
from warehouse import Replacement

if TYPE_CHECKING:
    import polars as pl

Ranges = dict[str, tuple[dt.datetime, dt.datetime]]  # timeframe -> close_time range (lo, hi]
# The rows of one venue and timeframe (or personality) in a close_time range: a tail's write.
RANGE_WHERE = "exchange = ? AND {key} = ? AND close_time > ? AND close_time <= ?"


@dataclass(frozen=True)
class Tail:
    """One venue's tail in a live run: the venue's newest answered minute and, per timeframe,
    the close_time range (lo, hi] its rows are rebuilt in."""

    exchange: str
    as_of: dt.datetime
    ranges: Ranges


def first_close(timeframe: str, lo: dt.datetime) -> dt.datetime:
    """close_time of the first bar of `timeframe` closing after `lo` (a range's first bar)."""
    return from_ms(bucket_end(timeframe, bucket_start(timeframe, to_ms(lo))))


def tail_ranges(
    timeframes: Sequence[str],
    changed_from: dt.datetime,
    newest: dt.datetime,
    p_start: dt.datetime,
    p_end: dt.datetime,
) -> Ranges:
    """Per timeframe, the close_time range (lo, hi] of the buckets from the one holding
    `changed_from` to the newest closed by `newest`, inside the partition (p_start, p_end];
    timeframes with no bucket closing in it are left out."""
    hi = min(to_ms(newest), to_ms(p_end))
    out: Ranges = {}
    for tf in parse_timeframes(timeframes):
        lo = max(bucket_start(tf, to_ms(changed_from)), to_ms(p_start))
        if to_ms(first_close(tf.name, from_ms(lo))) <= hi:
            out[tf.name] = (from_ms(lo), from_ms(hi))
    return out


def live_tail(
    wh: Any,
    exchange: str,
    p_start: dt.datetime,
    p_end: dt.datetime,
    start: dt.datetime,
    timeframes: Sequence[str],
) -> Tail:
    """The tail of a live run that ingested the minutes from `start` into (p_start, p_end]: the
    venue's newest answered minute now, and where it had got to before `start` (earlier than
    `start` when the minutes before it were not known yet: their buckets close only now)."""
    newest = as_of(wh, exchange, p_end)
    changed_from = as_of(wh, exchange, start)  # min(start, the newest answered before it)
    return Tail(exchange, newest, tail_ranges(timeframes, changed_from, newest, p_start, p_end))


def ranges_frame(ranges: Mapping[str, tuple[dt.datetime, dt.datetime]], key: str) -> pl.DataFrame:
    """The ranges as a frame (`key`, _lo, _hi) to join rows to."""
    import polars as pl

    ts = pl.Datetime("us", "UTC")
    return pl.DataFrame(
        {
            key: list(ranges),
            "_lo": pl.Series([lo for lo, _ in ranges.values()], dtype=ts),
            "_hi": pl.Series([hi for _, hi in ranges.values()], dtype=ts),
        },
        schema={key: pl.String, "_lo": ts, "_hi": ts},
    )


def in_ranges(frame: pl.DataFrame, ranges: Ranges, key: str = "timeframe") -> pl.DataFrame:
    """The rows of `frame` whose close_time lies in the range of their `key` (dropping the
    rest), in the frame's order."""
    import polars as pl

    from pipeline.indicators.history import utc_times

    if frame.is_empty():
        return frame
    keep = frame.with_columns(_t=utc_times(frame, "close_time")[0]).join(
        ranges_frame(ranges, key), on=key, how="left", maintain_order="left"
    )
    t = pl.col("_t")
    return keep.filter((t > pl.col("_lo")) & (t <= pl.col("_hi"))).drop("_t", "_lo", "_hi")


def build_tail_candles(wh: Any, tail: Tail, timeframes: Sequence[str]) -> VenueCandles:
    """The buckets of the tail's ranges from the venue's 1m candles: every configured level is
    rolled up (so each comes out as `resample` over the partition builds it) from the 1m window
    the longest rebuilt bucket starts in."""
    from pipeline.candles.resample import candles_schema, resample

    if not tail.ranges:
        import polars as pl

        empty = with_exchange(pl.DataFrame(schema=candles_schema()), tail.exchange)
        return VenueCandles(tail.exchange, empty, empty.drop("exchange"), tail.as_of)
    read_from = min(from_ms(bucket_start(tf, to_ms(lo))) for tf, (lo, _) in tail.ranges.items())
    hi = max(h for _, h in tail.ranges.values())
    klines = wh.query(
        "SELECT symbol, open_time, close_time, open, high, low, close, volume, turnover "
        "FROM klines_1m WHERE exchange = ? AND open_time >= ? AND open_time < ?"
        " ORDER BY symbol, open_time",
        [tail.exchange, read_from, hi],
    )
    frame = in_ranges(resample(klines, timeframes, as_of=hi), tail.ranges)
    return VenueCandles(tail.exchange, with_exchange(frame, tail.exchange), klines, tail.as_of)


def tail_replacements(
    table: str, frame: pl.DataFrame, exchange: str, ranges: Ranges, key: str = "timeframe"
) -> list[Replacement]:
    """Replace the venue's rows of `table` in each range (per `key`: timeframe or personality)
    with those of `frame` (whose rows all lie in the ranges)."""
    where = RANGE_WHERE.format(key=key)
    parts = frame.partition_by(key, as_dict=True) if frame.height else {}
    return [
        Replacement(table, parts.get((k,), frame.clear()), where, (exchange, k, lo, hi))
        for k, (lo, hi) in ranges.items()
    ]


def write_tail_candles(wh: Any, builds: Sequence[VenueCandles], tails: Sequence[Tail]) -> int:
    """Replace each venue's tail of candles, all in one transaction."""
    return wh.replace_many(
        [
            r
            for b, t in zip(builds, tails, strict=True)
            for r in tail_replacements("candles", b.frame, t.exchange, t.ranges)
        ]
    )


def check_tail_counts(candles: pl.DataFrame, klines: pl.DataFrame, ranges: Ranges) -> CheckOutcome:
    """`counts_match_1m` on a tail: per timeframe, the 1m rows in the buckets of its range are
    exactly the rebuilt buckets, each with n_1m = its 1m rows and complete when whole.

    `candles` with symbol, timeframe, open_time, close_time, n_1m, complete (any exchange
    column aside); `klines` the 1m candles read for them (symbol, open_time)."""
    import polars as pl

    from pipeline.indicators.history import utc_times

    if not ranges:
        return CheckOutcome(True, "no bucket closed: nothing rebuilt")
    ts = pl.Datetime("us", "UTC")
    t = klines["open_time"].dt.epoch("ms").to_numpy()
    want = []
    for name, (lo, hi) in ranges.items():
        start = bucket_start(name, t)
        end = bucket_end(name, start)
        keep = (end > to_ms(lo)) & (end <= to_ms(hi))
        want.append(
            pl.DataFrame(
                {
                    "symbol": klines["symbol"].cast(pl.String).filter(pl.Series(keep)),
                    "timeframe": pl.repeat(name, int(keep.sum()), dtype=pl.String, eager=True),
                    "open_time": pl.Series(start[keep] * 1000, dtype=pl.Int64).cast(ts),
                    "exp": pl.Series(expected_minutes(name, start[keep]), dtype=pl.Int64),
                }
            )
        )
    keys = ["symbol", "timeframe", "open_time"]
    found = pl.concat(want).group_by(keys).agg(pl.len().alias("rows"), pl.first("exp"))
    have = candles.select(
        pl.col("symbol").cast(pl.String),
        pl.col("timeframe").cast(pl.String),
        utc_times(candles, "open_time")[0],
        "n_1m",
        "complete",
    )
    both = have.join(found, on=keys, how="full", coalesce=True)
    rows = pl.col("rows").fill_null(0)
    bad = both.filter(
        pl.col("n_1m").is_null()
        | (pl.col("n_1m") != rows)
        | (pl.col("complete") != (rows == pl.col("exp")))
    )
    if bad.is_empty():
        return CheckOutcome(
            True, f"the {have.height} rebuilt buckets match the 1m data of {len(ranges)} ranges"
        )
    problems = [
        f"{r['symbol']} {r['timeframe']} {r['open_time'].isoformat()}: n_1m={r['n_1m']}"
        f" complete={r['complete']} but {r['rows'] or 0} 1m rows"
        for r in bad.head(MAX_LISTED).iter_rows(named=True)
    ]
    return CheckOutcome(
        False,
        f"{bad.height} rebuilt bucket(s) disagree with the 1m data ({problems[0]})",
        {"mismatches": bad.height, "examples": problems},
    )

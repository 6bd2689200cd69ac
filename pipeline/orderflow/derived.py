"""Order flow on every timeframe: taker buy and sell volume, delta, buy ratio and the
cumulative volume delta (anchored at 00:00 UTC, and rolling over 24 hours), from
`order_flow_1m`, on the candles' grid
(pipeline/candles/timeframes.py: epoch-anchored buckets, a day partition owns the buckets
whose last minute falls in it).

Coverage decides everything: a minute counts only if it has a row whose volume matched its
candle (`volume_matches` not false: a flagged minute's flow is known to be incomplete). A bar
has values only when every one of its minutes counts; otherwise its row says how many did
(`covered_minutes` of `expected_minutes`) and every value is NULL, never zero or a partial
sum. `cvd_day` at a bar is the sum of the deltas from 00:00 UTC of the day of its last minute
through that minute, NULL unless every one of those minutes counts; it is defined for
timeframes up to 1d (longer bars span several anchors: NULL). `cvd_24h` at a bar is the sum
of the deltas of the 1,440 minutes ending at its close, NULL unless every one of them counts
(its warm-up, as an indicator's: a day of order flow before the first value).

Both CVDs are sums of day-anchored running sums, never one running sum over whatever was read:
`cvd_24h` = the day's running sum through the bar + the suffix sum of the day before from the
window's first minute to its end, so a value has the same bits whatever the read started at
(a partition, the whole history, a bar at its close). Nothing comes from after a bar's close,
so a bar's values never change once it closed.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from pipeline.candles.timeframes import (
    DAY_MS,
    MINUTE_MS,
    as_timeframe,
    bucket_end,
    bucket_start,
    day_bounds_ms,
    expected_minutes,
    to_ms,
)
from pipeline.quality.checks import MAX_LISTED, CheckOutcome

if TYPE_CHECKING:
    import polars as pl

KEY = ("exchange", "symbol", "timeframe", "open_time")
VALUES = ("taker_buy_volume", "taker_sell_volume", "delta", "buy_ratio", "cvd_day", "cvd_24h")
DAY_MINUTES = DAY_MS // MINUTE_MS


def _minutes(flow: pl.DataFrame) -> pl.DataFrame:
    """Counted minutes with ms times, sorted: their delta and, per (market, UTC day), the
    running sum `cum` with its row count `n`, and the suffix sum to the day's end with its
    row count `rest`."""
    import polars as pl

    ms = pl.col("open_time").dt.epoch("ms")
    group = ("exchange", "symbol", "day")
    return (
        flow.filter(pl.col("volume_matches").is_null() | pl.col("volume_matches"))
        .select(
            "exchange",
            "symbol",
            ms.alias("t"),
            "taker_buy_volume",
            "taker_sell_volume",
            (pl.col("taker_buy_volume") - pl.col("taker_sell_volume")).alias("delta"),
        )
        .sort("exchange", "symbol", "t")
        .with_columns(day=pl.col("t") // DAY_MS)
        .with_columns(
            n=pl.int_range(1, pl.len() + 1).over(group),
            rest=pl.int_range(pl.len(), 0, -1).over(group),  # rows from this one to the day's end
            mod=(pl.col("t") - pl.col("day") * DAY_MS) // MINUTE_MS + 1,  # minutes into the day
            cum=pl.col("delta").cum_sum().over(group),
            suffix=pl.col("delta").cum_sum(reverse=True).over(group),
        )
    )


def _cvd(minutes: pl.DataFrame, since: int | None) -> pl.DataFrame:
    """Per counted minute from `since` (ms; None: all), at its close: the day-anchored CVD
    (NULL where a minute of the day before it is missing) and the rolling 24h CVD (NULL
    unless its 1,440 minutes all count). Each value is elementwise over `_minutes`' sums, so
    computing fewer of them changes no bit."""
    import polars as pl

    earlier = minutes
    if since is not None:  # minute t's window starts t - 1439 min before it: only those
        back = (DAY_MINUTES - 1) * MINUTE_MS
        t = pl.col("t")
        minutes = minutes.filter(t >= since)
        earlier = earlier.filter(t.is_between(since - back, t.max() - back))
    # the rolling window of minute t starts at t - 1439 min, in the day before unless t is
    # the day's last minute: that day's suffix sum from there, complete if no minute is missing
    first = earlier.select(
        "exchange",
        "symbol",
        (pl.col("t") + (DAY_MINUTES - 1) * MINUTE_MS).alias("t"),
        pl.col("suffix").alias("before"),
        pl.col("rest").alias("before_n"),
    )
    today = pl.col("n") == pl.col("mod")
    tail = (pl.col("mod") == DAY_MINUTES) | (pl.col("before_n") == DAY_MINUTES - pl.col("mod"))
    return minutes.join(first, on=["exchange", "symbol", "t"], how="left").select(
        "exchange",
        "symbol",
        (pl.col("t") + MINUTE_MS).alias("close"),
        pl.when(today).then(pl.col("cum")).alias("cvd"),
        pl.when(today & (pl.col("mod") == DAY_MINUTES))
        .then(pl.col("cum"))
        .when(today & tail)
        .then(pl.col("cum") + pl.col("before"))
        .alias("cvd_24h"),
    )


def bars(
    flow: pl.DataFrame, timeframes: list[str], day: dt.date, since: dt.datetime | None = None
) -> pl.DataFrame:
    """The rows of every timeframe the partition `day` owns, from `order_flow_1m` rows read
    over `partition_input_window(day, timeframes)`; buckets without a counted minute have no
    row. `since`: only the buckets holding that minute or after (a live run's tail; `flow`
    must then reach back to the earliest of them and to the day's CVD anchor). Every timeframe
    in one group-by: for a tail, the fixed cost per timeframe was the cost."""
    import numpy as np
    import polars as pl

    d0, d1 = day_bounds_ms(day)
    minutes = _minutes(flow)
    tfs = [as_timeframe(name) for name in timeframes]
    t = minutes["t"].to_numpy()
    n, k = len(t), len(tfs)
    picks, tf_ids, bucket = [], [], []
    for i, tf in enumerate(tfs):
        if since is None:
            pick = np.arange(n)
        elif bucket_end(tf, first := bucket_start(tf, to_ms(since))) > d1:
            pick = np.arange(0)  # the bucket holding `since` closes after the day: none owned
        else:
            pick = np.nonzero(t >= first)[0]  # `first` opens a bucket: t >= it iff its bucket is
        picks.append(pick)
        tf_ids.append(np.full(len(pick), i, dtype=np.int32))
        bucket.append(np.asarray(bucket_start(tf, t[pick]), dtype=np.int64))
    per_tf = minutes.select("exchange", "symbol", "taker_buy_volume", "taker_sell_volume")
    grouped = (
        per_tf[np.concatenate(picks)]
        .with_columns(
            tf=pl.Series(np.concatenate(tf_ids), dtype=pl.Int32),
            b=pl.Series(np.concatenate(bucket), dtype=pl.Int64),
        )
        .group_by("tf", "exchange", "symbol", "b")
        .agg(
            covered_minutes=pl.len().cast(pl.Int32),
            taker_buy_volume=pl.col("taker_buy_volume").sum(),
            taker_sell_volume=pl.col("taker_sell_volume").sum(),
        )
        .sort("tf")
    )
    tf_of, b = grouped["tf"].to_numpy(), grouped["b"].to_numpy()
    expected = np.zeros(len(b), dtype=np.int32)
    edges = np.searchsorted(tf_of, np.arange(k + 1))
    for i, tf in enumerate(tfs):
        lo, hi = edges[i], edges[i + 1]
        if hi > lo:
            expected[lo:hi] = expected_minutes(tf, b[lo:hi])
    day_long = np.array([tf.kind != "month" and tf.minutes <= 1440 for tf in tfs], dtype=bool)
    ts = pl.Datetime("ms", "UTC")
    grouped = grouped.with_columns(
        close=pl.Series(b + expected.astype(np.int64) * MINUTE_MS, dtype=pl.Int64),
        expected_minutes=pl.Series(expected, dtype=pl.Int32),
        timeframe=pl.Series(np.array(timeframes, dtype=object)[tf_of], dtype=pl.String),
        day_long=pl.Series(day_long[tf_of], dtype=pl.Boolean),
    ).filter((pl.col("close") > d0) & (pl.col("close") <= d1))
    cvd = _cvd(minutes, None if since is None else to_ms(since))
    grouped = grouped.join(cvd, on=["exchange", "symbol", "close"], how="left")
    whole = pl.col("covered_minutes") == pl.col("expected_minutes")
    buy, sell = pl.col("taker_buy_volume"), pl.col("taker_sell_volume")
    return grouped.select(
        "exchange",
        "symbol",
        "timeframe",
        pl.col("b").cast(ts).cast(pl.Datetime("us", "UTC")).alias("open_time"),
        pl.col("close").cast(ts).cast(pl.Datetime("us", "UTC")).alias("close_time"),
        "covered_minutes",
        "expected_minutes",
        pl.when(whole).then(buy).alias("taker_buy_volume"),
        pl.when(whole).then(sell).alias("taker_sell_volume"),
        pl.when(whole).then(buy - sell).alias("delta"),
        pl.when(whole & (buy + sell > 0)).then(buy / (buy + sell)).alias("buy_ratio"),
        pl.when(whole & pl.col("day_long")).then(pl.col("cvd")).alias("cvd_day"),
        pl.when(whole).then(pl.col("cvd_24h")).alias("cvd_24h"),
    ).sort(*KEY)


CHECKS = {
    "null_outside_coverage": "A bar has values exactly when every one of its minutes has "
    "order flow (covered_minutes = expected_minutes); cvd_day only up to 1d bars, cvd_24h only "
    "when the day before the close is covered too: NULL, never zero, outside coverage.",
    "values_consistent": "delta = buy - sell (1e-9 relative), buy_ratio within [0, 1], "
    "covered_minutes within [1, expected_minutes].",
}


def bar_checks(frame: pl.DataFrame) -> dict[str, CheckOutcome]:
    """The blocking checks of `order_flow_bars` over what a partition wrote."""
    import polars as pl

    whole = pl.col("covered_minutes") == pl.col("expected_minutes")
    has = pl.col("delta").is_not_null()
    wrong_null = frame.filter(
        (whole != has) | (~whole & pl.any_horizontal(pl.col("cvd_day", "cvd_24h").is_not_null()))
    )
    bad = frame.filter(
        ((pl.col("delta") - (pl.col("taker_buy_volume") - pl.col("taker_sell_volume"))).abs()
         > 1e-9 * (pl.col("taker_buy_volume") + pl.col("taker_sell_volume")).abs().clip(1.0))
        | ~pl.col("buy_ratio").is_between(0.0, 1.0)
        | ~pl.col("covered_minutes").is_between(1, pl.col("expected_minutes"))
    )  # fmt: skip

    def listed(rows: pl.DataFrame) -> list[str]:
        return [
            f"{r['exchange']}:{r['symbol']} {r['timeframe']} {r['open_time']:%Y-%m-%d %H:%M}"
            for r in rows.head(MAX_LISTED).iter_rows(named=True)
        ]

    return {
        "null_outside_coverage": CheckOutcome(
            wrong_null.height == 0,
            f"{wrong_null.height} bar(s) whose values do not follow their coverage: "
            f"{', '.join(listed(wrong_null))}"
            if wrong_null.height
            else f"{frame.filter(whole).height} whole bar(s) with values, "
            f"{frame.filter(~whole).height} partly covered bar(s) NULL",
            {"bars": frame.height, "wrong": wrong_null.height},
        ),
        "values_consistent": CheckOutcome(
            bad.height == 0,
            f"{bad.height} inconsistent bar(s): {', '.join(listed(bad))}"
            if bad.height
            else f"all {frame.height} bar(s) consistent",
            {"bars": frame.height, "inconsistent": bad.height},
        ),
    }

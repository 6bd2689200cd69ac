"""A simple moving-average crossover as stand-in signals for tests and benchmarks.

It produces frames in the signals table's layout (stamped with the close_time of the bar it
came from, confidence from the gap between the averages), so the engine can be exercised
end to end before, and independently of, the real personalities.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl


def crossover_signals(
    candles: pl.DataFrame,
    timeframe: str = "15m",
    fast: int = 8,
    slow: int = 24,
    personality: str = "sma_cross",
    symbol: str = "BTCUSDT",
) -> pl.DataFrame:
    """BUY when the fast SMA of closes crosses above the slow one on `timeframe` bars, SELL below.

    Bars are built from the 1m candles on the epoch grid and only closed bars (those whose
    close_time the candles reach) can signal, so there is no lookahead.
    """
    import polars as pl

    from pipeline.candles.timeframes import parse_timeframe

    spec = parse_timeframe(timeframe)
    if spec.kind != "fixed" or spec.anchor_ms:
        raise ValueError(f"crossover_signals supports minute/hour/day timeframes, not {timeframe}")
    every = f"{spec.minutes}m"
    last_close = candles["open_time"].max() + dt.timedelta(minutes=1)  # type: ignore[operator]
    bars = (
        candles.sort("open_time")
        .group_by_dynamic("open_time", every=every)
        .agg(pl.col("close").last())
        .with_columns(close_time=pl.col("open_time") + pl.duration(minutes=spec.minutes))
        .filter(pl.col("close_time") <= last_close)
        .with_columns(
            f=pl.col("close").rolling_mean(fast),
            s=pl.col("close").rolling_mean(slow),
        )
        .with_columns(up=pl.col("f") > pl.col("s"))
        .with_columns(flip=pl.col("up") != pl.col("up").shift(1))
        .filter(pl.col("flip") & pl.col("s").is_not_null() & pl.col("f").shift(1).is_not_null())
    )
    return bars.select(
        pl.lit(symbol).alias("symbol"),
        pl.lit(personality).alias("personality"),
        pl.lit(timeframe).alias("timeframe"),
        pl.col("close_time").cast(pl.Datetime("us", "UTC")),
        pl.col("open_time").cast(pl.Datetime("us", "UTC")),
        pl.when(pl.col("up")).then(pl.lit("BUY")).otherwise(pl.lit("SELL")).alias("action"),
        ((pl.col("f") / pl.col("s") - 1).abs() * 200).clip(0, 1).alias("confidence"),
        pl.col("close").alias("price"),
        pl.lit("ok").alias("quality"),
    )

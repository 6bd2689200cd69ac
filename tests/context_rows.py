"""Seeded market context for the signal tests, shaped as the warehouse tables hold it: order flow
per minute made into `order_flow_bars` by the pipeline's own code, funding every 8 hours,
open interest every 5 minutes and spot 1m candles beside the perpetual's. Each has a start
(history before it is unknown) and holes, so rules meet NULL inside the compared days too."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from pipeline.candles.timeframes import partition_input_window
from pipeline.orderflow.derived import bars
from pipeline.strategy.context import Context

TS = pl.Datetime("us", "UTC")
MIN = dt.timedelta(minutes=1)
Holes = list[tuple[dt.datetime, dt.timedelta]]  # (start, length) of spans without rows


def _rng(seed: int, symbol: str, what: str) -> np.random.Generator:
    return np.random.default_rng([seed, sum(map(ord, symbol)), sum(map(ord, what))])


def _holes(frame: pl.DataFrame, col: str, holes: Holes) -> pl.DataFrame:
    keep = pl.lit(True)
    for start, length in holes:
        keep &= ~pl.col(col).is_between(start, start + length, closed="left")
    return frame.filter(keep)


def order_flow_1m(
    klines: pl.DataFrame, start: dt.datetime, holes: Holes, seed: int
) -> pl.DataFrame:
    """Taker buy/sell volume of each minute from `start`, summing to the candle's volume."""
    parts = []
    for (sym,), k in (
        klines.filter(pl.col("open_time") >= start)
        .partition_by("symbol", as_dict=True, maintain_order=True)
        .items()
    ):
        share = _rng(seed, str(sym), "flow").uniform(0.25, 0.75, k.height)
        buy = (k["volume"].to_numpy() * share).round(3)
        parts.append(
            k.select(
                pl.lit("bybit").alias("exchange"),
                "symbol",
                "open_time",
                pl.Series("taker_buy_volume", buy),
                (pl.col("volume") - pl.Series(buy)).alias("taker_sell_volume"),
                pl.lit(True).alias("volume_matches"),
            )
        )
    return _holes(pl.concat(parts), "open_time", holes)


def flow_bars(flow: pl.DataFrame, timeframes: list[str], days: list[dt.date]) -> pl.DataFrame:
    """`order_flow_bars` of `days`, each computed as its partition does."""
    out = []
    for day in days:
        lo, hi = partition_input_window(day, timeframes)
        lo = min(lo, hi - dt.timedelta(days=2))
        t = pl.col("open_time")
        out.append(bars(flow.filter((t >= lo) & (t < hi)), timeframes, day))
    return pl.concat(out).drop("exchange")


def funding(
    symbols: list[str], start: dt.datetime, end: dt.datetime, missing: list[dt.datetime], seed: int
) -> pl.DataFrame:
    """A rate every 8 hours from `start` (00/08/16 UTC), about 1 in 6 above 0.05 %."""
    rows = []
    for sym in symbols:
        times = pl.datetime_range(start, end, "8h", eager=True, time_zone="UTC")
        rate = _rng(seed, sym, "funding").normal(0.0001, 0.0004, len(times))
        rows.append(pl.DataFrame({"symbol": sym, "funding_time": times, "funding_rate": rate}))
    f = pl.concat(rows).filter(~pl.col("funding_time").is_in(missing))
    return f.with_columns(pl.col("funding_time").cast(TS), known_at=pl.col("funding_time").cast(TS))


def open_interest(
    symbols: list[str], start: dt.datetime, end: dt.datetime, holes: Holes, seed: int
) -> pl.DataFrame:
    """A reading every 5 minutes (a random walk), known at the end of its interval."""
    rows = []
    for sym in symbols:
        times = pl.datetime_range(start, end, "5m", eager=True, time_zone="UTC")
        walk = 50_000 * np.exp(np.cumsum(_rng(seed, sym, "oi").normal(0, 0.002, len(times))))
        rows.append(pl.DataFrame({"symbol": sym, "time": times, "open_interest": walk}))
    f = pl.concat(rows).with_columns(pl.col("time").cast(TS))
    f = f.with_columns(known_at=pl.col("time") + dt.timedelta(minutes=5))
    return _holes(f, "time", holes)


def spot(klines: pl.DataFrame, start: dt.datetime, holes: Holes, seed: int) -> pl.DataFrame:
    """The spot candles: the perpetual's close off by a few basis points."""
    parts = []
    for (sym,), k in (
        klines.filter(pl.col("open_time") >= start)
        .partition_by("symbol", as_dict=True, maintain_order=True)
        .items()
    ):
        bps = _rng(seed, str(sym), "spot").normal(-2.0, 3.0, k.height)
        parts.append(
            k.with_columns((pl.col("close") * (1 + pl.Series(bps) / 1e4)).round(2).alias("close"))
        )
    return _holes(pl.concat(parts), "open_time", holes)


def context(
    klines: pl.DataFrame, timeframes: list[str], first: dt.date, last: dt.date, seed: int
) -> Context:
    """Everything from a few days before `first` to `last`, each with holes."""
    d0 = dt.datetime.combine(first, dt.time(), dt.UTC)
    end = dt.datetime.combine(last, dt.time(), dt.UTC) + dt.timedelta(days=1)
    symbols = klines["symbol"].unique(maintain_order=True).to_list()
    day, hour = dt.timedelta(days=1), dt.timedelta(hours=1)
    days = [first - 3 * day + i * day for i in range((last - first).days + 4)]
    flow = order_flow_1m(
        klines,
        d0 - dt.timedelta(days=4),
        [
            (d0 + dt.timedelta(days=4, hours=10), 3 * hour),
            (d0 + dt.timedelta(days=11, hours=2), 30 * MIN),
        ],
        seed,
    )
    return Context(
        flow=flow_bars(flow, timeframes, days),
        funding=funding(
            symbols,
            d0 + dt.timedelta(days=2),
            end,
            [d0 + dt.timedelta(days=6, hours=8), d0 + dt.timedelta(days=15)],
            seed,
        ),
        oi=open_interest(
            symbols,
            d0 - dt.timedelta(days=1),
            end,
            [(d0 + dt.timedelta(days=3, hours=5), 20 * MIN), (d0 + dt.timedelta(days=9), 2 * hour)],
            seed,
        ),
        spot=spot(klines, d0 + day, [(d0 + dt.timedelta(days=7, hours=3), hour)], seed),
    )

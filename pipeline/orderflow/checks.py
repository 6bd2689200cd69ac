"""What the `order_flow_1m` asset proves about a day of journaled minutes, against the 1m
candles of the same (exchange, symbol, minute).

- `trades_match_candles`: taker buy + sell volume equals the candle's volume to the venue's
  qty step (|difference| < qty_step / 2, i.e. equal in whole steps), wherever both exist. A
  minute that does not is stored as collected with `volume_matches = false` and named here:
  flagged, never corrected.
  A WARN, not an ERROR: a trade the stream lost is the venue's, and the minute is already
  left out of every bar (NULL), so it must not stop the run's signals.
- `prices_within_candles`: every minute's trade prices lie in the candle's [low, high].
- Coverage: which minutes of the day have order flow at all (a row); the rest have none.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from pipeline.quality.checks import MAX_LISTED, CheckOutcome

if TYPE_CHECKING:
    import polars as pl

CHECKS = {
    "trades_match_candles": "Each covered minute's taker buy + sell volume equals its 1m "
    "candle's volume to the venue's qty step (|difference| < step / 2), where both exist; a "
    "minute that does not is stored flagged (volume_matches = false), never corrected.",
    "prices_within_candles": "Every covered minute's trade prices lie within its 1m candle's "
    "[low, high], where both exist.",
}

WARN_ONLY = frozenset({"trades_match_candles"})


def annotate(flow: pl.DataFrame, klines: pl.DataFrame, now: dt.datetime) -> pl.DataFrame:
    """`flow` (journal rows with `exchange`) joined with its candles: close_time,
    candle_volume, volume_matches, prices_inside (NULL where no candle, or no qty step / no
    trades to compare), ingested_at."""
    import polars as pl

    candles = klines.select(
        "exchange",
        "symbol",
        "open_time",
        pl.col("volume").alias("candle_volume"),
        pl.col("low").alias("_low"),
        pl.col("high").alias("_high"),
    )
    total = pl.col("taker_buy_volume") + pl.col("taker_sell_volume")
    return (
        flow.join(candles, on=["exchange", "symbol", "open_time"], how="left")
        .with_columns(
            close_time=pl.col("open_time") + pl.duration(minutes=1),
            volume_matches=(total - pl.col("candle_volume")).abs() < pl.col("qty_step") / 2,
            prices_inside=(pl.col("price_low") >= pl.col("_low"))
            & (pl.col("price_high") <= pl.col("_high")),
            ingested_at=pl.lit(now).cast(pl.Datetime("us", "UTC")),
        )
        .drop("_low", "_high")
    )


def _minutes(rows: pl.DataFrame) -> list[str]:
    return [
        f"{r['exchange']}:{r['symbol']} {r['open_time']:%Y-%m-%d %H:%M}"
        for r in rows.head(MAX_LISTED).iter_rows(named=True)
    ]


def flow_checks(frame: pl.DataFrame) -> dict[str, CheckOutcome]:
    """The blocking checks over an annotated day (see the module docstring)."""
    import polars as pl

    out = {}
    compared = frame.filter(pl.col("volume_matches").is_not_null())
    bad = compared.filter(~pl.col("volume_matches"))
    total = pl.col("taker_buy_volume") + pl.col("taker_sell_volume")
    unchecked = frame.filter(pl.col("candle_volume").is_not_null() & pl.col("qty_step").is_null())
    note = f"; {unchecked.height} without a qty step not compared" if unchecked.height else ""
    if bad.height:
        worst = bad.select((total - pl.col("candle_volume")).abs().max()).item()
        out["trades_match_candles"] = CheckOutcome(
            False,
            f"{bad.height} of {compared.height} minutes' trades do not add up to their candle's "
            f"volume (largest difference {worst:.6g}); they are flagged volume_matches = false: "
            f"{', '.join(_minutes(bad))}{note}",
            {"mismatched": bad.height, "compared": compared.height, "minutes": _minutes(bad)},
        )
    else:
        out["trades_match_candles"] = CheckOutcome(
            True,
            f"all {compared.height} minutes with a candle add up to its volume{note}",
            {"compared": compared.height, "without_candle": frame.height - compared.height},
        )
    inside = frame.filter(pl.col("prices_inside").is_not_null())
    outside = inside.filter(~pl.col("prices_inside"))
    out["prices_within_candles"] = CheckOutcome(
        outside.height == 0,
        f"{outside.height} of {inside.height} minutes trade outside their candle's range: "
        f"{', '.join(_minutes(outside))}"
        if outside.height
        else f"all {inside.height} minutes with trades and a candle trade inside its range",
        {"outside": outside.height, "compared": inside.height, "minutes": _minutes(outside)},
    )
    return out


def coverage(frame: pl.DataFrame, markets: list[str]) -> pl.DataFrame:
    """Per market of `markets` (`exchange:symbol`): the day's covered minutes (and their share
    of 1440), the first and last, and how many stretches of consecutive minutes they form."""
    import polars as pl

    per = (
        frame.with_columns(market=pl.concat_str("exchange", pl.lit(":"), "symbol"))
        .sort("market", "open_time")
        .group_by("market", maintain_order=True)
        .agg(
            covered=pl.len(),
            first=pl.col("open_time").min(),
            last=pl.col("open_time").max(),
            stretches=(pl.col("open_time").diff() != pl.duration(minutes=1)).sum() + 1,
        )
    )
    every = pl.DataFrame({"market": markets}, schema={"market": pl.String})
    return (
        every.join(per, on="market", how="left")
        .with_columns(pl.col("covered").fill_null(0), pl.col("stretches").fill_null(0))
        .with_columns(share=pl.col("covered") / 1440.0)
        .sort("market")
    )

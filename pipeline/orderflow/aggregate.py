"""Public trades to one row per (symbol, minute): what the taker bought and sold.

A trade is Bybit's `publicTrade` item (`T` ms timestamp, `s` symbol, `S` the TAKER's side Buy
or Sell, `v` size, `p` price, `i` trade id). A minute is `[open_time, open_time + 60 s)` on
the epoch grid, like a 1m candle, so a minute's trades add up to its candle's volume. VWAP is
NULL for a minute without trades (there is no price to average), never zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

MINUTE_MS = 60_000
# The trade frame: symbol, time (epoch ms), side ("Buy"/"Sell", the taker's), size, price.
# One row per minute with trades, in this order after (symbol, open_time).
FLOW_COLUMNS = (
    "taker_buy_volume", "taker_sell_volume", "taker_buy_turnover", "taker_sell_turnover",
    "trade_count", "vwap", "price_low", "price_high",
)  # fmt: skip


def trades_frame(items: list[dict[str, Any]]) -> pl.DataFrame:
    """Bybit `publicTrade` data items (sizes and prices are strings on the wire) as a trade
    frame; polars reads the dicts (about twice as fast as a Python loop at a busy minute)."""
    import polars as pl

    wire = {"T": pl.Int64, "s": pl.String, "S": pl.String, "v": pl.String, "p": pl.String}
    return pl.DataFrame(items, schema=wire).select(
        symbol="s",
        time="T",
        side="S",
        size=pl.col("v").cast(pl.Float64),
        price=pl.col("p").cast(pl.Float64),
    )


def minute_flow(trades: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Aggregate a trade frame per (symbol, minute): taker buy/sell volume and turnover, trade
    count, VWAP and the trades' price range; `open_time` as UTC `Datetime("us")`, sorted.

    One symbol's trades (a day of them, say) are grouped on their minute as a sorted key
    (sorted first if they arrived out of order), which lets polars cut groups in one pass
    instead of hashing: about seven times faster on a day of trades. Many symbols' (one
    minute of a market at a close) are hashed on (symbol, minute) in one pass. Refuses a side
    other than Buy/Sell (it would count on neither side and the minute would no longer add up
    to its candle)."""
    import polars as pl

    df = trades.collect() if isinstance(trades, pl.LazyFrame) else trades
    one = df.height == 0 or bool((df["symbol"] == df["symbol"][0]).all())
    if one and not df["time"].is_sorted():
        df = df.sort("time")
    return _flow(df, one)


def _flow(df: pl.DataFrame, one_symbol: bool) -> pl.DataFrame:
    import polars as pl

    MS, US = pl.Datetime("ms", "UTC"), pl.Datetime("us", "UTC")
    size, price = pl.col("size"), pl.col("price")
    buy = pl.col("side") == "Buy"
    minute = pl.col("time") - pl.col("time") % MINUTE_MS
    keys = ["minute"] if one_symbol else ["symbol", "minute"]
    symbol = pl.lit(df["symbol"][0] if df.height else "", pl.String).alias("symbol")
    # As few whole-length columns as will do (writing them is most of the time): the sell
    # side is the total less the buy side; the sides' counts prove every trade has one.
    out = (
        df.lazy()
        .select(
            *([] if one_symbol else ["symbol"]),
            "size",
            "price",
            minute=minute.set_sorted() if one_symbol else minute,
            _buy_size=pl.when(buy).then(size).otherwise(0.0),
            _notional=size * price,
            _buy_notional=pl.when(buy).then(size * price).otherwise(0.0),
            _buys=buy,
            _sells=pl.col("side") == "Sell",
        )
        .group_by(keys, maintain_order=one_symbol)
        .agg(
            pl.col("size", "_buy_size", "_notional", "_buy_notional").sum(),
            pl.col("_buys", "_sells").sum(),
            trade_count=pl.len().cast(pl.Int64),
            price_low=price.min(),
            price_high=price.max(),
        )
        .with_columns(
            taker_buy_volume=pl.col("_buy_size"),
            taker_sell_volume=pl.col("size") - pl.col("_buy_size"),
            taker_buy_turnover=pl.col("_buy_notional"),
            taker_sell_turnover=pl.col("_notional") - pl.col("_buy_notional"),
            _sided=pl.col("_buys") + pl.col("_sells"),
            open_time=pl.col("minute").cast(MS).cast(US),
            vwap=pl.when(pl.col("size") > 0).then(pl.col("_notional") / pl.col("size")),
        )
        .collect()
    )
    if one_symbol:
        out = out.with_columns(symbol)
    odd = out.filter(pl.col("_sided") != pl.col("trade_count"))
    if odd.height:
        row = odd.sort("symbol", "open_time").row(0, named=True)
        raise ValueError(
            f"a trade of {row['symbol']} in the minute {row['open_time']:%Y-%m-%d %H:%M} UTC has"
            " a side other than Buy or Sell: only the taker's Buy or Sell can be counted"
        )
    return out.select("symbol", "open_time", *FLOW_COLUMNS).sort("symbol", "open_time")

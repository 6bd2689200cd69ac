"""Order flow aggregation: trades to minutes, checked against sums done by hand."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from pipeline.orderflow.aggregate import FLOW_COLUMNS, minute_flow, trades_frame

T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC


def _item(t: int, side: str, v: str, p: str, s: str = "BTCUSDT") -> dict:
    return {"T": t, "s": s, "S": side, "v": v, "p": p, "L": "PlusTick", "i": f"id{t}", "BT": False}


def test_minutes_sum_taker_sides_count_and_vwap() -> None:
    items = [
        _item(T0 + 1_000, "Buy", "0.5", "100"),
        _item(T0 + 59_999, "Sell", "1.5", "104"),  # the minute's last millisecond
        _item(T0 + 60_000, "Buy", "2", "110"),  # opens the next minute
        _item(T0 + 5_000, "Buy", "0.25", "102", s="ETHUSDT"),
        _item(T0 + 30_000, "Buy", "1", "101"),  # out of order: still the first minute
    ]
    out = minute_flow(trades_frame(items))
    assert out.columns == ["symbol", "open_time", *FLOW_COLUMNS]
    assert out["symbol"].to_list() == ["BTCUSDT", "BTCUSDT", "ETHUSDT"]
    first = out.row(0, named=True)
    assert first["open_time"] == dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert first["taker_buy_volume"] == pytest.approx(1.5, abs=1e-12)
    assert first["taker_sell_volume"] == pytest.approx(1.5, abs=1e-12)
    assert first["taker_buy_turnover"] == pytest.approx(0.5 * 100 + 101, abs=1e-9)
    assert first["taker_sell_turnover"] == pytest.approx(1.5 * 104, abs=1e-9)
    assert first["trade_count"] == 3
    assert first["vwap"] == pytest.approx((50 + 101 + 156) / 3.0, rel=1e-12)
    assert (first["price_low"], first["price_high"]) == (100.0, 104.0)
    second = out.row(1, named=True)
    assert second["open_time"] == dt.datetime(2024, 1, 1, 0, 1, tzinfo=dt.UTC)
    assert (second["taker_buy_volume"], second["taker_sell_volume"]) == (2.0, 0.0)
    assert second["trade_count"] == 1


def test_zero_size_minute_has_no_vwap_and_an_odd_side_is_refused() -> None:
    out = minute_flow(trades_frame([_item(T0, "Buy", "0", "100")]))
    assert out["vwap"].to_list() == [None]
    odd = "BTCUSDT in the minute 2024-01-01 00:00 UTC has a side other than Buy or Sell"
    with pytest.raises(ValueError, match=odd):
        minute_flow(trades_frame([_item(T0, "Buy", "1", "100"), _item(T0, "buy", "1", "100")]))


def test_no_trades_no_rows() -> None:
    out = minute_flow(trades_frame([]))
    assert out.height == 0 and out.columns == ["symbol", "open_time", *FLOW_COLUMNS]


def test_bench_baseline_agrees_with_polars() -> None:
    """The bench times pandas against polars only after they agree; at 20k trades here."""
    from bench.bench_orderflow import _agree, pandas_flow, synthetic_trades

    trades = synthetic_trades(20_000)
    _agree(minute_flow(trades), pandas_flow(trades.to_pandas()))
    assert isinstance(trades, pl.DataFrame) and minute_flow(trades).height == 1440

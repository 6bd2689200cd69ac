"""Engine behaviour on hand-made bars whose every fill, fee and equity value is worked out here."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from pipeline.backtest import BacktestParams, ParamError, metrics, run_backtest
from pipeline.replay import synthetic
from tests.backtest_rules import crossover_signals
from tests.conftest import DAY0, SEED

DAY = 1440


def bars(rows: list[tuple[int, float, float, float, float]]) -> pl.DataFrame:
    """1m candles from (minute offset from DAY0, open, high, low, close)."""
    return pl.DataFrame(
        {
            "open_time": [DAY0 + dt.timedelta(minutes=r[0]) for r in rows],
            "open": [float(r[1]) for r in rows],
            "high": [float(r[2]) for r in rows],
            "low": [float(r[3]) for r in rows],
            "close": [float(r[4]) for r in rows],
            "volume": [1.0] * len(rows),
        },
        schema_overrides={"open_time": pl.Datetime("us", "UTC")},
    ).with_columns(close_time=pl.col("open_time") + pl.duration(minutes=1))


def sigs(rows: list[tuple[int, str] | tuple[int, str, float, str]]) -> pl.DataFrame:
    """Signals from (close_time minute offset, action[, confidence, timeframe])."""
    return pl.DataFrame(
        {
            "symbol": ["BTCUSDT"] * len(rows),
            "personality": ["hand"] * len(rows),
            "timeframe": [r[3] if len(r) > 3 else "1m" for r in rows],
            "close_time": [DAY0 + dt.timedelta(minutes=r[0]) for r in rows],
            "action": [r[1] for r in rows],
            "confidence": [r[2] if len(r) > 2 else 0.5 for r in rows],
            "quality": ["ok"] * len(rows),
        },
        schema_overrides={"close_time": pl.Datetime("us", "UTC")},
    )


UNITS = {
    "sizing": "units",
    "units": 1.0,
    "stop_loss_pct": None,
    "slippage_bps": 0.0,
    "taker_fee": 0.0,
    "maker_fee": 0.0,
    "starting_equity": 10_000.0,
}


def params(**kw: object) -> BacktestParams:
    return BacktestParams(**{**UNITS, **kw})  # type: ignore[arg-type]


def test_hand_computed_series_pnl_fees_drawdown_sharpe() -> None:
    candles = bars(
        [
            (0, 100, 101, 99, 100),
            (1, 100, 102, 99, 101),  # BUY due: long at 100 x 1.001
            (DAY, 110, 112, 109, 111),
            (DAY + 1, 110, 110, 107, 108),  # SELL due: close long, open short at 110 x 0.999
            (2 * DAY, 120, 121, 119, 119.5),
            (2 * DAY + 1, 120, 121, 118, 121),  # BUY due: close short, long; closed at the end
        ]
    )
    signals = sigs([(1, "BUY"), (DAY + 1, "SELL"), (2 * DAY + 1, "BUY")])
    p = params(taker_fee=0.001, maker_fee=0.001, slippage_bps=10.0, starting_equity=1000.0)
    res = run_backtest(candles, signals, p)
    tr = res.trades

    # fills: next bar's open plus 10 bp against us; fee 0.1 % of each fill's notional
    e1, x1 = 100 * 1.001, 110 * 0.999
    e2, x2 = 110 * 0.999, 120 * 1.001
    e3, x3 = 120 * 1.001, 121 * 0.999  # the last long is closed at the window's last close
    fees = [0.001 * (e1 + x1), 0.001 * (e2 + x2), 0.001 * (e3 + x3)]
    pnl = [(x1 - e1) - fees[0], (e2 - x2) - fees[1], (x3 - e3) - fees[2]]
    assert tr["side"].to_list() == ["LONG", "SHORT", "LONG"]
    assert tr["entry_price"].to_list() == pytest.approx([e1, e2, e3], rel=1e-12)
    assert tr["exit_price"].to_list() == pytest.approx([x1, x2, x3], rel=1e-12)
    assert tr["fees"].to_list() == pytest.approx(fees, rel=1e-12)
    assert tr["pnl"].to_list() == pytest.approx(pnl, rel=1e-9)
    assert tr["exit_reason"].to_list() == ["signal", "signal", "end_of_window"]
    assert tr["entry_time"].to_list() == [
        DAY0 + dt.timedelta(minutes=m) for m in (1, DAY + 1, 2 * DAY + 1)
    ]
    assert tr["exit_time"][2] == DAY0 + dt.timedelta(minutes=2 * DAY + 2)

    # equity marked at each close: cash (entry fee already paid) + open P&L
    cash1 = 1000 - 0.001 * e1
    cash2 = 1000 + pnl[0] - 0.001 * e2
    eq = [
        1000,
        cash1 + (101 - e1),
        cash1 + (111 - e1),
        cash2 + (e2 - 108),
        cash2 + (e2 - 119.5),
        1000 + sum(pnl),
    ]
    np.testing.assert_allclose(res.equity, eq, rtol=1e-12)
    m = res.metrics
    assert m["final_equity"] == pytest.approx(1000 + sum(pnl))
    assert m["total_return_pct"] == pytest.approx(sum(pnl) / 1000 * 100)
    assert m["fees_paid"] == pytest.approx(sum(fees))
    assert m["slippage_paid"] == pytest.approx(0.1 + 0.11 + 0.11 + 0.12 + 0.12 + 0.121)
    assert m["max_drawdown_pct"] == pytest.approx((1 - eq[5] / eq[3]) * 100)
    assert m["trades"] == 3 and m["win_rate_pct"] == pytest.approx(200 / 3)
    assert m["win_rate_long_pct"] == 100 and m["win_rate_short_pct"] == 0
    assert m["profit_factor"] == pytest.approx((pnl[0] + pnl[2]) / -pnl[1])
    assert m["max_consecutive_wins"] == 1 and m["max_consecutive_losses"] == 1
    assert m["exposure_pct"] == pytest.approx(5 / 6 * 100)  # bars 1..5 of 0..5
    assert m["buy_hold_return_pct"] == pytest.approx((121 / 100 - 1) * 100)

    # Sharpe from the last equity of each UTC day, 365-day year, as documented in metrics.py
    daily = [eq[1], eq[3], eq[5]]
    r = [daily[1] / daily[0] - 1, daily[2] / daily[1] - 1]
    g = math.sqrt((1 + r[0]) * (1 + r[1])) - 1
    ann = (1 + g) ** 365 - 1
    var = (r[0] - r[1]) ** 2 / 2  # sample variance of two values
    vol = math.sqrt((var + (1 + g) ** 2) ** 365 - (1 + g) ** 730)
    assert m["return_ann_pct"] == pytest.approx(ann * 100, rel=1e-9)
    assert m["volatility_ann_pct"] == pytest.approx(vol * 100, rel=1e-9)
    assert m["sharpe"] == pytest.approx(ann / vol, rel=1e-9)
    assert m["sortino"] == pytest.approx(ann / (math.sqrt(min(r[1], 0) ** 2 / 2) * math.sqrt(365)))


def test_fills_at_next_open_never_at_signal_bar_close() -> None:
    candles = bars([(0, 100, 100, 100, 105), (1, 101, 102, 100, 101), (2, 101, 101, 101, 101)])
    res = run_backtest(candles, sigs([(1, "BUY")]), params(close_at_end=True))
    assert res.trades["entry_price"][0] == 101  # bar t+1's open, not bar t's close (105)
    assert res.trades["entry_time"][0] == DAY0 + dt.timedelta(minutes=1)


def test_stop_loss_fills_at_stop_or_at_a_gapped_open() -> None:
    base = [(0, 100, 100, 100, 100), (1, 100, 101, 99.5, 100)]
    p = params(stop_loss_pct=0.02, slippage_bps=5.0, taker_fee=0.001)
    res = run_backtest(
        bars([*base, (2, 99, 99.5, 97.5, 98), (3, 98, 98, 98, 98)]), sigs([(1, "BUY")]), p
    )
    entry = 100 * 1.0005
    stop = entry * 0.98
    t = res.trades.row(0, named=True)
    assert t["exit_reason"] == "stop_loss" and t["stop_price"] == pytest.approx(stop)
    assert t["exit_price"] == pytest.approx(stop * (1 - 0.0005))
    assert t["exit_time"] == DAY0 + dt.timedelta(minutes=2)
    gapped = run_backtest(
        bars([*base, (2, 97, 97.5, 96, 97), (3, 97, 97, 97, 97)]), sigs([(1, "BUY")]), p
    )
    assert gapped.trades["exit_price"][0] == pytest.approx(97 * (1 - 0.0005))


def test_short_stop_and_target_mirror_the_long_side() -> None:
    candles = bars([(0, 100, 100, 100, 100), (1, 100, 100.5, 99, 100), (2, 100, 100, 96.5, 97)])
    res = run_backtest(
        candles, sigs([(1, "SELL")]), params(stop_loss_pct=0.02, take_profit_pct=0.03)
    )
    t = res.trades.row(0, named=True)
    assert (t["side"], t["exit_reason"]) == ("SHORT", "take_profit")
    assert t["exit_price"] == pytest.approx(97) and t["pnl"] == pytest.approx(3)


def test_take_profit_is_a_maker_limit_or_a_taker_market_exit() -> None:
    candles = bars(
        [
            (0, 100, 100, 100, 100),
            (1, 100, 101, 99.5, 100.5),
            (2, 101, 103.5, 100.5, 103),
            (3, 103, 103, 103, 103),
        ]
    )
    kw = {
        "stop_loss_pct": 0.02,
        "take_profit_pct": 0.03,
        "taker_fee": 0.001,
        "maker_fee": 0.0002,
        "slippage_bps": 10.0,
    }
    limit = run_backtest(candles, sigs([(1, "BUY")]), params(**kw)).trades.row(0, named=True)
    entry = 100 * 1.001
    assert limit["exit_reason"] == "take_profit"
    assert limit["exit_price"] == pytest.approx(entry * 1.03)  # no slippage on a resting limit
    assert limit["fees"] == pytest.approx(0.001 * entry + 0.0002 * entry * 1.03)
    market = run_backtest(candles, sigs([(1, "BUY")]), params(**kw, take_profit_limit=False))
    t = market.trades.row(0, named=True)
    assert t["exit_price"] == pytest.approx(entry * 1.03 * 0.999)
    assert t["fees"] == pytest.approx(0.001 * entry + 0.001 * entry * 1.03 * 0.999)


def test_bar_touching_stop_and_target_assumes_the_stop_and_counts_it() -> None:
    candles = bars(
        [
            (0, 100, 100, 100, 100),
            (1, 100, 101, 99.5, 100),
            (2, 100, 103.5, 97.5, 100),
            (3, 100, 103.5, 96.5, 100),
            (4, 100, 100, 100, 100),
        ]
    )
    res = run_backtest(
        candles, sigs([(1, "BUY"), (3, "SELL")]), params(stop_loss_pct=0.02, take_profit_pct=0.03)
    )
    assert res.trades["exit_reason"].to_list() == ["stop_loss", "stop_loss"]
    assert res.trades["exit_price"].to_list() == pytest.approx([98, 102])
    assert res.trades["both_touched"].to_list() == [True, True]
    assert res.metrics["both_touched"] == 2
    assert metrics.tables(res)["by_exit_reason"].row(0, named=True)["both_touched"] == 2


def test_trailing_stop_follows_the_previous_bars_best_price() -> None:
    candles = bars(
        [
            (0, 100, 100, 100, 100),
            (1, 100, 110, 104, 109),  # high 110 and low 104 in one bar: no exit yet
            (2, 108, 108, 104, 105),  # trail = 110 x 0.95 = 104.5 from this bar on
            (3, 105, 105, 105, 105),
        ]
    )
    res = run_backtest(candles, sigs([(1, "BUY")]), params(trailing_stop_pct=0.05))
    t = res.trades.row(0, named=True)
    assert t["exit_reason"] == "trailing_stop"
    assert t["exit_price"] == pytest.approx(104.5)
    assert t["exit_time"] == DAY0 + dt.timedelta(minutes=2)


def test_stop_moves_to_breakeven_after_one_r() -> None:
    candles = bars(
        [
            (0, 100, 100, 100, 100),
            (1, 100, 102.5, 99, 102),
            (2, 101, 101, 99.5, 100),
            (3, 100, 100, 100, 100),
        ]
    )
    res = run_backtest(
        candles, sigs([(1, "BUY")]), params(stop_loss_pct=0.02, breakeven_r=1.0, taker_fee=0.001)
    )
    t = res.trades.row(0, named=True)
    assert t["exit_reason"] == "breakeven" and t["exit_price"] == pytest.approx(100)
    assert t["pnl"] == pytest.approx(-0.2)  # only the two fees
    no_be = run_backtest(candles, sigs([(1, "BUY")]), params(stop_loss_pct=0.02))
    assert no_be.trades["exit_reason"][0] == "end_of_window"


def test_liquidation_at_isolated_margin_price() -> None:
    candles = bars(
        [(0, 100, 100, 100, 100), (1, 100, 100, 99, 99), (2, 95, 95, 90, 91), (3, 91, 91, 91, 91)]
    )
    p = params(sizing="fraction", position_cap=1.0, leverage=10.0)
    res = run_backtest(candles, sigs([(1, "BUY")]), p)
    t = res.trades.row(0, named=True)
    liq = 100 * (1 - 0.1 + 0.005)
    assert t["exit_reason"] == "liquidation" and t["exit_price"] == pytest.approx(liq)
    assert t["size"] == pytest.approx(10_000 * 10 / 100)
    assert res.metrics["final_equity"] == pytest.approx(10_000 - 1000 * (100 - liq))
    assert res.metrics["liquidations"] == 1


def test_risk_sizing_uses_stop_distance_and_the_cap() -> None:
    candles = bars([(0, 100, 100, 100, 100), (1, 100, 100.5, 99.9, 100), (2, 100, 100, 100, 100)])
    kw = {"sizing": "risk", "risk_per_trade": 0.005, "position_cap": 0.2}
    wide = run_backtest(candles, sigs([(1, "BUY")]), params(**kw, stop_loss_pct=0.05))
    assert wide.trades["size"][0] == pytest.approx(50 / 5)  # 0.5 % of 10k over a 5-point stop
    tight = run_backtest(candles, sigs([(1, "BUY")]), params(**kw, stop_loss_pct=0.02))
    assert tight.trades["size"][0] == pytest.approx(0.2 * 10_000 / 100)  # 25 units capped to 20
    lev = run_backtest(candles, sigs([(1, "BUY")]), params(**kw, stop_loss_pct=0.02, leverage=2))
    assert lev.trades["size"][0] == pytest.approx(25)  # cap is 20 % x leverage 2


def test_expired_signals_are_dropped_and_counted() -> None:
    candles = bars([(0, 100, 100, 100, 100), (31, 100, 101, 99, 100), (32, 100, 100, 100, 100)])
    late = run_backtest(candles, sigs([(1, "BUY")]), params(signal_expiry_minutes=15))
    assert late.trades.height == 0 and late.metrics["signals_expired"] == 1
    ok = run_backtest(candles, sigs([(1, "BUY")]), params(signal_expiry_minutes=60))
    assert ok.trades["entry_time"][0] == DAY0 + dt.timedelta(minutes=31)


def test_signals_due_at_one_bar_latest_then_most_confident_wins() -> None:
    candles = bars([(0, 100, 100, 100, 100), (1, 100, 100, 100, 100), (2, 100, 100, 100, 100)])
    s = sigs([(1, "SELL", 0.4, "15m"), (1, "BUY", 0.9, "1m")])
    res = run_backtest(candles, s, params())
    assert res.trades["side"].to_list() == ["LONG"]
    assert res.metrics["signals_superseded"] == 1
    assert res.timeframe == "15m,1m"


def test_opposite_signal_policies_and_disallowed_sides() -> None:
    candles = bars([(i, 100 + i, 101 + i, 99 + i, 100 + i) for i in range(6)])
    s = sigs([(1, "BUY"), (3, "SELL")])
    rev = run_backtest(candles, s, params(on_opposite="reverse"))
    assert rev.trades["side"].to_list() == ["LONG", "SHORT"]
    close = run_backtest(candles, s, params(on_opposite="close"))
    assert close.trades["side"].to_list() == ["LONG"]
    assert close.trades["exit_reason"].to_list() == ["signal"]
    ignore = run_backtest(candles, s, params(on_opposite="ignore"))
    assert ignore.trades["exit_reason"].to_list() == ["end_of_window"]
    long_only = run_backtest(candles, s, params(allow_short=False))
    assert long_only.trades["side"].to_list() == ["LONG"]
    assert long_only.trades["exit_reason"].to_list() == ["signal"]
    same = run_backtest(candles, sigs([(1, "BUY"), (3, "BUY")]), params())
    assert same.trades.height == 1  # no pyramiding


def test_min_confidence_and_degraded_filters() -> None:
    candles = bars([(i, 100, 101, 99, 100) for i in range(5)])
    s = sigs([(1, "BUY", 0.2), (3, "SELL", 0.9)]).with_columns(
        quality=pl.Series(["ok", "degraded"])
    )
    res = run_backtest(candles, s, params(min_confidence=0.5))
    assert res.trades["side"].to_list() == ["SHORT"]
    assert res.metrics["signals_below_min_confidence"] == 1
    assert res.metrics["degraded_signals"] == 1 and res.metrics["degraded_signals_pct"] == 50
    res = run_backtest(candles, s, params(skip_degraded=True))
    assert res.trades["side"].to_list() == ["LONG"]


def test_no_signals_gives_a_flat_run() -> None:
    candles = bars([(i, 100, 101, 99, 100) for i in range(5)])
    res = run_backtest(candles, sigs([]).cast({"confidence": pl.Float64}), params())
    assert res.trades.height == 0
    assert res.metrics["final_equity"] == 10_000 and res.metrics["trades"] == 0
    assert res.metrics["win_rate_pct"] is None and res.metrics["max_drawdown_pct"] == 0


def test_window_data_quality_counts_missing_and_incomplete_candles() -> None:
    candles = bars([(i, 100, 101, 99, 100) for i in (0, 1, 2, 4)]).with_columns(
        complete=pl.Series([True, True, False, True])
    )
    end = DAY0 + dt.timedelta(minutes=5)
    res = run_backtest(candles, sigs([]).cast({"confidence": pl.Float64}), params(), end=end)
    assert res.metrics["missing_minutes"] == 1
    assert res.metrics["complete_candles_pct"] == pytest.approx(60)


@pytest.fixture(scope="module")
def synthetic_month() -> tuple[pl.DataFrame, pl.DataFrame]:
    ms = int(DAY0.timestamp() * 1000)
    candles = synthetic.frame("BTCUSDT", ms, ms + 40 * 86_400_000, seed=SEED)
    return candles, crossover_signals(candles, "15m", 8, 24)


def test_atr_stop_uses_the_signal_timeframes_atr(synthetic_month: tuple) -> None:
    import talib

    candles, signals = synthetic_month
    res = run_backtest(
        candles, signals, BacktestParams(stop_loss_pct=None, stop_loss_atr=2.0, atr_period=14)
    )
    b = (
        candles.group_by_dynamic("open_time", every="15m")
        .agg(pl.col("high").max(), pl.col("low").min(), pl.col("close").last())
        .with_columns(close_time=pl.col("open_time") + pl.duration(minutes=15))
    )
    atr = talib.ATR(b["high"].to_numpy(), b["low"].to_numpy(), b["close"].to_numpy(), 14)
    atr_at = dict(zip(b["close_time"].to_list(), atr, strict=True))
    t = res.trades.head(20)
    expect = [
        e - (1 if s == "LONG" else -1) * 2 * atr_at[st]
        for e, s, st in zip(t["entry_price"], t["side"], t["signal_time"], strict=True)
    ]
    assert t["stop_price"].to_list() == pytest.approx(expect, rel=1e-12)


def test_no_lookahead_more_future_data_changes_no_finished_trade(synthetic_month: tuple) -> None:
    candles, signals = synthetic_month
    cut = DAY0 + dt.timedelta(days=20)
    p = BacktestParams(take_profit_r=2.0, trailing_stop_pct=0.01)
    short = run_backtest(
        candles.filter(pl.col("open_time") < cut), signals.filter(pl.col("close_time") < cut), p
    )
    full = run_backtest(candles, signals, p)
    done = short.trades.filter(pl.col("exit_reason") != "end_of_window")
    assert done.height > 20
    assert full.trades.head(done.height).drop("both_touched").equals(done.drop("both_touched"))


def test_empty_window_is_rejected_with_the_reason() -> None:
    candles = bars([(i, 100, 101, 99, 100) for i in range(5)])
    s = sigs([(1, "BUY")])
    with pytest.raises(ParamError, match=r"empty window: start .* is not before end"):
        run_backtest(
            candles,
            s,
            params(),
            start=DAY0 + dt.timedelta(minutes=3),
            end=DAY0 + dt.timedelta(minutes=3),
        )
    with pytest.raises(ParamError, match=r"no 1m candles .* the candles cover"):
        run_backtest(
            candles, s, params(), start=DAY0 + dt.timedelta(days=3), end=DAY0 + dt.timedelta(days=4)
        )
    with pytest.raises(ParamError, match="no rows"):
        run_backtest(candles.clear(), s, params())
    with pytest.raises(ParamError, match="action"):
        run_backtest(candles, s.with_columns(action=pl.lit("HOLD")), params())

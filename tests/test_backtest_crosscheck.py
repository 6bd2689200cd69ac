"""The engine against backtesting.py on the same candles, entries, exits and fees.

Settings that make the two comparable: backtesting.py fills market orders at the next bar's
open (trade_on_close=False), spread 0 and our slippage 0, one relative commission equal to our
taker and maker fee, exclusive_orders=True (= our on_opposite="reverse"), hedging off, fixed
whole-unit sizes (sizing="units"), open trades left open at the end on both sides
(finalize_trades=False, close_at_end=False). Stop/target levels are handed to backtesting.py as
the prices our percentages give from the fill (the next open, known to the test).
"""

from __future__ import annotations

import datetime as dt
import math
import warnings

import numpy as np
import pandas as pd
import polars as pl
import pytest
from backtesting import Backtest, Strategy

from pipeline.backtest import BacktestParams, run_backtest
from pipeline.replay import synthetic
from tests.backtest_rules import crossover_signals
from tests.conftest import DAY0, SEED

DAYS = 7  # a whole week: backtesting.py annualises with 365 days only when weekends are in
FEE = 0.00055


@pytest.fixture(scope="module")
def market() -> tuple[pl.DataFrame, pl.DataFrame]:
    ms = int(DAY0.timestamp() * 1000)
    candles = synthetic.frame("BTCUSDT", ms, ms + DAYS * 86_400_000, seed=SEED)
    signals = crossover_signals(candles, "15m", fast=4, slow=12)
    return candles, signals


def _bt_run(
    candles: pl.DataFrame, signals: pl.DataFrame, stop: float | None, target: float | None
) -> pd.Series:
    df = (
        candles.select(
            pl.col("open_time").dt.replace_time_zone(None).alias("t"),
            pl.col("open").alias("Open"),
            pl.col("high").alias("High"),
            pl.col("low").alias("Low"),
            pl.col("close").alias("Close"),
            pl.col("volume").alias("Volume"),
        )
        .to_pandas()
        .set_index("t")
    )
    actions = {
        pd.Timestamp(t.replace(tzinfo=None)): a
        for t, a in signals.select("close_time", "action").iter_rows()
    }
    opens = df["Open"].to_numpy()
    minute = pd.Timedelta(minutes=1)

    class Replay(Strategy):
        def init(self) -> None:
            pass

        def next(self) -> None:
            i = len(self.data) - 1
            action = actions.get(self.data.index[-1] + minute)  # this bar's close_time
            if action is None or i + 1 >= len(opens):
                return
            fill = opens[i + 1]
            if action == "BUY" and not self.position.is_long:
                self.buy(
                    size=1,
                    sl=fill * (1 - stop) if stop else None,
                    tp=fill * (1 + target) if target else None,
                )
            elif action == "SELL" and not self.position.is_short:
                self.sell(
                    size=1,
                    sl=fill * (1 + stop) if stop else None,
                    tp=fill * (1 - target) if target else None,
                )

    bt = Backtest(
        df,
        Replay,
        cash=1_000_000,
        spread=0.0,
        commission=FEE,
        margin=1.0,
        trade_on_close=False,
        hedging=False,
        exclusive_orders=True,
        finalize_trades=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bt.run()


def _ours(
    candles: pl.DataFrame, signals: pl.DataFrame, stop: float | None, target: float | None
) -> object:
    params = BacktestParams(
        taker_fee=FEE,
        maker_fee=FEE,
        slippage_bps=0.0,
        starting_equity=1_000_000,
        sizing="units",
        units=1.0,
        stop_loss_pct=stop,
        take_profit_pct=target,
        on_opposite="reverse",
        close_at_end=False,
    )
    return run_backtest(candles, signals, params)


@pytest.mark.parametrize(("stop", "target"), [(None, None), (0.004, 0.006)])
def test_trades_equity_and_metrics_match_backtesting_py(
    market: tuple[pl.DataFrame, pl.DataFrame], stop: float | None, target: float | None
) -> None:
    candles, signals = market
    assert signals.height > 40
    stats = _bt_run(candles, signals, stop, target)
    res = _ours(candles, signals, stop, target)
    theirs = stats["_trades"].sort_values("EntryTime").reset_index(drop=True)
    ours = res.trades  # type: ignore[attr-defined]

    # same trades, same prices, same fees and P&L
    assert ours.height == len(theirs) > 30
    np.testing.assert_array_equal(
        ours["side"].to_numpy(), np.where(theirs["Size"] > 0, "LONG", "SHORT")
    )
    our_entry = ours["entry_time"].dt.replace_time_zone(None).to_numpy()
    np.testing.assert_array_equal(our_entry, theirs["EntryTime"].to_numpy())
    our_exit = ours["exit_time"].dt.replace_time_zone(None).to_numpy()
    np.testing.assert_array_equal(our_exit, theirs["ExitTime"].to_numpy())
    np.testing.assert_allclose(ours["entry_price"], theirs["EntryPrice"], rtol=1e-12)
    np.testing.assert_allclose(ours["exit_price"], theirs["ExitPrice"], rtol=1e-12)
    np.testing.assert_allclose(ours["fees"], theirs["Commission"], rtol=1e-9)
    np.testing.assert_allclose(ours["pnl"], theirs["PnL"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ours["return_pct"], theirs["ReturnPct"] * 100, rtol=1e-9, atol=1e-12)
    if stop:
        reasons = set(ours["exit_reason"].to_list())
        assert {"stop_loss", "take_profit", "signal"} <= reasons

    # the same equity on every bar, hence the same final equity
    np.testing.assert_allclose(res.equity, stats["_equity_curve"]["Equity"], rtol=1e-12)  # type: ignore[attr-defined]
    m = res.metrics  # type: ignore[attr-defined]
    assert m["final_equity"] == pytest.approx(stats["Equity Final [$]"], rel=1e-12)

    # the metrics both define
    same = {
        "total_return_pct": "Return [%]",
        "buy_hold_return_pct": "Buy & Hold Return [%]",
        "return_ann_pct": "Return (Ann.) [%]",
        "volatility_ann_pct": "Volatility (Ann.) [%]",
        "sharpe": "Sharpe Ratio",
        "sortino": "Sortino Ratio",
        "calmar": "Calmar Ratio",
        "win_rate_pct": "Win Rate [%]",
        "best_trade_pct": "Best Trade [%]",
        "worst_trade_pct": "Worst Trade [%]",
        "expectancy_pct": "Expectancy [%]",
        "sqn": "SQN",
        "exposure_pct": "Exposure Time [%]",
        "trades": "# Trades",
        "fees_paid": "Commissions [$]",
    }
    for ours_key, theirs_key in same.items():
        assert m[ours_key] == pytest.approx(stats[theirs_key], rel=1e-9, abs=1e-12), ours_key
    # drawdowns: we report depths as positive percentages
    assert m["max_drawdown_pct"] == pytest.approx(-stats["Max. Drawdown [%]"], rel=1e-9)
    assert m["avg_drawdown_pct"] == pytest.approx(-stats["Avg. Drawdown [%]"], rel=1e-9)
    assert m["sharpe"] != 0 and math.isfinite(m["sharpe"])
    underwater = dt.timedelta(days=m["max_time_underwater_days"])
    theirs_underwater = stats["Max. Drawdown Duration"].to_pytimedelta()
    assert abs(underwater - theirs_underwater) < dt.timedelta(seconds=1)
    hold = dt.timedelta(minutes=m["avg_trade_duration_minutes"])
    # backtesting.py rounds the average up to whole bars (minutes)
    assert abs(hold - stats["Avg. Trade Duration"].to_pytimedelta()) < dt.timedelta(minutes=1)
    # CAGR: we use 365-day years over [start, end), backtesting.py 365.25 over first..last bar
    ours_growth = (1 + m["cagr_pct"] / 100) ** (m["duration_days"] / 365)
    bt_days = (stats["End"] - stats["Start"]).total_seconds() / 86_400
    assert (ours_growth ** (365.25 / bt_days) - 1) * 100 == pytest.approx(
        stats["CAGR [%]"], rel=1e-9
    )

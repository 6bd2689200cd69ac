"""Run a backtest: the compiled loop over a prepared market, packaged with its metrics.

`run_backtest` is the one call most callers need; `prepare` + `simulate` + `result_from` are its
steps, which sweeps and walk-forward folds reuse. Fill, exit and sizing semantics are in
`params.py`; the window and signal rules in `market.py`; trade times in `result.py`.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from pipeline.backtest.market import Market, prepare
from pipeline.backtest.params import BacktestParams
from pipeline.backtest.result import BacktestResult, RawRun, trades_table

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

__all__ = ["Market", "RawRun", "prepare", "result_from", "run_backtest", "simulate"]


def param_arrays(p: BacktestParams) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's float and int parameter vectors (None becomes NaN)."""
    import numpy as np

    from pipeline.backtest import kernel as k

    def f(v: float | None) -> float:
        return float("nan") if v is None else float(v)

    fp = np.empty(k.N_F)
    fp[k.F_CASH] = p.starting_equity
    fp[k.F_TAKER] = p.taker
    fp[k.F_MAKER] = p.maker
    fp[k.F_SLIP] = p.slippage_bps / 10_000
    fp[k.F_RISK] = p.risk_per_trade
    fp[k.F_CAP] = p.position_cap
    fp[k.F_UNITS] = p.units
    fp[k.F_LEV] = p.leverage
    fp[k.F_MMR] = p.maintenance_margin
    fp[k.F_STOP_PCT] = f(p.stop_loss_pct)
    fp[k.F_STOP_ATR] = f(p.stop_loss_atr)
    fp[k.F_TP_PCT] = f(p.take_profit_pct)
    fp[k.F_TP_ATR] = f(p.take_profit_atr)
    fp[k.F_TP_R] = f(p.take_profit_r)
    fp[k.F_TRAIL_PCT] = f(p.trailing_stop_pct)
    fp[k.F_TRAIL_ATR] = f(p.trailing_stop_atr)
    fp[k.F_BE_R] = f(p.breakeven_r)
    ip = np.zeros(k.N_I, dtype=np.int64)
    ip[k.I_SIZING] = {
        "risk": k.SIZING_RISK,
        "fraction": k.SIZING_FRACTION,
        "units": k.SIZING_UNITS,
    }[p.sizing]
    ip[k.I_LONG] = int(p.allow_long)
    ip[k.I_SHORT] = int(p.allow_short)
    ip[k.I_OPPOSITE] = {"reverse": k.OPP_REVERSE, "close": k.OPP_CLOSE, "ignore": k.OPP_IGNORE}[
        p.on_opposite
    ]
    ip[k.I_TP_LIMIT] = int(p.take_profit_limit)
    ip[k.I_CLOSE_END] = int(p.close_at_end)
    return fp, ip


def simulate(m: Market, p: BacktestParams) -> RawRun:
    """Run the compiled loop over the market's window."""
    from pipeline.backtest import kernel as k

    sig, info = m.signal_bars(p)
    fp, ip = param_arrays(p)
    w = slice(m.i0, m.i1)
    equity, trades, nt, cnt = k.simulate(
        m.open[w],
        m.high[w],
        m.low[w],
        m.close[w],
        sig["dir"],
        sig["conf"],
        sig["atr"],
        sig["ref"],
        fp,
        ip,
    )
    names = (
        "both_touched",
        "opened",
        "ignored_same_direction",
        "ignored_side_not_allowed",
        "skipped_no_atr",
        "skipped_no_size",
        "size_clipped",
        "bankrupt",
        "ignored_opposite",
        "open_at_end",
    )
    counters = {n: int(v) for n, v in zip(names, cnt, strict=True)}
    return RawRun(equity, trades[:nt].copy(), counters, info)


def result_from(m: Market, p: BacktestParams, raw: RawRun) -> BacktestResult:
    """Package a kernel run: trades frame and the full metrics."""
    from pipeline.backtest import metrics

    trades = trades_table(m, raw)
    res = BacktestResult(
        params=p,
        market=m,
        equity=raw.equity,
        trades=trades,
        counters=raw.counters,
        signal_info=raw.signal_info,
        metrics={},
    )
    res.metrics.update(metrics.compute(res))
    return res


def run_backtest(
    candles: pl.DataFrame,
    signals: pl.DataFrame,
    params: BacktestParams | None = None,
    *,
    start: dt.datetime | dt.date | None = None,
    end: dt.datetime | dt.date | None = None,
    personality: str | None = None,
    symbol: str | None = None,
) -> BacktestResult:
    """Backtest one (symbol, personality): 1m candles + stored signals -> result.

    `candles`: open_time, open, high, low, close (optional `complete`, `symbol`); may start
    before `start` to warm up ATR. `signals`: close_time, action (optional confidence, quality,
    timeframe, personality, symbol). The window is [start, end), by default all the candles.
    """
    p = params or BacktestParams()
    m = prepare(candles, signals, start=start, end=end, personality=personality, symbol=symbol)
    return result_from(m, p, simulate(m, p))

"""Backtest engine speed: one year of 1m bars per personality, and a 100-combination sweep.

Baselines in the same run: vectorbt's `Portfolio.from_signals` on the same fill bars, prices,
fees, slippage and stops (its numba engine, after its own warm-up), and backtesting.py (pure
Python per bar; run once, on the first personality, because it takes seconds).

Data: a year (525,600 bars) of real Binance spot BTCUSDT 1m candles from ../shared/data: the
nine 2021-2025 regime segments then the 2026-03..07 block, each piece rescaled so it opens at
the previous piece's last close (returns and ranges stay real, the level is continuous), and
restamped onto one gap-free minute grid. Signals: the four shipped personalities computed over
that year (resampled, indicated, then `compute_signals`, as a backfill would; not timed).
"""

from __future__ import annotations

import datetime as dt
import time
import warnings
from typing import Any

import numpy as np
import polars as pl

from bench.common import best_of, real_file, table
from pipeline.backtest import BacktestParams, prepare, run_backtest
from pipeline.backtest.engine import simulate
from pipeline.backtest.sweep import combinations, sweep_market

TITLE = "Backtest engine"
YEAR_BARS = 525_600
START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
SEGMENTS = "binance_spot_BTCUSDT_1m_regime_segments_2021-2025.parquet"
BLOCK = "binance_spot_BTCUSDT_1m_2026-03-01_2026-07-09.parquet"
PARAMS = BacktestParams(take_profit_r=2.0)
GRID: dict[str, list[Any]] = {
    "stop_loss_pct": [0.005, 0.01, 0.02, 0.03, 0.05],
    "take_profit_r": [None, 1.0, 1.5, 2.0, 3.0],
    "trailing_stop_pct": [None, 0.01, 0.02, 0.04],
}


def year_of_candles() -> pl.DataFrame | None:
    """The spliced real year described in the module docstring (None without shared data)."""
    seg_path, block_path = real_file(SEGMENTS), real_file(BLOCK)
    if seg_path is None or block_path is None:
        return None
    seg = pl.read_parquet(seg_path).sort("ts")
    pieces = [seg.filter(pl.col("segment") == s).drop("segment") for s in range(9)]
    pieces.append(
        pl.read_parquet(block_path).select("ts", "open", "high", "low", "close", "volume")
    )
    out, level = [], None
    for piece in pieces:
        scale = 1.0 if level is None else level / piece["open"][0]
        piece = piece.with_columns(pl.col("open", "high", "low", "close") * scale)
        level = piece["close"][-1]
        out.append(piece.select("open", "high", "low", "close", "volume"))
    year = pl.concat(out).head(YEAR_BARS)
    times = pl.datetime_range(
        START,
        START + dt.timedelta(minutes=year.height - 1),
        "1m",
        time_unit="us",
        time_zone="UTC",
        eager=True,
    )
    return year.with_columns(
        symbol=pl.lit("BTCUSDT"),
        open_time=times,
        close_time=times + dt.timedelta(minutes=1),
    )


def personality_signals(candles: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Each shipped personality's signals over the year, as a backfill computes them."""
    from bench.bench_signals import PERSONALITIES, _frames
    from pipeline.candles.timeframes import parse_timeframe
    from pipeline.strategy.personality import load_personality
    from pipeline.strategy.signals import compute_signals

    ps = [load_personality(name) for name in PERSONALITIES]
    tfs = sorted({tf for p in ps for tf in p.timeframes}, key=lambda t: parse_timeframe(t).ms)
    frames = _frames(candles.drop("close_time"), tfs)
    return {p.name: compute_signals(frames, p) for p in ps}


def _vbt_inputs(m: Any, p: BacktestParams) -> dict[str, Any]:
    """Our fill bars as vectorbt entries (signal at the fill bar, price = that bar's open)."""
    import pandas as pd

    sig, _ = m.signal_bars(p)
    w = slice(m.i0, m.i1)
    index = pl.Series(m.times[w]).cast(pl.Datetime("us", "UTC")).to_pandas()
    return {
        "close": pd.Series(m.close[w], index=index),
        "entries": sig["dir"] == 1,
        "short_entries": sig["dir"] == -1,
        "price": m.open[w],
        "open": m.open[w],
        "high": m.high[w],
        "low": m.low[w],
        "fees": p.taker,
        "slippage": p.slippage_bps / 10_000,
        "size": 0.2 * p.starting_equity,
        "size_type": "value",
        # vectorbt's cash model rejects most reversals of a 20 % position at 10k ("can't cover
        # fees"); with ample cash it trades the same signals as we do
        "init_cash": 1_000_000.0,
        "freq": "1min",
    }


def _vbt_single(vbt: Any, base: dict[str, Any], p: BacktestParams) -> Any:
    stop = p.stop_loss_pct or np.inf
    tp = (p.take_profit_r or np.inf) * stop
    return vbt.Portfolio.from_signals(**base, sl_stop=stop, tp_stop=tp)


def _vbt_sweep(vbt: Any, base: dict[str, Any], combos: list[BacktestParams]) -> Any:
    """The same 100 stop/target combinations as one broadcast call (trailing via sl_trail)."""
    sl = np.array([[c.trailing_stop_pct or c.stop_loss_pct or np.inf for c in combos]])
    trail = np.array([[c.trailing_stop_pct is not None for c in combos]])
    tp = np.array([[(c.take_profit_r or np.inf) * (c.stop_loss_pct or 1) for c in combos]])
    cols = {k: v[:, None] if isinstance(v, np.ndarray) else v for k, v in base.items()}
    cols["close"] = base["close"].to_frame()
    return vbt.Portfolio.from_signals(**cols, sl_stop=sl, sl_trail=trail, tp_stop=tp)


def _backtesting_py(m: Any, p: BacktestParams) -> tuple[float, int]:
    """One backtesting.py run over the same fill bars; (seconds, trades)."""
    import pandas as pd
    from backtesting import Backtest, Strategy

    sig, _ = m.signal_bars(p)
    w = slice(m.i0, m.i1)
    df = pd.DataFrame(
        {
            "Open": m.open[w],
            "High": m.high[w],
            "Low": m.low[w],
            "Close": m.close[w],
            "Volume": np.ones(m.i1 - m.i0),
        },
        index=pd.to_datetime(m.times[w], unit="us"),
    )
    # backtesting.py orders placed at bar i fill at bar i + 1: shift our fill bars back one
    due = np.r_[sig["dir"][1:], 0]
    opens = m.open[w] / 1000
    stop, r = p.stop_loss_pct or 0.0, p.take_profit_r or 0.0

    class Replay(Strategy):
        def init(self) -> None:
            pass

        def next(self) -> None:
            i = len(self.data) - 1
            d = due[i]
            if d == 0:
                return
            fill = opens[i + 1]
            if d > 0 and not self.position.is_long:
                self.buy(size=0.2, sl=fill * (1 - stop), tp=fill * (1 + r * stop) if r else None)
            elif d < 0 and not self.position.is_short:
                self.sell(size=0.2, sl=fill * (1 + stop), tp=fill * (1 - r * stop) if r else None)

    # prices scaled down so that fractional BTC sizes become whole units (backtesting.py's advice)
    bt = Backtest(
        df / 1000,
        Replay,
        cash=p.starting_equity,
        commission=p.taker,
        exclusive_orders=True,
        finalize_trades=True,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = bt.run()
    return time.perf_counter() - t0, int(stats["# Trades"])


def run_with(candles: pl.DataFrame, signals: dict[str, pl.DataFrame], source: str) -> str:
    import vectorbt as vbt

    p = PARAMS
    lines = [source, ""]
    rows: list[list[object]] = []
    first_m = None
    warm = None
    ratios_core: list[float] = []
    ratios_full: list[float] = []
    for name, sig in signals.items():
        m = prepare(candles, sig, personality=name)
        first_m = first_m or m
        if warm is None:
            t0 = time.perf_counter()
            simulate(m, p)
            warm = time.perf_counter() - t0
        core = best_of(lambda m=m: simulate(m, p), 5)
        full = best_of(lambda sig=sig: run_backtest(candles, sig, p), 3)
        res = run_backtest(candles, sig, p)
        base = _vbt_inputs(m, p)
        t0 = time.perf_counter()
        _vbt_single(vbt, base, p)
        vbt_first = time.perf_counter() - t0
        vbt_t = best_of(lambda base=base: _vbt_single(vbt, base, p), 3)
        pf = _vbt_single(vbt, base, p)
        ratios_core.append(vbt_t / core)
        ratios_full.append(vbt_t / full)
        rows.append(
            [
                name,
                f"{sig.height:,}",
                f"{res.metrics['trades']:,}",
                f"{pf.trades.count():,}",
                f"{core * 1000:.1f} ms",
                f"{full * 1000:.0f} ms",
                f"{vbt_t * 1000:.0f} ms",
                f"{vbt_t / core:.1f}x",
                f"{vbt_t / full:.1f}x",
                f"{vbt_first:.1f} s",
            ]
        )
    n = first_m.i1 - first_m.i0 if first_m else 0
    lines += [
        f"One year = {n:,} 1m bars per personality; params: risk 0.5 % / 2 % stop, "
        "target 2R, Bybit linear fees, 1 bp slippage. `engine` = signal mapping + compiled loop "
        "(what a sweep repeats); `full run` = `run_backtest` from frames incl. all metrics. "
        "vectorbt gets the same fill bars, open prices, fees, slippage and stop/target.",
        "",
        table(
            [
                "personality",
                "signals",
                "trades (ours)",
                "trades (vectorbt)",
                "engine",
                "full run",
                "vectorbt from_signals",
                "vectorbt / engine",
                "vectorbt / full run",
                "vectorbt warm-up",
            ],
            rows,
        ),
        "",
        f"Target: at least 5x faster than vectorbt on a single backtest. Slowest personality: "
        f"{min(ratios_core):.1f}x for the engine, {min(ratios_full):.1f}x for the full run "
        f"({'met' if min(ratios_full) >= 5 else 'NOT met'}). "
        f"Our JIT warm-up (first call in this process; numba's on-disk cache makes it a load "
        f"after the first ever run): {warm:.2f} s.",
        "",
    ]

    # the 100-combination sweep over the first personality's year
    assert first_m is not None
    combos = combinations(p, GRID)
    t0 = time.perf_counter()
    swept = sweep_market(first_m, GRID, p)
    ours_sweep = time.perf_counter() - t0
    base = _vbt_inputs(first_m, p)
    t0 = time.perf_counter()
    _vbt_sweep(vbt, base, combos)
    vbt_sweep = time.perf_counter() - t0
    bt_s, bt_trades = _backtesting_py(first_m, p)
    name = next(iter(signals))
    ours_full = best_of(lambda: run_backtest(candles, signals[name], p), 3)
    best = swept.sort("sharpe", descending=True, nulls_last=True).row(0, named=True)
    lines += [
        table(
            ["task", "ours", "baseline", "baseline / ours"],
            [
                [
                    f"sweep, {len(combos)} combinations x 1 year ({name})",
                    f"{ours_sweep:.2f} s",
                    f"vectorbt, one broadcast call: {vbt_sweep:.2f} s",
                    f"{vbt_sweep / ours_sweep:.1f}x",
                ],
                [
                    f"one year ({name}), backtesting.py run once",
                    f"{ours_full:.2f} s",
                    f"backtesting.py: {bt_s:.1f} s ({bt_trades:,} trades)",
                    f"{bt_s / ours_full:.0f}x",
                ],
            ],
        ),
        "",
        f"Sweep target: 100 combinations over a year in under 10 s: {ours_sweep:.2f} s "
        f"({'met' if ours_sweep < 10 else 'NOT met'}). Best combination by Sharpe: "
        + ", ".join(f"{k}={best[k]}" for k in GRID)
        + ". Sizing differs between engines (ours: risk-based; vectorbt: a fixed 2,000 value; "
        "backtesting.py: 20 % of equity in whole units of price/1000), so trade counts are for "
        "orientation; the like-for-like equality check is tests/test_backtest_crosscheck.py.",
    ]
    return "\n".join(lines)


def run() -> str:
    candles = year_of_candles()
    if candles is None:
        return "_skipped: ../shared/data is not available on this machine_"
    source = (
        "Data: real Binance spot BTCUSDT 1m (regime segments 2021-2025 + 2026-03..07), "
        "spliced into one continuous year (see bench/bench_backtest.py). Signals: the four "
        "shipped personalities over that year, computed as a backfill does (not timed)."
    )
    return run_with(candles, personality_signals(candles), source)

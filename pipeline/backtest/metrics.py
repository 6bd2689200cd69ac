"""Backtest metrics and breakdown tables, with definitions matching backtesting.py's.

Where backtesting.py (0.6) defines a figure we compute it the same way, so the cross-check test
can compare them; the annualisation is 365 days (crypto trades every day, and backtesting.py
also picks 365 for data with weekends):
- equity is marked at every 1m close (cash + open P&L; entry fee paid at entry, exit fee at exit);
- daily returns: the last equity of each UTC day, percent change day over day;
- return_ann_pct: geometric mean daily return g compounded, (1 + g)^365 - 1;
- volatility_ann_pct: sqrt((var(r, ddof=1) + (1 + g)^2)^365 - (1 + g)^730), the annualised
  standard deviation of compounded returns;
- sharpe = return_ann / volatility_ann (risk-free 0); sortino = return_ann /
  (sqrt(mean(min(r, 0)^2)) x sqrt(365)); calmar = return_ann / max drawdown;
- drawdown = 1 - equity / running peak; an episode runs from a peak to the bar where equity is
  back at the peak (or the window's end). max_time_underwater is the longest episode
  (backtesting.py's "Max. Drawdown Duration"); max_drawdown_duration is the episode that holds
  the deepest drawdown; avg_drawdown_pct is the mean of the episodes' depths;
- win rate counts pnl > 0; trade return = pnl / (size x entry price); expectancy_pct is the mean
  trade return, sqn = sqrt(n) x mean(pnl) / std(pnl, ddof=1); exposure = share of bars from an
  entry bar to its exit bar inclusive; buy-and-hold runs from the first bar's close to the last.
Deliberate differences: cagr uses 365-day years (backtesting.py: 365.25) and profit_factor is
gross profit / gross loss in cash (backtesting.py sums per-trade percentages). Drawdowns are
reported as positive percentages.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from pipeline.backtest.result import BacktestResult

DAYS_PER_YEAR = 365
DAY_US = 86_400_000_000
CONFIDENCE_BUCKETS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _f(v: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become None."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def daily_returns(times_us: np.ndarray, equity: np.ndarray) -> np.ndarray:
    """Percent change of the last equity of each UTC day (days without bars are skipped)."""
    import numpy as np

    if len(equity) == 0:
        return np.zeros(0)
    day = times_us // DAY_US
    last = np.r_[np.flatnonzero(day[1:] != day[:-1]), len(day) - 1]
    eq = equity[last]
    with np.errstate(divide="ignore", invalid="ignore"):
        return eq[1:] / eq[:-1] - 1.0


def risk_ratios(times_us: np.ndarray, equity: np.ndarray) -> dict[str, float]:
    """Annualised return, volatility, Sharpe, Sortino, Calmar and max drawdown (fractions)."""
    import numpy as np

    r = daily_returns(times_us, equity)
    r = r[np.isfinite(r)]
    g = 0.0
    if len(r) and not np.any(1 + r <= 0):
        g = float(np.exp(np.log1p(r).sum() / len(r)) - 1)
    ann = (1 + g) ** DAYS_PER_YEAR - 1
    var = float(np.var(r, ddof=1)) if len(r) > 1 else float("nan")
    vol = (
        math.sqrt(max((var + (1 + g) ** 2) ** DAYS_PER_YEAR - (1 + g) ** (2 * DAYS_PER_YEAR), 0.0))
        if math.isfinite(var)
        else float("nan")
    )
    downside = math.sqrt(float(np.mean(np.minimum(r, 0) ** 2))) if len(r) else float("nan")
    max_dd = float(np.max(1 - equity / np.maximum.accumulate(equity))) if len(equity) else 0.0
    return {
        "return_ann": ann,
        "volatility_ann": vol,
        "sharpe": ann / vol if vol else float("nan"),
        "sortino": ann / (downside * math.sqrt(DAYS_PER_YEAR)) if downside else float("nan"),
        "calmar": ann / max_dd if max_dd else float("nan"),
        "max_drawdown": max_dd,
    }


def drawdown_episodes(times_us: np.ndarray, equity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(duration in µs, depth as a fraction) of each drawdown episode, in time order."""
    import numpy as np

    if len(equity) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    dd = 1 - equity / np.maximum.accumulate(equity)
    at_peak = np.unique(np.r_[np.flatnonzero(dd == 0), len(dd) - 1])
    if len(at_peak) < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    depth = np.maximum.reduceat(dd, at_peak[:-1])
    prev, cur = at_peak[:-1], at_peak[1:]
    real = cur > prev + 1
    return (times_us[cur] - times_us[prev])[real], depth[real]


def streaks(wins: np.ndarray) -> tuple[int, int]:
    """Longest run of wins and of losses."""
    best_w = best_l = run_w = run_l = 0
    for w in wins.tolist():
        run_w, run_l = (run_w + 1, 0) if w else (0, run_l + 1)
        best_w, best_l = max(best_w, run_w), max(best_l, run_l)
    return best_w, best_l


def quick(
    times_us: np.ndarray, equity: np.ndarray, pnl: np.ndarray, starting_equity: float
) -> dict[str, float | int | None]:
    """The headline figures a parameter sweep ranks by (numpy only, no frames)."""
    rr = risk_ratios(times_us, equity)
    n = len(pnl)
    gross_win, gross_loss = float(pnl[pnl > 0].sum()), float(-pnl[pnl < 0].sum())
    final = float(equity[-1]) if len(equity) else starting_equity
    return {
        "final_equity": _f(final),
        "total_return_pct": _f((final / starting_equity - 1) * 100),
        "sharpe": _f(rr["sharpe"]),
        "sortino": _f(rr["sortino"]),
        "calmar": _f(rr["calmar"]),
        "max_drawdown_pct": _f(rr["max_drawdown"] * 100),
        "trades": n,
        "win_rate_pct": _f((pnl > 0).mean() * 100) if n else None,
        "profit_factor": _f(gross_win / gross_loss) if gross_loss else None,
    }


def compute(res: BacktestResult) -> dict[str, Any]:
    """The full metric set of a run (snake_case keys, JSON-safe values)."""
    import numpy as np

    m, p, tr = res.market, res.params, res.trades
    times, eq = res.times, res.equity
    close = m.close[m.i0 : m.i1]
    start_eq = p.starting_equity
    final = float(eq[-1])
    days = (m.end_us - m.start_us) / DAY_US
    rr = risk_ratios(times, eq)
    durs, depths = drawdown_episodes(times, eq)

    pnl = tr["pnl"].to_numpy()
    ret = tr["return_pct"].to_numpy()
    long_ = (tr["side"] == "LONG").to_numpy()
    n = len(pnl)
    wins, losses = pnl[pnl > 0], pnl[pnl <= 0]
    gross_win, gross_loss = float(wins.sum()), float(-pnl[pnl < 0].sum())
    hold = (tr["exit_time"] - tr["entry_time"]).dt.total_seconds().to_numpy() / 60
    mark = np.zeros(len(eq) + 1, dtype=np.int64)
    np.add.at(mark, tr["entry_bar"].to_numpy(), 1)
    np.add.at(mark, tr["exit_bar"].to_numpy() + 1, -1)
    exposure = float((np.cumsum(mark)[:-1] > 0).mean() * 100) if len(eq) else 0.0
    best_w, best_l = streaks(pnl > 0)
    expected_minutes = max(int((m.end_us - m.start_us) // 60_000_000), 1)
    complete = int(m.complete[m.i0 : m.i1].sum())
    info = res.signal_info
    max_dd_i = int(np.argmax(depths)) if len(depths) else -1

    def rate(mask: np.ndarray) -> float | None:
        return _f((pnl[mask] > 0).mean() * 100) if mask.any() else None

    return {
        "start": m.start.isoformat(),
        "end": m.end.isoformat(),
        "duration_days": _f(days),
        "bars": len(eq),
        "starting_equity": _f(start_eq),
        "final_equity": _f(final),
        "equity_peak": _f(eq.max()),
        "total_return_pct": _f((final / start_eq - 1) * 100),
        "cagr_pct": _f(((final / start_eq) ** (DAYS_PER_YEAR / days) - 1) * 100)
        if final > 0 and days > 0
        else None,
        "buy_hold_return_pct": _f((close[-1] / close[0] - 1) * 100),
        "return_ann_pct": _f(rr["return_ann"] * 100),
        "volatility_ann_pct": _f(rr["volatility_ann"] * 100),
        "sharpe": _f(rr["sharpe"]),
        "sortino": _f(rr["sortino"]),
        "calmar": _f(rr["calmar"]),
        "max_drawdown_pct": _f(rr["max_drawdown"] * 100),
        "max_drawdown_duration_days": _f(durs[max_dd_i] / DAY_US) if max_dd_i >= 0 else 0.0,
        "avg_drawdown_pct": _f(depths.mean() * 100) if len(depths) else 0.0,
        "max_time_underwater_days": _f(durs.max() / DAY_US) if len(durs) else 0.0,
        "trades": n,
        "trades_long": int(long_.sum()),
        "trades_short": int((~long_).sum()),
        "win_rate_pct": _f((pnl > 0).mean() * 100) if n else None,
        "win_rate_long_pct": rate(long_),
        "win_rate_short_pct": rate(~long_),
        "profit_factor": _f(gross_win / gross_loss) if gross_loss else None,
        "expectancy": _f(pnl.mean()) if n else None,
        "expectancy_pct": _f(ret.mean()) if n else None,
        "sqn": _f(math.sqrt(n) * pnl.mean() / pnl.std(ddof=1)) if n > 1 and pnl.std() else None,
        "avg_win": _f(wins.mean()) if len(wins) else None,
        "avg_loss": _f(losses.mean()) if len(losses) else None,
        "avg_win_loss_ratio": _f(wins.mean() / -losses.mean())
        if len(wins) and len(losses) and losses.mean() < 0
        else None,
        "best_trade_pct": _f(ret.max()) if n else None,
        "worst_trade_pct": _f(ret.min()) if n else None,
        "avg_trade_duration_minutes": _f(hold.mean()) if n else None,
        "exposure_pct": _f(exposure),
        "fees_paid": _f(tr["fees"].sum()),
        "slippage_paid": _f(tr["slippage"].sum()),
        "max_consecutive_wins": best_w,
        "max_consecutive_losses": best_l,
        "both_touched": res.counters["both_touched"],
        "liquidations": int((tr["exit_reason"] == "liquidation").sum()),
        "open_position_at_end": bool(res.counters["open_at_end"]),
        "complete_candles_pct": _f(min(complete / expected_minutes, 1.0) * 100),
        "missing_minutes": max(expected_minutes - len(eq), 0),
        "signals": info["signals"],
        "degraded_signals": info["degraded_signals"],
        "degraded_signals_pct": _f(info["degraded_signals"] / info["signals"] * 100)
        if info["signals"]
        else 0.0,
        "signals_expired": info["expired"],
        "signals_superseded": info["superseded"],
        "signals_below_min_confidence": info["below_min_confidence"],
        "signals_ignored": res.counters["ignored_same_direction"]
        + res.counters["ignored_opposite"]
        + res.counters["ignored_side_not_allowed"],
        "signals_skipped_no_atr": res.counters["skipped_no_atr"],
    }


# -- tables ------------------------------------------------------------------------------
def _trade_stats() -> list[pl.Expr]:
    import polars as pl

    return [
        pl.len().alias("trades"),
        ((pl.col("pnl") > 0).mean() * 100).alias("win_rate_pct"),
        pl.col("pnl").sum().alias("pnl"),
        pl.col("return_pct").mean().alias("avg_return_pct"),
        pl.col("fees").sum().alias("fees"),
    ]


def by_exit_reason(trades: pl.DataFrame) -> pl.DataFrame:
    """How trades ended: count, win rate, P&L per exit reason (most frequent first)."""
    import polars as pl

    return (
        trades.group_by("exit_reason")
        .agg(*_trade_stats(), pl.col("both_touched").sum().alias("both_touched"))
        .sort(["trades", "exit_reason"], descending=[True, False])
    )


def by_month(trades: pl.DataFrame, times_us: np.ndarray, equity: np.ndarray) -> pl.DataFrame:
    """Per calendar month (UTC): equity return of the month and the trades closed in it."""
    import polars as pl

    eq = pl.DataFrame({"t": times_us, "equity": equity}).with_columns(
        pl.col("t").cast(pl.Datetime("us", "UTC")).dt.strftime("%Y-%m").alias("month")
    )
    monthly = eq.group_by("month", maintain_order=True).agg(
        pl.col("equity").first().alias("first"), pl.col("equity").last().alias("equity_end")
    )
    start = monthly["first"][0] if monthly.height else 0.0
    monthly = monthly.with_columns(
        ((pl.col("equity_end") / pl.col("equity_end").shift(1).fill_null(start) - 1) * 100).alias(
            "return_pct"
        )
    ).drop("first")
    per = (
        trades.with_columns(pl.col("exit_time").dt.strftime("%Y-%m").alias("month"))
        .group_by("month")
        .agg(*_trade_stats())
    )
    return (
        monthly.join(per, on="month", how="left")
        .with_columns(pl.col("trades").fill_null(0), pl.col("pnl").fill_null(0.0))
        .select(
            "month",
            "return_pct",
            "equity_end",
            "trades",
            "win_rate_pct",
            "pnl",
            "avg_return_pct",
            "fees",
        )
        .sort("month")
    )


def by_confidence(trades: pl.DataFrame) -> pl.DataFrame:
    """Does a higher confidence trade better? Trades per confidence quartile of [0, 1]."""
    import polars as pl

    b = CONFIDENCE_BUCKETS
    labels = [f"{b[i]:.2f}-{b[i + 1]:.2f}" for i in range(len(b) - 1)]
    idx = (pl.col("confidence").clip(0, 1) * (len(b) - 1)).floor().clip(0, len(b) - 2)
    got = (
        trades.with_columns(idx.cast(pl.Int32).alias("bucket"))
        .group_by("bucket")
        .agg(*_trade_stats(), pl.col("pnl").mean().alias("expectancy"))
    )
    grid = pl.DataFrame(
        {"bucket": list(range(len(labels))), "confidence": labels},
        schema={"bucket": pl.Int32, "confidence": pl.String},
    )
    return (
        grid.join(got, on="bucket", how="left")
        .with_columns(pl.col("trades").fill_null(0))
        .sort("bucket")
        .drop("bucket")
    )


def tables(res: BacktestResult) -> dict[str, pl.DataFrame]:
    """By exit reason, by month and by confidence bucket."""
    return {
        "by_exit_reason": by_exit_reason(res.trades),
        "by_month": by_month(res.trades, res.times, res.equity),
        "by_confidence": by_confidence(res.trades),
    }

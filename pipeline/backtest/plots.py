"""Charts of a backtest as PNG bytes: equity vs buy-and-hold, underwater curve, candlesticks.

matplotlib (Agg, no display) is imported inside the functions: Dagster run processes import
this package at load time and most of them never draw. Long curves are thinned to at most
`MAX_POINTS` points (last value per step, so the final equity is exact) to keep files small.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from pipeline.backtest.result import BacktestResult

MAX_POINTS = 4000
MAX_CANDLES = 160
CANDLE_STEPS_MIN = (1, 3, 5, 15, 30, 60, 120, 240, 360, 720, 1440, 4320, 10080)
GREEN, RED, BLUE, GREY = "#26a69a", "#ef5350", "#1f77b4", "#888888"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _thin(times_us: np.ndarray, *series: np.ndarray) -> tuple[Any, ...]:
    import numpy as np

    n = len(times_us)
    step = max(1, -(-n // MAX_POINTS))
    idx = np.r_[np.arange(step - 1, n, step)] if step > 1 else np.arange(n)
    if len(idx) and idx[-1] != n - 1:
        idx = np.r_[idx, n - 1]
    t = times_us[idx].astype("datetime64[us]")
    return (t, *(s[idx] for s in series))


def equity_png(res: BacktestResult) -> bytes:
    """Strategy equity against buying and holding the same capital over the window."""
    plt = _plt()
    close = res.market.close[res.market.i0 : res.market.i1]
    hold = res.params.starting_equity * close / close[0]
    t, eq, bh = _thin(res.times, res.equity, hold)
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(t, eq, color=BLUE, lw=1.2, label=f"{res.personality} equity")
    ax.plot(t, bh, color=GREY, lw=1.0, ls="--", label="buy and hold")
    ax.axhline(res.params.starting_equity, color="black", lw=0.5, alpha=0.4)
    ax.set_title(f"{res.symbol} {res.personality}: equity vs buy-and-hold")
    ax.set_ylabel("equity")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    return _png(fig)


def drawdown_png(res: BacktestResult) -> bytes:
    """The underwater curve: how far below its running peak the equity is, in percent."""
    import numpy as np

    plt = _plt()
    dd = (res.equity / np.maximum.accumulate(res.equity) - 1) * 100
    t, d = _thin(res.times, dd)
    fig, ax = plt.subplots(figsize=(10, 2.6))
    ax.fill_between(t, d, 0, color=RED, alpha=0.35, lw=0)
    ax.plot(t, d, color=RED, lw=0.8)
    ax.set_title(f"drawdown (max {res.metrics.get('max_drawdown_pct') or 0:.2f} %)")
    ax.set_ylabel("% below peak")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _png(fig)


def default_period(res: BacktestResult) -> tuple[dt.datetime, dt.datetime]:
    """Two days ending with the last trade's exit (or the window's end)."""
    end = res.end
    if res.trades.height:
        last = res.trades["exit_time"].max().replace(minute=0, second=0, microsecond=0)  # type: ignore[union-attr]
        end = min(last + dt.timedelta(hours=3), res.end)
    return max(end - dt.timedelta(days=2), res.start), end


def candles_png(
    res: BacktestResult, period: tuple[dt.datetime, dt.datetime] | None = None
) -> bytes:
    """Candlesticks of `period` (resampled to at most ~160 candles) with entries and exits."""
    import numpy as np

    from pipeline.candles.timeframes import MINUTE_US, to_us

    plt = _plt()
    start, end = period or default_period(res)
    s_us, e_us = to_us(start), to_us(end)
    m = res.market
    times = res.times
    sel = slice(int(np.searchsorted(times, s_us)), int(np.searchsorted(times, e_us)))
    t = times[sel]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    if len(t):
        w = slice(m.i0 + sel.start, m.i0 + sel.stop)
        minutes = max((e_us - s_us) // MINUTE_US, 1)
        step = next((s for s in CANDLE_STEPS_MIN if minutes / s <= MAX_CANDLES), 10080)
        step_us = step * MINUTE_US
        bucket = t // step_us
        first = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
        last = np.r_[first[1:] - 1, len(t) - 1]
        o = m.open[w][first]
        c = m.close[w][last]
        h = np.maximum.reduceat(m.high[w], first)
        lo = np.minimum.reduceat(m.low[w], first)
        x = (bucket[first] * step_us).astype("datetime64[us]")
        width = np.timedelta64(int(step_us * 0.7), "us")
        up = c >= o
        colors = np.where(up, GREEN, RED)
        ax.vlines(x, lo, h, color=colors, lw=0.8)
        ax.bar(
            x,
            np.where(up, c - o, o - c),
            width,
            np.minimum(o, c),
            color=colors,
            edgecolor=colors,
            lw=0.5,
        )
        tr = res.trades
        if tr.height:
            ent_us = tr["entry_time"].dt.epoch("us").to_numpy()
            ext_us = tr["exit_time"].dt.epoch("us").to_numpy()
            shown = (ext_us >= s_us) & (ent_us < e_us)
            long_ = (tr["side"] == "LONG").to_numpy()
            ent_px, ext_px = tr["entry_price"].to_numpy(), tr["exit_price"].to_numpy()
            for i in np.flatnonzero(shown):
                et = np.datetime64(int(ent_us[i]), "us")
                xt = np.datetime64(int(ext_us[i]), "us")
                ep, xp = ent_px[i], ext_px[i]
                ax.plot([et, xt], [ep, xp], color=GREY, lw=0.8, ls=":")
                if s_us <= ent_us[i] < e_us:
                    ax.scatter(
                        et,
                        ep,
                        marker="^" if long_[i] else "v",
                        s=70,
                        zorder=3,
                        facecolor=GREEN if long_[i] else RED,
                        edgecolor="black",
                        linewidths=0.6,
                    )
                if s_us <= ext_us[i] <= e_us:
                    ax.scatter(xt, xp, marker="x", s=50, color="black", zorder=3)
        ax.set_title(
            f"{res.symbol} {step}m candles {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"
            " (^ long entry, v short entry, x exit)"
        )
    else:
        ax.set_title("no candles in the chosen period")
    ax.set_ylabel("price")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _png(fig)


def write_plots(
    res: BacktestResult,
    out_dir: str | Path,
    period: tuple[dt.datetime, dt.datetime] | None = None,
) -> dict[str, Path]:
    """Write equity.png, drawdown.png and candles.png into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in (
        ("equity", equity_png(res)),
        ("drawdown", drawdown_png(res)),
        ("candles", candles_png(res, period)),
    ):
        path = out / f"{name}.png"
        path.write_bytes(data)
        paths[name] = path
    return paths


def curves_png(times_us: np.ndarray, curves: dict[str, np.ndarray], title: str) -> bytes:
    """Several equity curves over one time axis (a paper bot's against its backtest's)."""
    plt = _plt()
    t, *ys = _thin(times_us, *curves.values())
    fig, ax = plt.subplots(figsize=(10, 4))
    colors = itertools.cycle((BLUE, GREY, GREEN, RED))
    for (label, _), y, color in zip(curves.items(), ys, colors, strict=False):
        ax.plot(t, y, lw=1.1, label=label, color=color)
    ax.set_title(title)
    ax.set_ylabel("equity")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    return _png(fig)

"""Sub-signals: the registry of named votes a YAML rule calls (`fair_value_gap(m=10)`), and the
`vote` personality's ten OHLCV setups and its order-flow vote registered in it, each returning
per bar +1 (long), -1 (short), 0 or NaN (unknown: the rule abstains). The condition compiler
(pipeline.strategy.rules) looks names up here.

They read only the signal timeframe's bars up to the bar itself, through fixed-length windows
computed exactly (see pipeline.strategy.bars), and declare how far back they read, so partitions,
whole-history passes and the live path agree bit for bit. What each looks for:

- squeeze_breakout: close breaks out of the Bollinger band after a squeeze.
- vwap_pullback: in an EMA 21/50 trend, price dips to VWAP and bounces with the trend.
- vwap_reversion: price comes back inside a VWAP +/- k x std band it had left (fade).
- breakout_retest: a close beyond the prior n-bar high/low, then a retest of that level.
- atr_momentum: a candle body larger than k x ATR on above-average volume.
- rsi_reversion: RSI leaves the oversold/overbought zone.
- swing_failure: a wick through the prior n-bar high/low that closes back inside (SFP).
- ema_pinch: EMA 9/21/50 squeezed together, then price breaks out of the pinch.
- fair_value_gap: price returns into a recent three-candle imbalance and holds it.
- poc_cross: close crosses the volume-profile point of control of the prior n bars.
- cvd_trend: the cumulative volume delta rose (fell) over the last n bars by more than a
  share of the volume traded: takers buying (selling) drive the market.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from pipeline.strategy.bars import Bars, rolling_max, rolling_min, rolling_std, rolling_sum, shift


@dataclass(frozen=True)
class SubSignal:
    """A named vote over the signal timeframe's bars: `impl(bars, **params)` returns, per bar,
    +1 (long), -1 (short), 0 (no vote) or a strength in between; NaN where unknown.

    `reads` are the columns it needs; `lookback(params)` the bars back it reads.
    """

    impl: Callable[..., np.ndarray]
    reads: tuple[str, ...]
    params: Mapping[str, float]
    lookback: Callable[[Mapping[str, float]], int]
    doc: str = ""


SUBSIGNALS: dict[str, SubSignal] = {}


def subsignal(
    name: str,
    reads: tuple[str, ...],
    lookback: Callable[[Mapping[str, float]], int],
    **params: float,
) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Register a sub-signal under `name` (its keyword parameters and their defaults)."""

    def deco(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        SUBSIGNALS[name] = SubSignal(fn, reads, dict(params), lookback, (fn.__doc__ or "").strip())
        return fn

    return deco


def _n(p: Mapping[str, float], key: str, lo: int = 1) -> int:
    """A whole-number parameter (bars), checked."""
    v = p[key]
    if v != int(v) or v < lo:
        raise ValueError(f"{key} must be a whole number >= {lo}, got {v}")
    return int(v)


def _vote(up: np.ndarray, down: np.ndarray, known: np.ndarray) -> np.ndarray:
    """+1 where only `up` holds, -1 where only `down` holds, 0 otherwise; NaN where unknown."""
    out = up.astype(np.float64) - down.astype(np.float64)
    out[~known] = np.nan
    return out


def _ok(*arrays: np.ndarray) -> np.ndarray:
    known = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        known &= ~np.isnan(a)
    return known


def _recent(level: np.ndarray, m: int) -> np.ndarray:
    """Per bar, the newest non-NaN `level` among the m bars before it (NaN if none)."""
    out = np.full(len(level), np.nan)
    for k in range(1, m + 1):
        s = shift(level, k)
        fill = np.isnan(out) & ~np.isnan(s)
        out[fill] = s[fill]
    return out


@subsignal(
    "squeeze_breakout",
    ("close", "bb_upper", "bb_lower", "bb_squeeze"),
    lambda p: max(_n(p, "within") - 1, 1),
    within=8,
)
def squeeze_breakout(b: Bars, within: float) -> np.ndarray:
    """Close crosses out of the Bollinger band with a squeeze on one of the last `within` bars."""
    close, up, lo, sq = (b.col(c) for c in ("close", "bb_upper", "bb_lower", "bb_squeeze"))
    n = int(within)
    recent = rolling_max(np.nan_to_num(sq, nan=0.0), n) == 1.0
    pc, pu, pl_ = shift(close, 1), shift(up, 1), shift(lo, 1)
    brk_up = (close > up) & (pc <= pu)
    brk_dn = (close < lo) & (pc >= pl_)
    return _vote(recent & brk_up, recent & brk_dn, _ok(close, up, lo, pc, pu, pl_, sq))


@subsignal(
    "vwap_pullback",
    ("open", "low", "high", "close", "vwap", "ema_21", "ema_50"),
    lambda p: 0,
    tol=0.001,
)
def vwap_pullback(b: Bars, tol: float) -> np.ndarray:
    """With EMA 21 above EMA 50 and price above VWAP, a bar that dips to VWAP (within tol) and
    closes up; the mirror for shorts."""
    o, lo, hi, c = (b.col(x) for x in ("open", "low", "high", "close"))
    vw, e21, e50 = b.col("vwap"), b.col("ema_21"), b.col("ema_50")
    up = (e21 > e50) & (c > vw) & (lo <= vw * (1 + tol)) & (c > o)
    dn = (e21 < e50) & (c < vw) & (hi >= vw * (1 - tol)) & (c < o)
    return _vote(up, dn, _ok(o, c, vw, e21, e50))


@subsignal("vwap_reversion", ("close", "vwap"), lambda p: _n(p, "n", 2), k=2.0, n=48)
def vwap_reversion(b: Bars, k: float, n: float) -> np.ndarray:
    """Close comes back inside VWAP -/+ k standard deviations of (close - VWAP) over n bars
    after a bar outside: long from below, short from above."""
    dev = b.col("close") - b.col("vwap")
    sd = rolling_std(dev, int(n))
    pdev, psd = shift(dev, 1), shift(sd, 1)
    up = (pdev < -k * psd) & (dev >= -k * sd)
    dn = (pdev > k * psd) & (dev <= k * sd)
    return _vote(up, dn, _ok(dev, sd, pdev, psd))


@subsignal(
    "breakout_retest",
    ("high", "low", "close"),
    lambda p: _n(p, "n") + _n(p, "m"),
    n=20,
    m=6,
    tol=0.001,
)
def breakout_retest(b: Bars, n: float, m: float, tol: float) -> np.ndarray:
    """A close above the prior n-bar high within the last m bars, and now a bar that comes back
    to that level (low within tol of it) and closes above it; the mirror below the low."""
    hi, lo, c = b.col("high"), b.col("low"), b.col("close")
    hh, ll = shift(rolling_max(hi, int(n)), 1), shift(rolling_min(lo, int(n)), 1)
    lvl_up = _recent(np.where(c > hh, hh, np.nan), int(m))
    lvl_dn = _recent(np.where(c < ll, ll, np.nan), int(m))
    up = (lo <= lvl_up * (1 + tol)) & (c > lvl_up)
    dn = (hi >= lvl_dn * (1 - tol)) & (c < lvl_dn)
    return _vote(up, dn, _ok(c, shift(hh, int(m)), shift(ll, int(m))))


@subsignal(
    "atr_momentum",
    ("open", "close", "atr_14", "volume_ratio"),
    lambda p: 1,
    k=1.0,
    volume=1.0,
)
def atr_momentum(b: Bars, k: float, volume: float) -> np.ndarray:
    """A body larger than k x the previous ATR 14 on volume above `volume` x its 20-bar mean,
    in the body's direction."""
    body = b.col("close") - b.col("open")
    atr, vr = shift(b.col("atr_14"), 1), b.col("volume_ratio")
    strong = (np.abs(body) > k * atr) & (vr > volume)
    return _vote(strong & (body > 0), strong & (body < 0), _ok(body, atr, vr))


@subsignal("rsi_reversion", ("rsi_14",), lambda p: 1, lo=30.0, hi=70.0)
def rsi_reversion(b: Bars, lo: float, hi: float) -> np.ndarray:
    """RSI 14 crosses back above `lo` (long) or back below `hi` (short)."""
    r = b.col("rsi_14")
    pr = shift(r, 1)
    return _vote((pr <= lo) & (r > lo), (pr >= hi) & (r < hi), _ok(r, pr))


@subsignal("swing_failure", ("high", "low", "close"), lambda p: _n(p, "n"), n=20)
def swing_failure(b: Bars, n: float) -> np.ndarray:
    """A swing failure pattern: the bar takes out the prior n-bar low (high) but closes back
    above (below) it: trapped sellers (buyers), a reversal long (short)."""
    hi, lo, c = b.col("high"), b.col("low"), b.col("close")
    hh, ll = shift(rolling_max(hi, int(n)), 1), shift(rolling_min(lo, int(n)), 1)
    up = (lo < ll) & (c > ll)
    dn = (hi > hh) & (c < hh)
    return _vote(up, dn, _ok(c, hh, ll))


@subsignal(
    "ema_pinch",
    ("close", "ema_9", "ema_21", "ema_50"),
    lambda p: _n(p, "m"),
    width=0.002,
    m=3,
)
def ema_pinch(b: Bars, width: float, m: float) -> np.ndarray:
    """EMA 9/21/50 within `width` (share of price) of each other on one of the previous m
    bars, and now the close crosses out of the pinch, EMA 9 leading on the same side."""
    c, e9, e21, e50 = (b.col(x) for x in ("close", "ema_9", "ema_21", "ema_50"))
    top = np.maximum(np.maximum(e9, e21), e50)
    bot = np.minimum(np.minimum(e9, e21), e50)
    pinched = shift(rolling_max(np.nan_to_num((top - bot) / c, nan=np.inf), int(m)), 1) < width
    pc, pt, pb = shift(c, 1), shift(top, 1), shift(bot, 1)
    up = pinched & (c > top) & (pc <= pt) & (e9 > e21)
    dn = pinched & (c < bot) & (pc >= pb) & (e9 < e21)
    return _vote(up, dn, _ok(c, top, pc, pt, shift(top, int(m))))


@subsignal("fair_value_gap", ("high", "low", "close"), lambda p: _n(p, "m") + 2, m=10)
def fair_value_gap(b: Bars, m: float) -> np.ndarray:
    """A bullish gap (low of a bar above the high two bars earlier) formed in the last m bars,
    and now price dips into it and closes at or above its bottom; the mirror for bearish gaps."""
    hi, lo, c = b.col("high"), b.col("low"), b.col("close")
    h2, l2 = shift(hi, 2), shift(lo, 2)
    bull = lo > h2
    bear = hi < l2
    top_up = _recent(np.where(bull, lo, np.nan), int(m))
    bot_up = _recent(np.where(bull, h2, np.nan), int(m))
    bot_dn = _recent(np.where(bear, hi, np.nan), int(m))
    top_dn = _recent(np.where(bear, l2, np.nan), int(m))
    up = (lo <= top_up) & (c >= bot_up)
    dn = (hi >= bot_dn) & (c <= top_dn)
    return _vote(up, dn, _ok(c, shift(lo, int(m) + 2)))


def point_of_control(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray, n: int, bins: int
) -> np.ndarray:
    """Per bar, the volume-profile point of control of the n bars before it: the centre of the
    price bin (of `bins` between their lowest low and highest high) holding the most volume,
    each bar's volume placed at its typical price. Summed window by window in bar order."""
    m = len(close)
    out = np.full(m, np.nan)
    if m <= n:
        return out
    tp = (high + low + close) / 3
    rows = m - n  # window ending at bar i-1 for bars i = n .. m-1
    step = max(1, 2_000_000 // (n * bins))
    for a in range(0, rows, step):
        z = min(rows, a + step)
        w_tp = np.lib.stride_tricks.sliding_window_view(tp, n)[a:z]
        w_v = np.lib.stride_tricks.sliding_window_view(volume, n)[a:z]
        hh = np.lib.stride_tricks.sliding_window_view(high, n)[a:z].max(axis=1)
        ll = np.lib.stride_tricks.sliding_window_view(low, n)[a:z].min(axis=1)
        span = hh - ll
        with np.errstate(invalid="ignore", divide="ignore"):
            pos = (w_tp - ll[:, None]) / span[:, None] * bins
        idx = np.clip(np.nan_to_num(pos, nan=0.0), 0, bins - 1).astype(np.int64)
        k = z - a
        flat = (np.arange(k)[:, None] * bins + idx).ravel()
        prof = np.bincount(flat, weights=np.nan_to_num(w_v).ravel(), minlength=k * bins)
        best = prof.reshape(k, bins).argmax(axis=1)
        poc = ll + (best + 0.5) * span / bins
        bad = ~np.isfinite(poc) | np.isnan(w_tp).any(axis=1) | np.isnan(w_v).any(axis=1)
        poc[bad] = np.nan
        out[n + a : n + z] = poc
    return out


@subsignal(
    "poc_cross",
    ("high", "low", "close", "volume"),
    lambda p: _n(p, "n", 2) + 0 * _n(p, "bins", 2),
    n=96,
    bins=24,
)
def poc_cross(b: Bars, n: float, bins: float) -> np.ndarray:
    """Close crosses the point of control of the prior n bars: above (long), below (short)."""
    hi, lo, c, v = b.col("high"), b.col("low"), b.col("close"), b.col("volume")
    poc = point_of_control(hi, lo, c, v, int(n), int(bins))
    pc = shift(c, 1)
    return _vote((pc <= poc) & (c > poc), (pc >= poc) & (c < poc), _ok(c, pc, poc))


@subsignal("cvd_trend", ("delta", "volume"), lambda p: _n(p, "n") - 1, n=16, k=0.05)
def cvd_trend(b: Bars, n: float, k: float) -> np.ndarray:
    """The CVD's change over the last n bars (the sum of their deltas: the same for the
    day-anchored and the rolling CVD, and across midnight) above k x their volume: long; below
    -k x: short; NaN where a bar of the n has no order flow."""
    flow = rolling_sum(b.col("delta"), int(n))
    volume = rolling_sum(b.col("volume"), int(n))
    return _vote(flow > k * volume, flow < -k * volume, _ok(flow, volume))

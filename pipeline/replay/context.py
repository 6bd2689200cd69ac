"""The replay exchange's market context, synthesized around its perpetual candles (seeded, with
random access like `synthetic.py`), consistent with each other:

- the perpetual trades at a small premium over spot, `premium(t)`: a few basis points drifting
  on a 6-hour scale plus a little minute-by-minute noise;
- spot 1m candles (`SpotSource`) are the perpetual's candles divided by (1 + premium) at each
  minute, rounded to the same decimals (rounding is monotone, so low <= open, close <= high
  still holds), with a seeded share of its volume. Over a file of real candles they are the
  real candles' spot leg, so the basis is the premium again;
- funding settles on Bybit's 8-hour grid (00:00, 08:00, 16:00 UTC) at Bybit's formula: the
  mean premium of the 8 hours before, plus clamp(0.01% - premium, +-0.05%);
- open interest, one reading per 5 minutes, drifts around a level of ~$2 billion at the
  symbol's base price.

All of it exists only where the perpetual does (its source's span) and up to the exchange
clock; the faces are `context_face.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.replay import synthetic
from pipeline.replay.intervals import DAY_MS, MINUTE_MS

if TYPE_CHECKING:
    from pipeline.replay.data import Source
    from pipeline.replay.wire import Decimals

HOUR_MS = 60 * MINUTE_MS
FUNDING_MS = 8 * HOUR_MS
OI_MS = 5 * MINUTE_MS
INTEREST = 0.0001  # Bybit's interest rate per funding interval (0.01%)
CLAMP = 0.0005
PREMIUM_MEAN, PREMIUM_SWING, PREMIUM_NOISE = 1e-4, 6e-4, 4e-5
PREMIUM_SCALE_MS = 6 * HOUR_MS
OI_NOTIONAL = 2e9  # USD of open interest at the symbol's base price


def _smooth(seed: int, symbol: str, name: str, t_ms: np.ndarray, scale_ms: int) -> np.ndarray:
    """Value noise (unit normal knots every `scale_ms`, smoothstep between) at `t_ms`."""
    idx, frac = np.divmod(np.asarray(t_ms, np.int64), scale_ms)
    w = frac / scale_ms
    w = w * w * (3 - 2 * w)
    knots = {
        int(i): float(synthetic._rng(seed, symbol, name, int(i)).standard_normal())
        for i in np.unique(np.r_[idx, idx + 1])
    }
    a = np.array([knots[int(i)] for i in idx])
    b = np.array([knots[int(i) + 1] for i in idx])
    return a + (b - a) * w


def premium(seed: int, symbol: str, t_ms: np.ndarray) -> np.ndarray:
    """The perpetual's premium over spot at each minute `t_ms` (a fraction: 1e-4 = 1 bp)."""
    t_ms = np.asarray(t_ms, np.int64)
    out = PREMIUM_MEAN + PREMIUM_SWING * _smooth(seed, symbol, "basis", t_ms, PREMIUM_SCALE_MS)
    noise = np.empty(len(t_ms))
    for day in np.unique(t_ms // DAY_MS):
        sel = t_ms // DAY_MS == day
        minutes = (t_ms[sel] - day * DAY_MS) // MINUTE_MS
        noise[sel] = synthetic._rng(seed, symbol, "basis-noise", int(day)).normal(0, 1, 1440)[
            minutes
        ]
    return out + PREMIUM_NOISE * noise


class SpotSource:
    """The spot market of a perpetual source: same symbols, candles at the perpetual's price
    less the premium (module doc)."""

    def __init__(self, base: Source, seed: int) -> None:
        self.base, self.seed = base, seed
        self.name, self.ident, self.label = base.name, base.ident, base.label

    def listed(self) -> list[str]:
        return self.base.listed()

    def supports(self, symbol: str) -> bool:
        return self.base.supports(symbol)

    def span(self, symbol: str) -> tuple[int, int | None]:
        return self.base.span(symbol)

    def decimals(self, symbol: str) -> Decimals:
        return self.base.decimals(symbol)

    def day(self, symbol: str, day: int) -> np.ndarray:
        rows = self.base.day(symbol, day).copy()
        if not len(rows):
            return rows
        p, v, t = self.decimals(symbol)
        rows[:, 1:5] = np.round(
            rows[:, 1:5] / (1 + premium(self.seed, symbol, rows[:, 0]))[:, None], p
        )
        share = 0.25 + 0.3 * synthetic._rng(self.seed, symbol, "spot-share", day).random()
        rows[:, 5] = np.round(rows[:, 5] * share, v)
        rows[:, 6] = np.round(rows[:, 5] * rows[:, 1:5].mean(axis=1), t)
        return rows


def _served(source: Source, symbol: str, lo: int, hi: int, now_ms: int, step: int) -> np.ndarray:
    """Times on the `step` grid in [lo, hi] that exist: inside the source's span (up to its
    last minute's close) and at or before the clock."""
    first, last = source.span(symbol)
    top = min(hi, now_ms) if last is None else min(hi, now_ms, last + MINUTE_MS)
    start = max(lo, first)
    start = -(-start // step) * step
    if top < start:
        return np.empty(0, np.int64)
    return np.arange(start, top // step * step + 1, step, dtype=np.int64)


def funding(source: Source, seed: int, symbol: str, lo: int, hi: int, now_ms: int) -> np.ndarray:
    """(funding_time ms, rate) rows for settlements in [lo, hi] up to the clock, oldest first."""
    times = _served(source, symbol, lo, hi, now_ms, FUNDING_MS)
    if not len(times):
        return np.empty((0, 2))
    window = (times[:, None] - FUNDING_MS + np.arange(0, FUNDING_MS, MINUTE_MS)[None, :]).ravel()
    mean = premium(seed, symbol, window).reshape(len(times), -1).mean(axis=1)
    rate = np.round(mean + np.clip(INTEREST - mean, -CLAMP, CLAMP), 8)
    return np.column_stack([times.astype(np.float64), rate])


def open_interest(
    source: Source, seed: int, symbol: str, lo: int, hi: int, now_ms: int
) -> np.ndarray:
    """(time ms, open interest in base coin) rows, one per 5 minutes in [lo, hi] up to the
    clock (the newest may be the interval still running), oldest first."""
    times = _served(source, symbol, lo, hi, now_ms, OI_MS)
    if not len(times):
        return np.empty((0, 2))
    level = OI_NOTIONAL / synthetic._base_level(symbol)
    slow = 0.05 * _smooth(seed, symbol, "oi", times, DAY_MS)
    fast = np.empty(len(times))
    for day in np.unique(times // DAY_MS):
        sel = times // DAY_MS == day
        draws = synthetic._rng(seed, symbol, "oi-noise", int(day)).normal(0, 1, 288)
        fast[sel] = 0.004 * draws[(times[sel] - day * DAY_MS) // OI_MS]
    return np.column_stack([times.astype(np.float64), np.round(level * np.exp(slow + fast), 3)])

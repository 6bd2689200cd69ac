"""The replay exchange's market context, synthesized around its perpetual candles (seeded, with
random access like `synthetic.py`), consistent with each other:

- the perpetual trades at a small premium over spot, `premium(t)`: a few basis points drifting
  on a 6-hour scale plus a little minute-by-minute noise;
- spot 1m candles (`SpotSource`) are the perpetual's candles divided by (1 + premium) at each
  minute, rounded to the same decimals (rounding is monotone, so low <= open, close <= high
  still holds), with a seeded share of its volume. Over a file of real candles they are the
  real candles' spot leg, so the basis is the premium again. As on Bybit, a perpetual with a
  multiplier prefix (`1000PEPEUSDT`: a contract is 1000 PEPE, baseCoin `1000PEPE`) has its
  spot pair under the coin's own name (`PEPEUSDT`), priced 1000x lower (`spot_name`);
- funding settles on the market's funding grid at Bybit's formula: the mean premium of the
  interval before, plus clamp(0.01% - premium, +-0.05%). The interval is Bybit's usual 8 hours
  (00:00, 08:00, 16:00 UTC) except for the markets of `FUNDING_MINUTES` (instruments-info
  states it as `fundingInterval`, in minutes);
- open interest, one reading per 5 minutes, drifts around a level of ~$2 billion at the
  symbol's base price.

All of it exists only where the perpetual does (its source's span) and up to the exchange
clock; the faces are `context_face.py`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from pipeline.replay import synthetic
from pipeline.replay.intervals import DAY_MS, MINUTE_MS

if TYPE_CHECKING:
    from pipeline.replay.data import Source
    from pipeline.replay.wire import Decimals

HOUR_MS = 60 * MINUTE_MS
OI_MS = 5 * MINUTE_MS
INTEREST = 0.0001  # Bybit's interest rate per funding interval (0.01%)
CLAMP = 0.0005
PREMIUM_MEAN, PREMIUM_SWING, PREMIUM_NOISE = 1e-4, 6e-4, 4e-5
PREMIUM_SCALE_MS = 6 * HOUR_MS
OI_NOTIONAL = 2e9  # USD of open interest at the symbol's base price
FUNDING_MINUTES = {"WIFUSDT": 240}  # the replay's markets that fund off the 8-hour grid
_MULTIPLIED = re.compile(r"^(10{2,})([A-Z][A-Z0-9]*USDT)$")  # 1000PEPEUSDT, 10000SATSUSDT


def funding_ms(symbol: str) -> int:
    """The market's funding interval in ms (instruments-info `fundingInterval` x 60 000)."""
    return FUNDING_MINUTES.get(symbol, 480) * MINUTE_MS


def spot_name(symbol: str) -> tuple[str, int]:
    """The spot pair of a USDT perpetual and how many spot coins one perpetual unit is:
    (`PEPEUSDT`, 1000) for `1000PEPEUSDT`, (`BTCUSDT`, 1) for `BTCUSDT`."""
    m = _MULTIPLIED.match(symbol)
    return (m.group(2), int(m.group(1))) if m else (symbol, 1)


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
    """The spot market of a perpetual source: one pair per USDT perpetual (`spot_name`; a
    plain perpetual's name wins over a multiplied one's), candles at the perpetual's price less
    the premium, divided by the multiplier (module doc)."""

    def __init__(self, base: Source, seed: int) -> None:
        self.base, self.seed = base, seed
        self.name, self.ident, self.label = base.name, base.ident, base.label
        perps = [s for s in base.listed() if not s.endswith("PERP")]
        by_multiplier = sorted(perps, key=lambda s: -spot_name(s)[1])  # the plain one last
        self.perp = {spot_name(s)[0]: s for s in by_multiplier}

    def listed(self) -> list[str]:
        return sorted(self.perp)

    def supports(self, symbol: str) -> bool:
        return symbol in self.perp and self.base.supports(self.perp[symbol])

    def _of(self, symbol: str) -> tuple[str, int]:
        perp = self.perp[symbol]
        return perp, spot_name(perp)[1]

    def span(self, symbol: str) -> tuple[int, int | None]:
        return self.base.span(self._of(symbol)[0])

    def decimals(self, symbol: str) -> Decimals:
        perp, mult = self._of(symbol)
        p, v, t = self.base.decimals(perp)
        shift = len(str(mult)) - 1
        return p + shift, max(v - shift, 0), t

    def day(self, symbol: str, day: int) -> np.ndarray:
        perp, mult = self._of(symbol)
        rows = self.base.day(perp, day).copy()
        if not len(rows):
            return rows
        p, v, t = self.decimals(symbol)
        rows[:, 1:5] = np.round(
            rows[:, 1:5] / (1 + premium(self.seed, perp, rows[:, 0]))[:, None] / mult, p
        )
        share = 0.25 + 0.3 * synthetic._rng(self.seed, perp, "spot-share", day).random()
        rows[:, 5] = np.round(rows[:, 5] * share * mult, v)
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
    """(funding_time ms, rate) rows for settlements in [lo, hi] up to the clock, on the
    market's funding grid (`funding_ms`), oldest first."""
    step = funding_ms(symbol)
    times = _served(source, symbol, lo, hi, now_ms, step)
    if not len(times):
        return np.empty((0, 2))
    window = (times[:, None] - step + np.arange(0, step, MINUTE_MS)[None, :]).ravel()
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

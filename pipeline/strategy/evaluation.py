"""A personality evaluated over one run of bars of its signal timeframe, all bars at once in
numpy: regime, votes and scores, net confluence, the transitions that are candidates, their
quality (missing or incomplete bars in what they looked at, higher-timeframe bars included),
and which candidates the cooldown lets fire. The rules of the game are in the docstring of
pipeline.strategy.signals (the as-of join of higher timeframes too); the frame the fired bars
become, in pipeline.strategy.signal_table.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.candles.timeframes import (
    MINUTE_MS,
    Timeframe,
    as_timeframe,
    bucket_start,
    shift_buckets,
)

if TYPE_CHECKING:
    import numpy as np

    from pipeline.strategy.personality import Personality
    from pipeline.strategy.signal_inputs import Series


@dataclass
class Run:
    """A contiguous stretch of the signal timeframe on a dense grid."""

    g0: int  # grid index of row 0
    n: int
    rows: np.ndarray  # dense row of each present bar
    lo: int  # present bars [lo, hi) of the series
    hi: int


def grid_index(tf: Timeframe, open_ms: np.ndarray) -> np.ndarray:
    return (open_ms - tf.anchor_ms) // tf.ms


def runs(g: np.ndarray, pad: int, gap: int) -> Iterator[Run]:
    """Split at gaps longer than `gap` bars (nothing reaches across them), pad each run with
    `pad` missing rows in front (what its first bars look back at)."""
    import numpy as np

    if len(g) == 0:
        return
    cuts = np.flatnonzero(np.diff(g) > gap) + 1
    bounds = [0, *cuts.tolist(), len(g)]
    for lo, hi in itertools.pairwise(bounds):
        g0 = int(g[lo]) - pad
        yield Run(g0, int(g[hi - 1]) - g0 + 1, g[lo:hi] - g0, lo, hi)


@dataclass
class _Htf:
    """A higher timeframe's bars joined onto the dense rows: position of each row's as-of bar,
    whether it exists, and whether it is complete."""

    pos: np.ndarray
    found: np.ndarray
    bad: np.ndarray  # missing or incomplete
    key: np.ndarray  # open time of the as-of bar (for counting distinct bars)


def _join_htf(tf: str, close_ms: np.ndarray, s: Series | None) -> _Htf:
    import numpy as np

    want = shift_buckets(tf, bucket_start(tf, close_ms), -1)
    if s is None or len(s.open_ms) == 0:
        z = np.zeros(len(close_ms), dtype=bool)
        return _Htf(np.zeros(len(close_ms), dtype=np.int64), z, ~z, want)
    pos = np.searchsorted(s.open_ms, want)
    pos = np.minimum(pos, len(s.open_ms) - 1)
    found = s.open_ms[pos] == want
    bad = ~found | ~s.complete[pos]
    return _Htf(pos, found, bad, want)


def _window_count(flags: np.ndarray, h: int) -> np.ndarray:
    """Per row, how many of rows [r - h, r] are flagged (integers: exact from any start)."""
    import numpy as np

    c = np.concatenate([[0], np.cumsum(flags.astype(np.int64))])
    r = np.arange(len(flags))
    return c[r + 1] - c[np.maximum(r - h, 0)]


def _distinct_count(flags: np.ndarray, key: np.ndarray, h: int) -> np.ndarray:
    """Per row, how many distinct flagged higher bars rows [r - h, r] were joined to."""
    import numpy as np

    change = np.ones(len(key), dtype=bool)
    change[1:] = key[1:] != key[:-1]
    first = flags & change
    out = _window_count(first, h)
    start = np.maximum(np.arange(len(key)) - h, 0)
    out += (flags[start] & ~change[start]).astype(np.int64)
    return out


@dataclass
class Eval:
    """Everything computed for one run, dense."""

    close_ms: np.ndarray
    present: np.ndarray
    regime: np.ndarray  # index into personality.regimes, -1 none
    long: list[np.ndarray]  # per rule: its long vote (0..1)
    short: list[np.ndarray]
    weight: list[np.ndarray]  # per rule: weight x regime multiplier
    unknown: list[np.ndarray | None]  # per rule: where a `when_unknown` gate's condition is
    net_long: np.ndarray
    net_short: np.ndarray
    cand_long: np.ndarray
    cand_short: np.ndarray
    quality: list[str | None]  # None = ok, else a description (filled for candidates only)
    degraded: np.ndarray
    bars: Any


def evaluate(p: Personality, sig: Series, htfs: dict[str, Series | None], run: Run) -> Eval:
    import numpy as np

    from pipeline.strategy.bars import Bars, shift, truth

    tf = as_timeframe(p.signal_tf)
    n = run.n
    open_ms = tf.anchor_ms + (run.g0 + np.arange(n, dtype=np.int64)) * tf.ms
    close_ms = open_ms + tf.ms
    present = np.zeros(n, dtype=bool)
    present[run.rows] = True
    joins = {h: _join_htf(h, close_ms, htfs.get(h)) for h in p.timeframes[1:]}

    def fetch(htf: str | None, col: str) -> np.ndarray:
        if htf is None:
            out = np.full(n, np.nan)
            out[run.rows] = sig.values[col][run.lo : run.hi]
            return out
        j, s = joins[htf], htfs.get(htf)
        if s is None:
            return np.full(n, np.nan)
        return np.where(j.found, s.values[col][j.pos], np.nan)

    bars = Bars(n, fetch)
    regime = np.full(n, -1, dtype=np.int64)
    for k, g in enumerate(p.regimes):
        regime[truth(g.node(bars)) & (regime == -1)] = k

    zeros = np.zeros(n)
    score_l, score_s, max_l, max_s = zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy()
    gate_l = present.copy()
    gate_s = present.copy()
    longs, shorts, weights, unknowns = [], [], [], []
    for r in p.rules:
        v = r.node(bars)
        unknown = np.isnan(v)
        if r.direction == "both":
            lg = np.clip(np.nan_to_num(v, nan=0.0), 0.0, 1.0)
            sh = np.clip(np.nan_to_num(-v, nan=0.0), 0.0, 1.0)
        else:
            hold = truth(v).astype(np.float64)
            lg = hold if r.direction == "long" else zeros
            sh = hold if r.direction == "short" else zeros
        if r.gate:
            w = zeros
            passes = unknown if r.unknown is not None else np.zeros(n, dtype=bool)
            if r.direction != "short":
                gate_l &= (lg > 0) | passes
            if r.direction != "long":
                gate_s &= (sh > 0) | passes
        else:
            mult = np.asarray([*r.multipliers, 1.0])
            w = r.weight * mult[regime]
            score_l += w * lg
            score_s += w * sh
            # with `when_unknown` it abstains where unknown: its weight leaves the maximum
            counted = w * ~unknown if r.unknown is not None else w
            if r.direction != "short":
                max_l += counted
            if r.direction != "long":
                max_s += counted
        longs.append(lg)
        shorts.append(sh)
        weights.append(w)
        unknowns.append(unknown if r.unknown is not None else None)

    with np.errstate(divide="ignore", invalid="ignore"):
        net_l = (score_l - score_s) / max_l
        net_s = (score_s - score_l) / max_s
    act_l = gate_l & (net_l >= p.threshold)
    act_s = gate_s & (net_s >= p.threshold)
    cand_l = act_l & ~(shift(act_l.astype(np.float64), 1) == 1.0)
    cand_s = act_s & ~(shift(act_s.astype(np.float64), 1) == 1.0)

    # quality of the window each bar looked at: itself and `lookback + 1` bars before
    h = p.lookback + 1
    missing = _window_count(~present, h)
    incomplete = np.zeros(n, dtype=np.int64)
    incomplete[run.rows] = ~sig.complete[run.lo : run.hi]
    incomplete = _window_count(incomplete.astype(bool), h)
    htf_bad = {k: _distinct_count(j.bad, j.key, h) for k, j in joins.items()}
    degraded = (missing > 0) | (incomplete > 0)
    for cnt in htf_bad.values():
        degraded |= cnt > 0
    if not p.emit_degraded:
        cand_l &= ~degraded
        cand_s &= ~degraded
    quality: list[str | None] = [None] * n
    for i in np.flatnonzero((cand_l | cand_s) & degraded).tolist():
        quality[i] = _describe(p, h, int(missing[i]), int(incomplete[i]), htf_bad, i)
    return Eval(
        close_ms,
        present,
        regime,
        longs,
        shorts,
        weights,
        unknowns,
        net_l,
        net_s,
        cand_l,
        cand_s,
        quality,
        degraded,
        bars,
    )


def _describe(
    p: Personality, h: int, missing: int, incomplete: int, htf: dict[str, Any], i: int
) -> str:
    parts = []
    if missing:
        parts.append(f"{missing} of {h + 1} {p.signal_tf} bars missing")
    if incomplete:
        parts.append(f"{incomplete} of {h + 1} {p.signal_tf} bars incomplete")
    for tf, cnt in htf.items():
        if cnt[i]:
            parts.append(f"{int(cnt[i])} {tf} bar(s) missing or incomplete")
    return "degraded: " + "; ".join(parts)


def cooldown(p: Personality, close_ms: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The candidates that fire: the first of each cooldown window."""
    import numpy as np

    if p.cooldown is None or len(idx) == 0:
        return idx
    cd = p.cooldown
    key = (close_ms[idx] - MINUTE_MS - cd.anchor_ms) // cd.ms
    first = np.ones(len(idx), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    return idx[first]

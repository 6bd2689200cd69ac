"""Signals: a personality's rules over candles + indicators -> rows of the `signals` table.

Per symbol, the signal timeframe's bars are laid on a dense grid (a missing bar is a NaN row,
so "n bars back" is n intervals back whatever is missing) and every condition is evaluated
once over all of them in numpy (pipeline.strategy.rules). Then, per bar:

- regime: the first of the personality's regimes whose condition holds (weights x multiplier);
- long score = sum of the weights of the rules that vote long, short score likewise; the net
  confluence for a side is (its score - the other side's) / (the most its rules could give),
  and the signal's confidence is that number clipped to [0, 1];
- a side is *active* when its gates hold and its net confluence reaches the threshold; a
  signal is a *transition*: the bar where a side becomes active (not active on the bar before);
- quality: "ok", or "degraded: ..." when a bar the signal looked at (the bar itself and the
  `lookback` bars before it, and the higher-timeframe bars joined onto them) is missing or
  incomplete; the personality says whether degraded signals are emitted (if not, they are
  dropped before the cooldown, so they do not use it up);
- cooldown: at most one signal per (symbol, personality) per cooldown window, the windows
  being a fixed grid anchored at the epoch (like timeframes: a 4h cooldown = the 4h buckets;
  a signal's window is that of its last minute). The first transition in a window wins.

Why a grid and not "no signal within the cooldown after the last one": with a sliding
cooldown, whether a bar signals depends on whether the previous signal fired, which depends
on the one before, back to the start of history, so no bounded window could reproduce the
whole-history result. With the grid, a bar's fate depends only on the transitions earlier in
its own window: a daily partition reads back to the start of the window holding its first
bar, plus the rules' lookback and one bar for the transition (`signal_input_window`), and
gives exactly, bit for bit, the rows a pass over all history gives. The cost: two signals can
be closer than the cooldown across a window boundary; the rate stays at most one per window.

Higher timeframes join as-of: a bar sees the last higher bar that had closed by its own
close_time (the bucket before the one containing the close). If that exact bar is missing
the value is unknown (and the signal degraded) rather than an older bar's, so the join, too,
needs no unbounded history.

Market context (order flow, funding, open interest, the basis: pipeline.strategy.context) is
joined onto the frames before any of this, each value as public at the bar's close and none
reaching back further than a fixed span, so the same holds for it; the live path joins it again
from the rows known at the bar's close (`live_at` with a context).

A signal belongs to the daily partition of its bar (close_time in (D, D+1], like candles);
it is stamped with the bar's close_time and priced at the bar's close.

The pieces: pipeline.strategy.signal_inputs (frames to numpy bars), .evaluation (a
personality over a run of bars), .signal_table (the rows and their snapshot), .checks (the
checks on the rows, lookahead included); this module runs them, per batch, partition or bar.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline.candles.timeframes import (
    MINUTE_MS,
    as_timeframe,
    bucket_start,
    day_bounds_ms,
    first_owned_start_ms,
    from_ms,
    owner_day,
    shift_buckets,
    to_ms,
)
from pipeline.strategy.evaluation import cooldown, evaluate, grid_index, runs
from pipeline.strategy.signal_inputs import (
    Frames,
    Series,
    cut_frames,
    split_frames,
    symbol_series,
)
from pipeline.strategy.signal_table import OK, append_rows, new_columns, to_frame

if TYPE_CHECKING:
    import polars as pl

    from pipeline.strategy.context import Context
    from pipeline.strategy.personality import Personality


def _personality(p: Personality | str) -> Personality:
    from pipeline.strategy.personality import load_personality

    return load_personality(p)


def compute_signals(frames: Frames | pl.DataFrame, personality: Personality | str) -> pl.DataFrame:
    """Every signal the personality gives over all the bars in `frames` (one batch, as a
    backfill over whole history): rows in the `signals` layout, sorted by symbol, close_time.

    `frames`: per timeframe, candles joined with indicators (`join_frames`), any symbols.
    """
    p = _personality(personality)
    return series_signals(symbol_series(split_frames(frames), p), p)


def series_signals(
    per_symbol: Mapping[str, Mapping[str, Series]], p: Personality, at_ms: int | None = None
) -> pl.DataFrame:
    """`compute_signals` on bars already in numpy (`symbol_series`: per symbol and timeframe);
    with `at_ms`, only the rows of bars closing at that instant (the fast lane's question)."""
    return to_frame(p, fired_columns(per_symbol, p, at_ms))


def fired_columns(
    per_symbol: Mapping[str, Mapping[str, Series]], p: Personality, at_ms: int | None = None
) -> dict[Any, list]:
    """The fired bars of `series_signals` as the column lists `to_frame` turns into rows
    (`cols["symbol"]` empty when nothing fired: no frame to build)."""
    import numpy as np

    tf = as_timeframe(p.signal_tf)
    h = p.lookback + 1
    cd_bars = -(-p.cooldown.ms // tf.ms) if p.cooldown else 0
    cols = new_columns(p)
    for sym in sorted(per_symbol):
        series = per_symbol[sym]
        sig = series.get(p.signal_tf)
        if sig is None:
            continue
        g = grid_index(tf, sig.open_ms)
        if len(g) and not (sig.open_ms == tf.anchor_ms + g * tf.ms).all():
            raise ValueError(f"{p.name}: {p.signal_tf} bars of {sym} off the grid")
        htfs = {t: series.get(t) for t in p.timeframes[1:]}
        for run in runs(g, h, h + cd_bars + 1):
            ev = evaluate(p, sig, htfs, run)
            cands = np.flatnonzero(ev.cand_long | ev.cand_short)
            fired = cooldown(p, ev.close_ms, cands)
            if at_ms is not None:
                fired = fired[ev.close_ms[fired] == at_ms]
            append_rows(p, sym, ev, fired, cols)
    return cols


# -- partitions -----------------------------------------------------------------------------------


def signal_input_window(
    day: dt.date, personality: Personality | str, last_day: dt.date | None = None
) -> dict[str, tuple[dt.datetime, dt.datetime]]:
    """Per timeframe, the bars the partition `day` (or the days `day`..`last_day`) reads:
    open_time >= start and close_time <= end (as `indicator_input_window`; the indicators
    table brings their own warm-up).

    The signal timeframe goes back to the start of the cooldown window holding the day's
    first bar, then `lookback + 1` bars more (the rules' reach and the transition's bar
    before); each higher timeframe from the as-of bar of that first row.
    """
    p = _personality(personality)
    tf = as_timeframe(p.signal_tf)
    end = from_ms(day_bounds_ms(last_day or day)[1])
    first = first_owned_start_ms(tf, day)
    if first is None:  # no bar of the signal timeframe closes in this day
        return {t: (end, end) for t in p.timeframes}
    return _window_from(p, first, end)


def bar_input_window(
    personality: Personality | str, close_time: dt.datetime
) -> dict[str, tuple[dt.datetime, dt.datetime]]:
    """Per timeframe, the bars the row of the one bar closing at `close_time` depends on:
    `signal_input_window` with that bar as the first one, ending at its close. Inside its
    partition's window, and giving the same row (a bar's fate depends only on its cooldown
    window, its lookback and the bar before: the module's docstring)."""
    p = _personality(personality)
    c = to_ms(close_time)
    return _window_from(p, bucket_start(p.signal_tf, c - MINUTE_MS), from_ms(c))


def _window_from(
    p: Personality, first: int, end: dt.datetime
) -> dict[str, tuple[dt.datetime, dt.datetime]]:
    """The windows of bars from the one opening at `first` (ms) to `end`."""
    tf = as_timeframe(p.signal_tf)
    s1 = first
    if p.cooldown is not None:
        window = bucket_start(p.cooldown, first + tf.ms - MINUTE_MS)
        s1 = min(first, bucket_start(tf, window))
    start = shift_buckets(tf, s1, -(p.lookback + 1))
    out = {p.signal_tf: (from_ms(max(start, 0)), end)}
    for h in p.timeframes[1:]:
        hs = shift_buckets(h, bucket_start(h, start + tf.ms), -1)
        out[h] = (from_ms(max(hs, 0)), end)
    return out


def signals_for_partition(
    frames: Frames | pl.DataFrame,
    day: dt.date,
    personality: Personality | str,
    last_day: dt.date | None = None,
) -> pl.DataFrame:
    """The signals the daily partition `day` owns (close_time in (day, day + 1]; with
    `last_day`, those of the days `day`..`last_day` in one pass, for a single-run backfill),
    computed from `frames` cut to `signal_input_window`: identical to the same rows of
    `compute_signals` over all history, and to what the live path computes bar by bar."""
    import polars as pl

    p = _personality(personality)
    split = split_frames(frames)
    cut = cut_frames(split, signal_input_window(day, p, last_day))
    lo, hi = day_bounds_ms(day)[0], day_bounds_ms(last_day or day)[1]
    t = pl.col("close_time")
    return compute_signals(cut, p).filter((t > from_ms(lo)) & (t <= from_ms(hi)))


def signal_summary(signals: pl.DataFrame) -> dict[str, Any]:
    """Per personality: signals per side, mean confidence and degraded count (JSON-able, for
    the partition's metadata in the UI)."""
    import polars as pl

    out: dict[str, Any] = {}
    if signals.is_empty():
        return out
    per = (
        signals.group_by("personality")
        .agg(
            (pl.col("action") == "BUY").sum().alias("BUY"),
            (pl.col("action") == "SELL").sum().alias("SELL"),
            pl.col("confidence").mean().alias("mean_confidence"),
            (pl.col("quality") != OK).sum().alias("degraded"),
        )
        .sort("personality")
    )
    for row in per.iter_rows(named=True):
        name = row.pop("personality")
        row["mean_confidence"] = round(float(row["mean_confidence"]), 4)
        out[name] = {k: (int(v) if k != "mean_confidence" else v) for k, v in row.items()}
    return out


def live_signal(
    frames: Frames | pl.DataFrame,
    personality: Personality | str,
    symbol: str,
    close_time: dt.datetime,
    context: Context | None = None,
) -> pl.DataFrame:
    """What the live path emits for the bar closing at `close_time`: today's partition
    computed from the data known at that moment (bars closed by then; with `context`, the
    personality's market context joined again from the rows known by then), that bar's row
    (0/1)."""
    import polars as pl

    split = split_frames(frames)
    one = {tf: f.filter(pl.col("symbol") == symbol) for tf, f in split.items()}
    ctx = context.of_symbol(symbol) if context is not None else None
    return live_at(one, _personality(personality), close_time, ctx)


def live_at(
    frames: Frames, p: Personality, close_time: dt.datetime, context: Context | None = None
) -> pl.DataFrame:
    """`live_signal` on frames already cut to one symbol (and `context` to its rows)."""
    import polars as pl

    from pipeline.strategy.context import context_needs, join_context

    windows = {
        tf: (lo, min(hi, close_time))
        for tf, (lo, hi) in signal_input_window(owner_day(close_time), p).items()
    }
    cut = cut_frames(frames, windows)
    if context is not None:
        cut = join_context(cut, context.known_by(close_time), context_needs([p]))
    return compute_signals(cut, p).filter(pl.col("close_time") == close_time)


__all__ = [
    "bar_input_window",
    "compute_signals",
    "fired_columns",
    "live_at",
    "live_signal",
    "series_signals",
    "signal_input_window",
    "signal_summary",
    "signals_for_partition",
]

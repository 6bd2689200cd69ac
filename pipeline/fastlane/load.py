"""One symbol's windows built from a replica snapshot (pipeline.fastlane.replica), as the
pipeline would build its current day: the day's bars resampled from the stored 1m candles
(`resample_partition`), earlier bars as stored, all marked as history (`mark_history` with the
stored first minute and confirmed gaps) and the day's indicators computed over its window.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.candles.rollup import PRICES
from pipeline.candles.timeframes import (
    MINUTE_MS,
    bucket_end,
    bucket_start,
    day_bounds_ms,
    from_ms,
    parse_timeframe,
)
from pipeline.fastlane.window import Window

if TYPE_CHECKING:
    import polars as pl

    from pipeline.fastlane.plan import Plan
    from pipeline.fastlane.replica import Snapshot


@dataclass
class SymbolState:
    """One symbol's windows, the day its next bars belong to and the minute it needs next."""

    day: dt.date
    next_ms: int
    first: dt.datetime | None  # its first stored minute
    klines: Window  # the 1m candles of the buckets still forming (and the day's)
    windows: dict[str, Window]  # per timeframe read
    closes: dict[str, int]  # per timeframe read: close (ms) of its bucket forming now
    runs: pl.DataFrame  # its confirmed-absent minutes in the replica, as runs

    def gap_runs(self, lo: dt.datetime, hi: dt.datetime) -> pl.DataFrame:
        """`mark_history`'s gap runs: those in [lo, hi) are counted, the others count for
        nothing, so the whole set serves every span."""
        return self.runs


def _ms(frame: pl.DataFrame, col: str) -> pl.Series:
    return frame[col].dt.epoch("ms")


def minutes_window(klines: pl.DataFrame) -> Window:
    """1m candles (KLINE_COLUMNS) as a window of prices."""
    import polars as pl

    w = Window(parse_timeframe("1m"), PRICES)
    t = _ms(klines, "open_time").to_numpy()
    w.extend(
        {
            "open_ms": t,
            "close_ms": t + MINUTE_MS,
            "whole": [True] * len(t),
            "joined": [True] * len(t),
            **{c: klines[c].cast(pl.Float64).to_numpy() for c in PRICES},
        }
    )
    return w


def load_symbol(snap: Snapshot, sym: str, plan: Plan) -> SymbolState:
    import polars as pl

    from pipeline.candles.resample import resample_partition
    from pipeline.fastlane.bars import indicators
    from pipeline.indicators.history import JOINED, WHOLE, mark_history

    day, nxt = snap.day[sym], snap.next_ms[sym]
    d0 = from_ms(day_bounds_ms(day)[0])
    mine = snap.klines.filter(pl.col("symbol") == sym)
    levels = [t.name for t in plan.levels(plan.timeframes[-1])]
    today = resample_partition(mine, day, levels, as_of=from_ms(nxt))
    first = snap.first.get(sym)
    runs = snap.gap_runs.filter(pl.col("symbol") == sym)
    windows = {}
    for tf in plan.timeframes:
        name = tf.name
        stored = snap.stored[name].filter(
            (pl.col("symbol") == sym)
            & (_ms(snap.stored[name], "open_time") >= plan.keep_from_ms(name, day))
            & (pl.col("close_time") <= d0)
        )
        keys = ["symbol", "open_time", "close_time", "n_1m", "complete", *plan.candles[name]]
        built = today.filter(pl.col("timeframe") == name)
        frame = pl.concat(
            [stored.select(keys), built.select(keys)], how="vertical_relaxed"
        ).with_columns(timeframe=pl.lit(name))
        marked = mark_history(frame, {sym: first} if first is not None else None, lambda a, b: runs)
        values = {c: marked[c].cast(pl.Float64).to_numpy() for c in keys[3:]}
        values["complete"] = marked["complete"].fill_null(False).cast(pl.Float64).to_numpy()
        for c in plan.indicators[name]:
            later = pl.repeat(None, built.height, dtype=pl.Float64, eager=True)
            values[c] = pl.concat([stored[c].cast(pl.Float64), later]).to_numpy()
        w = Window(tf, plan.values(name))
        w.extend(
            {
                "open_ms": _ms(marked, "open_time").to_numpy(),
                "close_ms": _ms(marked, "close_time").to_numpy(),
                "whole": marked[WHOLE].to_numpy(),
                "joined": marked[JOINED].to_numpy(),
                **values,
            }
        )
        names = plan.indicators[name]
        if names and built.height:
            start = w.since(plan.indicator_start_ms(name, day))
            t0 = stored.height
            if start > t0:
                raise AssertionError(f"{sym} {name}: indicator window starts inside the day")
            found = indicators(w, start, plan.specs[name], names)
            w.set_from(t0, {c: v[t0 - start :] for c, v in found.items()})
        windows[name] = w
    keep = plan.forming_start_ms(day, nxt)
    klines = minutes_window(mine.filter(_ms(mine, "open_time") >= keep))
    closes = {t.name: int(bucket_end(t, bucket_start(t, nxt))) for t in plan.timeframes}
    return SymbolState(day, nxt, first, klines, windows, closes, runs)

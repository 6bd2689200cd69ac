"""A closed minute made into the bars that close with it, each with its history marks and its
indicators, by the pipeline's own code: the resample's levels (pipeline.candles.rollup, the
core of `resample`), `history_flags` (what `mark_history` computes per row) and
`compute_series` (what `compute_indicators` runs per series) over the day's indicator window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.candles.rollup import PRICES
from pipeline.candles.timeframes import MINUTE_MS, Timeframe, bucket_start, expected_minutes

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from pipeline.fastlane.window import Window
    from pipeline.indicators.spec import IndicatorSpec

Row = dict[str, Any]


def minute_row(open_ms: int, prices: Mapping[str, float]) -> Row:
    """The 1m bar of a minute: the minute itself, whole (the resample's 1m level, `_base`)."""
    return {"open_ms": open_ms, "close_ms": open_ms + MINUTE_MS, "n_1m": 1.0, "complete": 1.0,
            **prices}  # fmt: skip


def rolled_rows(
    symbol: str, klines: Window, closing: Sequence[Timeframe], levels: list[Timeframe], t: int
) -> dict[str, Row]:
    """The bars of `closing` (timeframes longer than 1m) that close with the minute opening at
    `t`, rolled up from `klines` through `levels` (the configured timeframes up to the longest
    closing one), exactly as `resample` builds them."""
    import numpy as np

    from pipeline.candles.rollup import Minutes, build_levels

    lo = klines.since(min(bucket_start(tf, t) for tf in closing))
    m = Minutes.of_symbol(symbol, klines.open_ms[lo:], {c: klines.col(c)[lo:] for c in PRICES})
    built = build_levels(m, levels)
    out = {}
    for tf in closing:
        lvl = built[tf.name]
        start = int(lvl.start[-1])
        if start != bucket_start(tf, t):  # cannot be: the minute at t is in the frame
            raise AssertionError(f"{symbol} {tf.name}: no bucket holding {t}")
        n1 = int(lvl.n1[-1])
        out[tf.name] = {
            "open_ms": start,
            "close_ms": t + MINUTE_MS,
            "n_1m": float(n1),
            "complete": float(n1 == int(expected_minutes(tf, np.int64(start)))),
            **{c: float(v[-1]) for c, v in lvl.cols.items()},
        }
    return out


GapRuns = Callable[[dt.datetime, dt.datetime], "pl.DataFrame"]


def marks(
    w: Window, row: Row, symbol: str, first: dt.datetime | None, gap_runs: GapRuns
) -> tuple[bool, bool]:
    """WHOLE and JOINED of a new bar after the window's newest one (`mark_history`'s row).
    A complete bar right after the newest one misses no minute: both, as `history_flags`
    finds without asking for gaps."""
    import numpy as np

    from pipeline.indicators.history import history_flags

    k = min(w.n, 1)
    if row["complete"] == 1.0 and (k == 0 or int(w.close_ms[-1]) == row["open_ms"]):
        return True, True
    o = np.array([*w.open_ms[w.n - k :], row["open_ms"]], dtype=np.int64)
    c = np.array([*w.close_ms[w.n - k :], row["close_ms"]], dtype=np.int64)
    n1 = np.array([*w.col("n_1m")[w.n - k :], row["n_1m"]]).astype(np.int64)
    new = np.zeros(k + 1, dtype=bool)
    new[0] = True
    sym = np.array([symbol] * (k + 1), dtype=object)
    firsts = {symbol: first} if first is not None else None
    whole, joined = history_flags(new, o, c, n1, sym, firsts, gap_runs)
    return bool(whole[-1]), bool(joined[-1])


def indicators(
    w: Window, start: int, spec: IndicatorSpec, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """The columns `names` for bars [start, n) of the window, computed over those bars as one
    series (the day's indicator window): `compute_series`, as the `indicators` asset runs it."""
    from pipeline.indicators.compute import compute_series
    from pipeline.indicators.custom import Context
    from pipeline.indicators.spec import CANDLE_INPUTS

    inputs = {c: w.col(c)[start:] for c in CANDLE_INPUTS if c in w.names}
    ctx = Context(
        w.tf, w.open_ms[start:], w.close_ms[start:], w.col("whole")[start:],
        w.col("joined")[start:],
    )  # fmt: skip
    out = compute_series(inputs, ctx, spec)
    return {c: out[c] for c in names}

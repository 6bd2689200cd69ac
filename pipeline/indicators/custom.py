"""Custom indicator functions: what TA-Lib lacks (bb_width, squeeze, ratio, obv_window, vwap),
with what each may know about the bars (`Context`) and how far back its values reach.

Definitions beyond TA-Lib's:
- bb_width = (upper - lower) / middle; bb_squeeze: bb_width at its lowest of the last 125 bars
  (Bollinger's Squeeze).
- obv: on-balance volume over the trailing 100 bars, sum of sign(close - previous close) x
  volume. TA-Lib's OBV sums from the first bar it is given, so its level would depend on where
  a partition's read starts.
- vwap: sum of typical price (h+l+c)/3 x volume over sum of volume since the session start. The
  session is the UTC day (anchor 1d) of the bar's last minute: a 37m bar spanning midnight opens
  the new day, and a bar of a day or longer is its own session (vwap = its typical price).
- volume_ratio = volume / volume_ma_20 (0 when that average is 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pipeline.candles.timeframes import (
    MINUTE_MS,
    Timeframe,
    bucket_range,
    bucket_start,
)

if TYPE_CHECKING:
    import numpy as np

Scale = Literal["price", "range", "value"]


@dataclass(frozen=True)
class Context:
    """What a custom function may know about the bars besides its inputs."""

    timeframe: Timeframe
    open_ms: np.ndarray
    close_ms: np.ndarray
    # Rows that count as history (pipeline.indicators.history); None: all of them, unbroken.
    whole: np.ndarray | None = field(default=None, compare=False, repr=False)
    joined: np.ndarray | None = field(default=None, compare=False, repr=False)
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def rows(self, a: int, b: int) -> Context:
        """Rows [a, b) as one unbroken history (a segment), with a fresh memo."""
        return Context(self.timeframe, self.open_ms[a:b], self.close_ms[a:b])


@dataclass(frozen=True)
class Custom:
    """A custom indicator function: `compute(ctx, *inputs, **params)` -> array(s).

    `lookback(params)` is the number of prior bars a value needs (finite window).
    `first_row(ctx, params)`, for values anchored in time rather than in bars (VWAP), gives per
    row the index of the first row its value depends on, -1 where that row is not in the input;
    `null_rows(ctx, params)` counts those -1 rows, which must form a prefix (the fast path).
    """

    compute: Callable[..., Any]
    inputs: tuple[str, ...]
    lookback: Callable[[Mapping[str, Any]], int] = lambda p: 0
    n_outputs: int = 1
    scale: Scale = "value"
    boolean: bool = False
    first_row: Callable[[Context, Mapping[str, Any]], np.ndarray] | None = None
    null_rows: Callable[[Context, Mapping[str, Any]], int] | None = None


def talib_fn(name: str) -> Callable[..., Any]:
    """TA-Lib's function `name` for numpy inputs: past the wrapper that checks every call for
    polars/pandas inputs (~25 us a call, ~40 calls per series)."""
    import talib

    fn = getattr(talib, name)
    return getattr(fn, "__wrapped__", fn)


def _bb_width(ctx: Context, upper: np.ndarray, middle: np.ndarray, lower: np.ndarray) -> Any:
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        return (upper - lower) / middle


def _squeeze(ctx: Context, width: np.ndarray, *, lookback: int) -> Any:
    import numpy as np

    low = talib_fn("MIN")(width, timeperiod=lookback)
    out = (width <= low).astype(np.float64)
    out[np.isnan(low)] = np.nan
    return out


def _ratio(ctx: Context, num: np.ndarray, den: np.ndarray) -> Any:
    """num / den, 0 where den is 0 (no volume at all in the average: nothing is unusual)."""
    import numpy as np

    out = np.divide(num, den, out=np.zeros_like(num), where=den != 0)
    out[np.isnan(num) | np.isnan(den)] = np.nan
    return out


def _obv_window(ctx: Context, close: np.ndarray, volume: np.ndarray, *, window: int) -> Any:
    """Sum of volume signed by the close's direction over the last `window` bars."""
    import numpy as np

    signed = np.empty_like(close)
    signed[:1] = np.nan
    # np.sign in place takes a slow path (7x here): sign a temporary instead.
    np.multiply(np.sign(close[1:] - close[:-1]), volume[1:], out=signed[1:])
    return talib_fn("SUM")(signed, timeperiod=window)


def _session_runs(ctx: Context, anchor: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """Row index where each session starts, its length in rows, and whether the first session
    is partial (the input starts after its first bar: its VWAP would silently miss volume).

    A bar's session is the anchor bucket holding its last minute (so a 37m bar spanning
    midnight opens the new day's session, and a bar as long as the anchor is its own). Found by
    searching the sessions' opens among the sorted close times, not by bucketing every bar.
    """
    import numpy as np

    key = ("sessions", anchor)
    if key not in ctx.memo:  # VWAP's value and its NULL rule both need it
        n = len(ctx.close_ms)
        starts = np.zeros(min(n, 1), np.int64)
        partial = False
        if n:
            last_minute = (int(ctx.close_ms[0]) - MINUTE_MS, int(ctx.close_ms[-1]) - MINUTE_MS)
            opens = bucket_range(anchor, *last_minute)
            # First bar whose last minute is at or after each later session's open.
            later = np.searchsorted(ctx.close_ms, opens[1:] + MINUTE_MS, "left")
            starts = np.unique(np.r_[starts, later])
            partial = bool(ctx.open_ms[0] != bucket_start(ctx.timeframe, int(opens[0])))
        ctx.memo[key] = (starts, np.diff(np.r_[starts, n]), partial)
    return ctx.memo[key]


def _session_first_row(ctx: Context, params: Mapping[str, Any]) -> np.ndarray:
    """Index of each bar's session's first bar; -1 throughout a partial first session."""
    import numpy as np

    starts, lengths, partial = _session_runs(ctx, params["anchor"])
    first = np.repeat(starts, lengths)
    if partial:
        first[: lengths[0]] = -1
    return first


def _session_null_rows(ctx: Context, params: Mapping[str, Any]) -> int:
    _, lengths, partial = _session_runs(ctx, params["anchor"])
    return int(lengths[0]) if partial else 0


def _vwap(
    ctx: Context,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    *,
    anchor: str,
) -> Any:
    """Volume-weighted typical price (h+l+c)/3 since the session start; the typical price itself
    while the session has no volume."""
    import numpy as np

    tp = high + low  # in place from here on: a year of 1m is 4 MB per temporary
    tp += close
    tp /= 3
    if len(tp) == 0:
        return tp
    starts, lengths, _ = _session_runs(ctx, anchor)
    pv = np.multiply(tp, volume)
    np.cumsum(pv, out=pv)
    v = np.cumsum(volume)
    pv -= np.repeat(np.r_[0.0, pv[starts[1:] - 1]], lengths)
    v -= np.repeat(np.r_[0.0, v[starts[1:] - 1]], lengths)
    return np.divide(pv, v, out=tp, where=v > 0)


CUSTOM: dict[str, Custom] = {
    "bb_width": Custom(_bb_width, ("bb_upper", "bb_middle", "bb_lower")),
    "squeeze": Custom(_squeeze, ("bb_width",), lambda p: int(p["lookback"]) - 1, boolean=True),
    "ratio": Custom(_ratio, ("volume", "volume_ma_20")),
    "obv_window": Custom(_obv_window, ("close", "volume"), lambda p: int(p["window"])),
    "vwap": Custom(
        _vwap,
        ("high", "low", "close", "volume"),
        scale="price",
        first_row=_session_first_row,
        null_rows=_session_null_rows,
    ),
}

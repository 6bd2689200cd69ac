"""Indicators per symbol and timeframe: the registry, the derived warm-up, the computation and
the checks that prove there is no lookahead.

The set lives in `indicators.yaml`: one entry per indicator naming a TA-Lib function (or a custom
one below), its params, inputs and output columns. Adding an indicator is one entry there.
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

Warm-up is derived from the entries, never written down. A finite-window indicator needs exactly
its TA-Lib lookback of prior bars (SMA 200: 199). A recursive one (EMA, Wilder's RSI/ATR/ADX,
MACD) never forgets its start: seeded from whatever history it was given (TA-Lib seeds an EMA
with the SMA of its first n inputs), the seed's error is multiplied by (1 - alpha) on every bar.
It needs its lookback plus the k bars after which that weight is below the tolerance:

    (1 - alpha)^k < tol,  k = ceil(ln(tol) / ln(1 - alpha))      alpha = 2/(n+1) EMA, 1/n Wilder

with cascaded smoothings (MACD's signal line, ADX's smoothing of DX) simulated stage by stage,
and tol / RATIO_GAIN for ratios of smoothed sums (RSI, ADX). TA-Lib's unstable period
(talib.set_unstable_period) only hides the first outputs; the recursion still starts at the first
bar given, so it does not bound the error and the k bars come on top of TA-Lib's lookback. An
entry neither known to be recursive nor proven finite by a probe (changing its oldest inputs must
not move later outputs) is rejected. With the default tolerance 1e-6, EMA 200 needs 1,581 bars.

A row whose value would depend on history the computation was not given is NULL, never a
silently different number: with `spec.warmup[col]` bars before it, a value is within `tolerance`
of the value from all history (`check_warmup`), and no value depends on a later bar
(`check_lookahead`).
"""

from __future__ import annotations

import datetime as dt
import inspect
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.checks import MAX_LISTED, CheckOutcome
from pipeline.timeframes import (
    MINUTE_MS,
    Timeframe,
    as_timeframe,
    bucket_range,
    bucket_start,
    day_bounds_ms,
    from_ms,
    shift_buckets,
)

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

SPEC_PATH = Path(__file__).with_name("indicators.yaml")
ID_COLUMNS = ["symbol", "timeframe", "open_time", "close_time"]
CANDLE_INPUTS = ("open", "high", "low", "close", "volume", "turnover")
PRICE_INPUTS = ("open", "high", "low", "close")
Scale = Literal["price", "range", "value"]
# A series this long keeps its own output chunk rather than being copied into a joint one.
BIG_SERIES = 20_000


# -- custom functions (what TA-Lib lacks) ------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What a custom function may know about the bars besides its inputs."""

    timeframe: Timeframe
    open_ms: np.ndarray
    close_ms: np.ndarray
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


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


def _bb_width(ctx: Context, upper: np.ndarray, middle: np.ndarray, lower: np.ndarray) -> Any:
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        return (upper - lower) / middle


def _squeeze(ctx: Context, width: np.ndarray, *, lookback: int) -> Any:
    import numpy as np
    import talib

    low = talib.MIN(width, timeperiod=lookback)
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
    import talib

    signed = np.empty_like(close)
    signed[:1] = np.nan
    # np.sign in place takes a slow path (7x here): sign a temporary instead.
    np.multiply(np.sign(close[1:] - close[:-1]), volume[1:], out=signed[1:])
    return talib.SUM(signed, timeperiod=window)


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

# Smoothing factors of TA-Lib's recursive functions, one per cascaded stage (parallel branches:
# the slowest). Anything else must pass the finite-window probe or name its `smoothing`.
# Ratios of smoothed quantities (RSI = gains / (gains + losses), the DI/DX/ADX family) divide the
# seed's error by today's smoothed range: if volatility has fallen V-fold since the seed, the
# error is V times the decayed weight. Their tolerance is divided by RATIO_GAIN (volatility
# falling 100-fold within a warm-up is beyond what these markets do; measured on the real 2021-25
# BTCUSDT segments the error reached 1.1x the plain bound for RSI 14 on 1m).
RATIO_GAIN = 100.0
_RATIOS = {"RSI", "CMO", "DX", "ADX", "ADXR", "PLUS_DI", "MINUS_DI"}
_SMOOTHING: dict[str, Callable[[Mapping[str, Any]], list[float]]] = {
    "EMA": lambda p: [2 / (p["timeperiod"] + 1)],
    "DEMA": lambda p: [2 / (p["timeperiod"] + 1)] * 2,
    "TEMA": lambda p: [2 / (p["timeperiod"] + 1)] * 3,
    "TRIX": lambda p: [2 / (p["timeperiod"] + 1)] * 3,
    "MACD": lambda p: [
        2 / (max(p["fastperiod"], p["slowperiod"]) + 1),
        2 / (p["signalperiod"] + 1),
    ],
    "MACDFIX": lambda p: [2 / 27, 2 / (p["signalperiod"] + 1)],
    "RSI": lambda p: [1 / p["timeperiod"]],
    "CMO": lambda p: [1 / p["timeperiod"]],
    "ATR": lambda p: [1 / p["timeperiod"]],
    "NATR": lambda p: [1 / p["timeperiod"]],
    "PLUS_DM": lambda p: [1 / p["timeperiod"]],
    "MINUS_DM": lambda p: [1 / p["timeperiod"]],
    "PLUS_DI": lambda p: [1 / p["timeperiod"]],
    "MINUS_DI": lambda p: [1 / p["timeperiod"]],
    "DX": lambda p: [1 / p["timeperiod"]],
    "ADX": lambda p: [1 / p["timeperiod"]] * 2,
    "ADXR": lambda p: [1 / p["timeperiod"]] * 2,
}


# -- the spec -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Indicator:
    """One registry entry, resolved: what to call, on what, and what it needs."""

    name: str
    fn: str
    inputs: tuple[str, ...]
    params: tuple[tuple[str, Any], ...]
    outputs: tuple[str, ...]
    lookback: int  # prior bars beyond its inputs' warm-up (TA-Lib's lookback or the custom one)
    smoothing: tuple[float, ...] = ()  # recursive: alpha of each cascaded stage
    bounds: tuple[float | None, float | None] | None = None
    ordered: bool = False
    scale: Scale = "value"
    custom: bool = False
    boolean: bool = False

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class IndicatorSpec:
    """The resolved indicator set with its tolerance and each column's derived warm-up."""

    indicators: tuple[Indicator, ...]
    tolerance: float
    warmup: Mapping[str, int] = field(hash=False)  # per column, in bars, from all its inputs
    own: Mapping[str, int] = field(hash=False)  # per entry: lookback + convergence bars

    @property
    def columns(self) -> list[str]:
        return [c for ind in self.indicators for c in ind.outputs]

    @property
    def max_warmup(self) -> int:
        return max(self.warmup.values(), default=0)

    def entry_of(self, column: str) -> Indicator:
        return next(i for i in self.indicators if column in i.outputs)


def convergence_bars(alphas: Sequence[float], tol: float) -> int:
    """Bars after which the unknown history's weight in a (cascade of) exponential smoothing(s)
    is below `tol`. One stage: (1 - a)^k < tol. Cascades pass the error on: each stage is
    simulated from a unit error, e_j <- (1 - a_j) e_j + a_j e_{j-1}.
    """
    if not alphas:
        return 0
    if len(alphas) == 1:
        a = alphas[0]
        return 0 if a >= 1 else math.ceil(math.log(tol) / math.log1p(-a))
    err = [1.0] * len(alphas)
    k = 0
    while max(err) >= tol:
        prev = 0.0
        for j, a in enumerate(alphas):
            err[j], prev = (1 - a) * err[j] + a * prev, err[j]
        k += 1
    return k


def _probe_is_finite(fn: str, params: Mapping[str, Any], n_inputs: int, lookback: int) -> bool:
    """Does changing the oldest inputs leave every output whose window excludes them unchanged?"""
    import numpy as np
    import talib

    rng = np.random.default_rng(0)
    n = lookback + 400
    base = 100 + np.cumsum(rng.standard_normal(n))
    series = [base + np.abs(rng.standard_normal(n)) * (1 if i % 2 else -1) for i in range(n_inputs)]
    if n_inputs == 3:  # high, low, close
        series = [base + 2, base - 2, base]
    func = getattr(talib, fn)
    first = np.asarray(func(*series, **params), dtype=np.float64).reshape(-1, n)
    for s in series:
        s[:3] = s[:3] * 1.5 + 7
    second = np.asarray(func(*series, **params), dtype=np.float64).reshape(-1, n)
    a, b = first[:, lookback + 3 :], second[:, lookback + 3 :]
    return bool(np.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True))


def _resolve(name: str, raw: Mapping[str, Any], known: dict[str, Scale], tol: float) -> Indicator:
    if not isinstance(raw, Mapping) or "fn" not in raw:
        raise ValueError(f"indicator {name!r}: needs at least `fn` (a TA-Lib function or custom)")
    allowed = {"fn", "params", "inputs", "outputs", "bounds", "ordered", "scale", "smoothing"}
    if extra := set(raw) - allowed:
        raise ValueError(
            f"indicator {name!r}: unknown key(s) {sorted(extra)}; use {sorted(allowed)}"
        )
    fn = str(raw["fn"])
    params = dict(raw.get("params") or {})
    if fn in CUSTOM:
        c = CUSTOM[fn]
        inputs = tuple(raw.get("inputs") or c.inputs)
        outputs = tuple(raw.get("outputs") or ([name] if c.n_outputs == 1 else []))
        n_out, scale, boolean = c.n_outputs, c.scale, c.boolean
        takes = {
            k
            for k, v in inspect.signature(c.compute).parameters.items()
            if v.kind == v.KEYWORD_ONLY
        }
        if set(params) != takes:
            raise ValueError(f"indicator {name!r}: {fn} takes params {sorted(takes)}, got {params}")
        lookback = c.lookback(params)
        smoothing: list[float] = list(raw.get("smoothing") or [])
        n_in = len(c.inputs)
    else:
        lookback, inputs, outputs, n_out, smoothing, n_in = _resolve_talib(name, fn, params, raw)
        boolean = False
        scale = (
            "range"
            if _finite_bounds(raw.get("bounds"))
            else "price"
            if all(known.get(i) == "price" for i in inputs)
            else "value"
        )
    if len(inputs) != n_in:
        raise ValueError(f"indicator {name!r}: {fn} takes {n_in} input(s), got {list(inputs)}")
    for i in inputs:
        if i not in known:
            raise ValueError(
                f"indicator {name!r}: input {i!r} is neither a candle column {list(CANDLE_INPUTS)}"
                " nor an output of an entry above it"
            )
    if len(outputs) != n_out:
        raise ValueError(f"indicator {name!r}: {fn} gives {n_out} outputs; name them in `outputs`")
    bounds = raw.get("bounds")
    if bounds is not None and (not isinstance(bounds, list) or len(bounds) != 2):
        raise ValueError(f"indicator {name!r}: bounds must be [low, high] (null for open)")
    scale = raw.get("scale", scale)
    if scale not in ("price", "range", "value") or (
        scale == "range" and not _finite_bounds(bounds)
    ):
        raise ValueError(f"indicator {name!r}: scale must be price, value or range (with bounds)")
    return Indicator(
        name=name,
        fn=fn,
        inputs=inputs,
        params=tuple(params.items()),
        outputs=outputs,
        lookback=int(lookback),
        smoothing=tuple(float(a) for a in smoothing),
        bounds=tuple(bounds) if bounds is not None else None,
        ordered=bool(raw.get("ordered")),
        scale=scale,
        custom=fn in CUSTOM,
        boolean=boolean,
    )


def _finite_bounds(bounds: Any) -> bool:
    return isinstance(bounds, list) and len(bounds) == 2 and None not in bounds


def _resolve_talib(
    name: str, fn: str, params: dict[str, Any], raw: Mapping[str, Any]
) -> tuple[int, tuple[str, ...], tuple[str, ...], int, list[float], int]:
    import talib
    import talib.abstract as ab

    if fn not in talib.get_functions():
        raise ValueError(
            f"indicator {name!r}: {fn!r} is neither a TA-Lib function (e.g. EMA, RSI, BBANDS;"
            f" see talib.get_functions()) nor a custom one {sorted(CUSTOM)}"
        )
    f = ab.Function(fn)
    if unknown := set(params) - set(f.parameters):
        raise ValueError(
            f"indicator {name!r}: {fn} has no parameter(s) {sorted(unknown)};"
            f" it takes {list(f.parameters)}"
        )
    for k, v in params.items():
        want = type(f.parameters[k])
        if isinstance(v, bool) or not isinstance(v, int | float) or (want is int and v != int(v)):
            raise ValueError(f"indicator {name!r}: {fn} {k} must be {want.__name__}, got {v!r}")
        params[k] = want(v)
    f.set_parameters(**params)
    params.update({k: v for k, v in f.parameters.items() if k not in params})
    lookback = f.lookback
    if lookback < 0:
        raise ValueError(f"indicator {name!r}: TA-Lib rejects the parameters {params} of {fn}")
    default_inputs: list[str] = []
    for v in f.info["input_names"].values():
        default_inputs += [v] if isinstance(v, str) else list(v)
    inputs = tuple(raw.get("inputs") or default_inputs)
    n_out = len(f.info["output_names"])
    outputs = tuple(raw.get("outputs") or ([name] if n_out == 1 else []))
    smoothing = list(raw.get("smoothing") or [])
    if not smoothing and fn in _SMOOTHING:
        smoothing = _SMOOTHING[fn](params)
    if not smoothing and not _probe_is_finite(fn, params, len(default_inputs), lookback):
        raise ValueError(
            f"indicator {name!r}: TA-Lib {fn} with {params} depends on all history before it"
            " (recursive or cumulative), so its warm-up cannot be derived; give `smoothing`"
            " (its alpha per stage) or use a finite-window function"
        )
    return lookback, inputs, outputs, n_out, smoothing, len(default_inputs)


def spec_from_dict(data: Mapping[str, Any]) -> IndicatorSpec:
    """Resolve and validate a registry (the parsed YAML); errors name the entry and the fix."""
    tol = float(data.get("tolerance", 1e-6))
    if not 0 < tol < 1:
        raise ValueError(f"tolerance must be between 0 and 1, got {tol}")
    entries = data.get("indicators")
    if not isinstance(entries, Mapping) or not entries:
        raise ValueError("`indicators` must map names to entries, e.g. ema_9: {fn: EMA, ...}")
    known: dict[str, Scale] = {
        c: ("price" if c in PRICE_INPUTS else "value") for c in CANDLE_INPUTS
    }
    warm: dict[str, int] = dict.fromkeys(CANDLE_INPUTS, 0)
    own: dict[str, int] = {}
    resolved = []
    for name, raw in entries.items():
        ind = _resolve(str(name), raw, known, tol)
        base = max((warm[i] for i in ind.inputs), default=0)
        gain = RATIO_GAIN if not ind.custom and ind.fn in _RATIOS else 1.0
        own[ind.name] = ind.lookback + convergence_bars(ind.smoothing, tol / gain)
        need = base + own[ind.name]
        for out in ind.outputs:
            if out in known:
                raise ValueError(f"indicator {name!r}: column {out!r} is already defined")
            known[out] = ind.scale
            warm[out] = need
        resolved.append(ind)
    outputs = {c: warm[c] for ind in resolved for c in ind.outputs}
    return IndicatorSpec(tuple(resolved), tol, outputs, own)


@lru_cache(maxsize=8)
def _load(path: Path, mtime: float) -> IndicatorSpec:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    try:
        return spec_from_dict(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_spec(path: str | Path | None = None) -> IndicatorSpec:
    """The indicator set from `indicators.yaml` (or `path`), resolved and cached."""
    p = Path(path) if path else SPEC_PATH
    return _load(p.resolve(), p.stat().st_mtime)


def warmup_bars(spec: IndicatorSpec | None = None) -> dict[str, int]:
    """Prior bars each indicator column needs, per series (the same on every timeframe)."""
    return dict((spec or load_spec()).warmup)


def indicator_input_window(
    day: dt.date, timeframe: str | Timeframe, spec: IndicatorSpec | None = None
) -> tuple[dt.datetime, dt.datetime]:
    """Candles the partition `day` reads for one timeframe: open_time >= start and
    close_time <= end (never a bar closing after the day, even if it is already stored).

    start is `max_warmup` buckets before the bucket holding 00:00, so every bar the day owns has
    its full warm-up; if the warehouse lacks some of that history the early bars come out NULL.
    """
    spec = spec or load_spec()
    d0, d1 = day_bounds_ms(day)
    start = shift_buckets(timeframe, bucket_start(timeframe, d0), -spec.max_warmup)
    return from_ms(max(start, 0)), from_ms(d1)  # nothing before 1970 (EMA 200 on 1M: 1838)


# -- computation ----------------------------------------------------------------------------


def _first_rows(ctx: Context, spec: IndicatorSpec, exact: bool = True) -> dict[str, Any]:
    """Per column, the first row each value depends on (negative: not in the input, so NULL).

    Kept as a plain count w (row i needs row i - w) while no time-anchored custom function is
    involved, which is every column but VWAP and its dependants; those get arrays, unless
    `exact` is off: then w only says that the first w rows are NULL (enough to mask them).
    """
    import numpy as np

    needs: dict[str, Any] = dict.fromkeys(CANDLE_INPUTS, 0)
    idx = None
    for ind in spec.indicators:
        custom = CUSTOM[ind.fn] if ind.custom else None
        hook = custom.first_row if custom else None
        prefix = custom.null_rows if custom and not exact else None
        ins = [needs[c] for c in ind.inputs]
        if all(isinstance(x, int) for x in ins) and (hook is None or prefix is not None):
            need: Any = max(ins, default=0) + spec.own[ind.name]
            if prefix is not None:
                need = max(need, prefix(ctx, ind.kwargs))
        else:
            if idx is None:
                idx = np.arange(len(ctx.open_ms))
            base = idx.copy()
            for x in ins:
                base = np.minimum(base, idx - x if isinstance(x, int) else x)
            k = spec.own[ind.name]
            need = np.where(idx >= k, base[np.maximum(idx - k, 0)], -1)
            if hook is not None:
                need = np.minimum(need, hook(ctx, ind.kwargs))
        for c in ind.outputs:
            needs[c] = need
    return {c: needs[c] for c in spec.columns}


def _first_row_arrays(ctx: Context, spec: IndicatorSpec) -> dict[str, np.ndarray]:
    import numpy as np

    idx = np.arange(len(ctx.open_ms))
    return {c: idx - v if isinstance(v, int) else v for c, v in _first_rows(ctx, spec).items()}


def _compute_series(
    cols: Mapping[str, np.ndarray],
    ctx: Context,
    spec: IndicatorSpec,
    pool: ThreadPoolExecutor | None = None,
) -> dict[str, np.ndarray]:
    """Every column for one series (one symbol and timeframe, open_time ascending).

    With a `pool`, independent entries run in parallel (TA-Lib and numpy release the GIL). Each
    entry is submitted after the entries it reads, so with the pool's FIFO queue an entry that
    waits on an input waits on one that is already running or done: no deadlock at any size.
    """
    import numpy as np
    import talib

    n = len(ctx.open_ms)
    needs = _first_rows(ctx, spec, exact=False)

    def run(ind: Indicator, args: list[np.ndarray]) -> dict[str, np.ndarray]:
        if n == 0:
            res: Any = tuple(np.empty(0) for _ in ind.outputs)
        elif ind.custom:
            res = CUSTOM[ind.fn].compute(ctx, *args, **ind.kwargs)
        else:
            res = getattr(talib, ind.fn)(*args, **ind.kwargs)
        res = res if isinstance(res, tuple | list) else (res,)
        done = {}
        for col, arr in zip(ind.outputs, res, strict=True):
            a = np.asarray(arr, dtype=np.float64)
            if a.base is not None or not a.flags.writeable or any(a is v for v in args):
                a = a.copy()  # never mask an input or a view of one in place
            need = needs[col]
            if isinstance(need, int):
                a[:need] = np.nan
            else:
                a[need < 0] = np.nan
            done[col] = a
        return done

    values: dict[str, np.ndarray] = dict(cols)
    if pool is None:
        for ind in spec.indicators:
            values.update(run(ind, [values[c] for c in ind.inputs]))
    else:
        pending: dict[str, Future[dict[str, np.ndarray]]] = {}

        def after(ind: Indicator) -> dict[str, np.ndarray]:
            args = [values[c] if c in cols else pending[c].result()[c] for c in ind.inputs]
            return run(ind, args)

        for ind in spec.indicators:
            fut = pool.submit(after, ind)
            pending.update(dict.fromkeys(ind.outputs, fut))
        values.update({c: f.result()[c] for c, f in pending.items()})
    return {c: values[c] for c in spec.columns}


def _utc(frame: pl.DataFrame, *names: str) -> list[pl.Expr]:
    """Time columns as Datetime("us", "UTC") whatever zone DuckDB or a caller gave them."""
    import polars as pl

    out = []
    for c in names:
        tz = getattr(frame.schema[c], "time_zone", None)
        e = (
            pl.col(c).dt.replace_time_zone("UTC")
            if tz is None
            else pl.col(c).dt.convert_time_zone("UTC")
        )
        out.append(e.dt.cast_time_unit("us"))
    return out


@dataclass(frozen=True)
class _Series:
    symbol: str
    timeframe: str
    lo: int
    hi: int


@dataclass(frozen=True)
class _Prepared:
    """Candles sorted into contiguous series, as numpy columns taken out of polars once."""

    df: pl.DataFrame  # symbol, timeframe, open_time, close_time (UTC) and the float inputs
    series: list[_Series]
    arrays: dict[str, np.ndarray]
    open_ms: np.ndarray
    close_ms: np.ndarray

    def inputs(
        self, s: _Series, lo: int | None = None, hi: int | None = None
    ) -> tuple[dict[str, np.ndarray], Context]:
        """Rows [lo, hi) of the frame (default: the series `s`) as inputs and their context."""
        a = s.lo if lo is None else lo
        b = s.hi if hi is None else hi
        cols = {c: v[a:b] for c, v in self.arrays.items()}
        return cols, Context(as_timeframe(s.timeframe), self.open_ms[a:b], self.close_ms[a:b])


def _prepare(candles: pl.DataFrame, spec: IndicatorSpec) -> _Prepared:
    """Candles sorted into contiguous series with UTC times; the series' row ranges."""
    import numpy as np
    import polars as pl

    need = [c for c in CANDLE_INPUTS if any(c in i.inputs for i in spec.indicators)]
    if "close" not in need:
        need.append("close")  # the scale of price-like values in the checks
    if missing := set(ID_COLUMNS + need) - set(candles.columns):
        raise ValueError(f"candles lack column(s) {sorted(missing)}")
    times = _utc(candles, "open_time", "close_time")
    df = candles.select(
        pl.col("symbol").cast(pl.String),
        pl.col("timeframe").cast(pl.String),
        *times,
        *[pl.col(c).cast(pl.Float64) for c in need],
    )

    def runs(df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Whether each row starts a series (symbol and timeframe compared apart: a struct
        of the two costs twice as much), where series start, and open times in ms."""
        ids = df.select(pl.col("symbol").rle_id(), pl.col("timeframe").rle_id())
        sym, tf = ids["symbol"].to_numpy(), ids["timeframe"].to_numpy()
        new = np.ones(len(sym), dtype=bool)
        np.not_equal(sym[1:], sym[:-1], out=new[1:])
        new[1:] |= tf[1:] != tf[:-1]
        return new, np.flatnonzero(new), _epoch_ms(df["open_time"])

    new, starts, t = runs(df)
    keys = list(zip(df["symbol"].gather(starts), df["timeframe"].gather(starts), strict=True))
    if len(set(keys)) != len(keys) or not np.all((np.diff(t) > 0) | new[1:]):
        df = df.sort("symbol", "timeframe", "open_time")
        new, starts, t = runs(df)
        keys = list(zip(df["symbol"].gather(starts), df["timeframe"].gather(starts), strict=True))
        if np.any((np.diff(t) == 0) & ~new[1:]):
            raise ValueError("candles hold duplicate (symbol, timeframe, open_time) rows")
    ends = np.r_[starts[1:], len(t)] if len(starts) else starts
    series = [_Series(*k, int(a), int(b)) for k, a, b in zip(keys, starts, ends, strict=True)]
    arrays = {c: df[c].to_numpy() for c in CANDLE_INPUTS if c in need}
    return _Prepared(df, series, arrays, t, _epoch_ms(df["close_time"]))


def _epoch_ms(times: pl.Series) -> np.ndarray:
    """Datetime("us") as int64 epoch ms (the physical values divided in numpy: 2x faster)."""
    return times.to_physical().to_numpy() // 1000


def default_threads() -> int:
    """Cores this process may run on: the pool size for long series."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def compute_indicators(
    candles: pl.DataFrame, spec: IndicatorSpec | None = None, *, threads: int | None = None
) -> pl.DataFrame:
    """The `indicators` layout for every candle row: symbol, timeframe, open_time, close_time and
    one column per configured output; NULL where the warm-up before a row is not in `candles`.

    Any symbols and timeframes; each series is computed in open_time order, in numpy/TA-Lib with
    no per-bar Python. A long series (>= BIG_SERIES bars) spreads its entries over `threads`
    threads (default: the cores this process may use; 1: none).
    """
    spec = spec or load_spec()
    return _frame(_prepare(candles, spec), None, spec, threads)


def iter_indicators(
    candles: pl.DataFrame, spec: IndicatorSpec | None = None, *, threads: int | None = None
) -> Iterator[pl.DataFrame]:
    """`compute_indicators` one series (symbol, timeframe) at a time, for whole-history passes
    whose output would not fit in memory at once (3 years of 1m is ~0.6 GB of indicators)."""
    spec = spec or load_spec()
    prep = _prepare(candles, spec)
    for s in prep.series:
        yield _frame(prep, [s], spec, threads)


def _frame(
    prep: _Prepared, series: list[_Series] | None, spec: IndicatorSpec, threads: int | None
) -> pl.DataFrame:
    """Compute `series` (contiguous runs of the frame; None: all) into one frame in the same row
    order. A long series keeps its own polars chunk; runs of short ones are joined into one
    (fewer columns to build on the live path, no copy of a year of 1m output in a whole-history
    pass)."""
    import numpy as np
    import polars as pl

    series = prep.series if series is None else series
    threads = default_threads() if threads is None else threads
    big = threads > 1 and any(s.hi - s.lo >= BIG_SERIES for s in series)
    boolean = {c for i in spec.indicators if i.boolean for c in i.outputs}
    frames: list[pl.DataFrame] = []
    pending: list[tuple[_Series, dict[str, np.ndarray]]] = []

    def emit(lo: int, hi: int, values: dict[str, np.ndarray]) -> None:
        cols = []
        for c in spec.columns:
            col = pl.Series(c, values.pop(c), nan_to_null=True)  # popped: freed as we go
            cols.append(col.cast(pl.Boolean) if c in boolean else col)
        frames.append(prep.df.slice(lo, hi - lo).select(ID_COLUMNS).hstack(cols))

    def flush() -> None:
        if pending:
            joined = {c: np.concatenate([r[c] for _, r in pending]) for c in spec.columns}
            emit(pending[0][0].lo, pending[-1][0].hi, joined)
            pending.clear()

    with ThreadPoolExecutor(threads) if big else nullcontext() as pool:
        for s in series:
            long = s.hi - s.lo >= BIG_SERIES
            res = _compute_series(*prep.inputs(s), spec, pool if long else None)
            if long:
                flush()
                emit(s.lo, s.hi, res)
            else:
                pending.append((s, res))
    flush()
    if not frames:
        empty = [pl.Series(c, [], pl.Boolean if c in boolean else pl.Float64) for c in spec.columns]
        return prep.df.clear().select(ID_COLUMNS).hstack(empty)
    return frames[0] if len(frames) == 1 else pl.concat(frames, rechunk=False)


def indicators_for_partition(
    candles_with_history: pl.DataFrame, day: dt.date, spec: IndicatorSpec | None = None
) -> pl.DataFrame:
    """The indicator rows the partition `day` owns (bars whose last minute is in `day`).

    Pass the candles read with `indicator_input_window` for each timeframe. Bars closing after
    the day are dropped first, so a later bar stored by a later partition can never leak in.
    """
    import polars as pl

    from pipeline.resample import owned_by

    _, d1 = day_bounds_ms(day)
    hist = candles_with_history.filter(pl.col("close_time") <= from_ms(d1))
    return compute_indicators(hist, spec).filter(owned_by(day))


# -- checks on indicators -------------------------------------------------------------------


def _value_columns(spec: IndicatorSpec, frame: pl.DataFrame) -> list[str]:
    return [c for c in spec.columns if c in frame.columns]


def check_ranges(indicators: pl.DataFrame, spec: IndicatorSpec | None = None) -> CheckOutcome:
    """Configured bounds (RSI, Stochastic, ADX in [0, 100]; ATR >= 0 ...), ordered outputs
    (Bollinger upper >= middle >= lower), and no NaN or infinity stored (missing is NULL)."""
    import polars as pl

    spec = spec or load_spec()
    problems: dict[str, int] = {}
    examples: list[str] = []

    def count(label: str, bad: pl.Expr) -> None:
        rows = indicators.filter(bad)
        if rows.height:
            problems[label] = rows.height
            examples.extend(
                f"{label}: {s} {tf} {t.isoformat()}"
                for s, tf, t in rows.head(5).select("symbol", "timeframe", "open_time").iter_rows()
            )

    for ind in spec.indicators:
        cols = [c for c in ind.outputs if c in indicators.columns]
        for c in cols:
            if not ind.boolean:
                count(f"{c} NaN/inf", ~pl.col(c).is_finite())
            lo, hi = ind.bounds or (None, None)
            if lo is not None:
                count(f"{c} < {lo}", pl.col(c).cast(pl.Float64) < lo)
            if hi is not None:
                count(f"{c} > {hi}", pl.col(c).cast(pl.Float64) > hi)
        if ind.ordered:
            for a, b in itertools.pairwise(cols):
                count(f"{a} < {b}", pl.col(a) < pl.col(b))
    if not problems:
        return CheckOutcome(True, f"indicator ranges hold on {indicators.height} rows")
    total = sum(problems.values())
    return CheckOutcome(
        False,
        f"{total} out-of-range value(s): {problems}",
        {"violations": problems, "examples": examples[:MAX_LISTED]},
    )


def check_nulls(
    candles: pl.DataFrame, indicators: pl.DataFrame, spec: IndicatorSpec | None = None
) -> CheckOutcome:
    """NULL exactly where a value is not due: a value wherever its warm-up was in `candles`
    (no NaN where a value is due) and none where it was not (no silently different number).

    `candles` are the candles the indicators were computed from (with their history).
    """
    import numpy as np

    spec = spec or load_spec()
    prep = _prepare(candles, spec)
    df = prep.df
    keyed = indicators.with_columns(_utc(indicators, "open_time"))
    missing: dict[str, int] = {}
    unexpected: dict[str, int] = {}
    examples: list[str] = []
    orphans = keyed.join(
        df.select("symbol", "timeframe", "open_time"),
        how="anti",
        on=["symbol", "timeframe", "open_time"],
    ).height
    by_series = keyed.partition_by("symbol", "timeframe", as_dict=True)
    for s in prep.series:
        rows = by_series.get((s.symbol, s.timeframe))
        if rows is None:
            continue
        _, ctx = prep.inputs(s)
        pos = np.searchsorted(ctx.open_ms, rows["open_time"].dt.epoch("ms").to_numpy())
        pos = np.clip(pos, 0, len(ctx.open_ms) - 1)
        first = _first_row_arrays(ctx, spec)
        for c in _value_columns(spec, rows):
            due = first[c][pos] >= 0
            null = rows[c].is_null().to_numpy()
            for label, bad, tally in (
                ("NULL where due", due & null, missing),
                ("value before warm-up", ~due & ~null, unexpected),
            ):
                if bad.any():
                    tally[c] = tally.get(c, 0) + int(bad.sum())
                    t = from_ms(int(ctx.open_ms[pos[np.argmax(bad)]]))
                    examples.append(f"{c} {label}: {s.symbol} {s.timeframe} {t.isoformat()}")
    if not missing and not unexpected and not orphans:
        return CheckOutcome(True, f"values present exactly where due on {indicators.height} rows")
    return CheckOutcome(
        False,
        f"{sum(missing.values())} NULL where due, {sum(unexpected.values())} value(s) without"
        f" warm-up, {orphans} row(s) without a candle",
        {
            "null_where_due": missing,
            "value_before_warmup": unexpected,
            "orphans": orphans,
            "examples": examples[:MAX_LISTED],
        },
    )


def _differs(
    spec: IndicatorSpec,
    got: Mapping[str, float],
    want: Mapping[str, float],
    close: float,
    magnitude: Mapping[str, float],
) -> list[str]:
    """Columns where two values of one bar differ by more than the tolerance (NULL vs value too)."""
    bad = []
    for ind in spec.indicators:
        for c in ind.outputs:
            if c not in want:
                continue
            a, b = got.get(c), want[c]
            a = None if a is None or a != a else float(a)
            b = None if b is None or b != b else float(b)
            if a is None or b is None:
                if (a is None) != (b is None):
                    bad.append(c)
                continue
            if ind.boolean:
                scale = 0.0
            elif ind.scale == "price":
                scale = abs(close)
            elif ind.scale == "range" and ind.bounds:
                scale = float(ind.bounds[1]) - float(ind.bounds[0])  # type: ignore[arg-type]
            else:
                scale = max(magnitude.get(c, 0.0), 1e-300)
            if abs(a - b) > spec.tolerance * scale:
                bad.append(c)
    return bad


def _sample(n: int, lo: int, k: int, seed: int) -> list[int]:
    """Up to k row positions in [lo, n): the newest plus a seeded random spread."""
    import numpy as np

    if n <= lo:
        return []
    pick = {n - 1} | set(np.random.default_rng(seed).integers(lo, n, size=max(k - 1, 0)).tolist())
    return sorted(pick)


def _magnitudes(rows: pl.DataFrame, spec: IndicatorSpec) -> dict[str, float]:
    import polars as pl

    cols = [c for c in _value_columns(spec, rows) if rows.schema[c] == pl.Float64]
    if not cols or rows.is_empty():
        return {}
    means = rows.select(pl.col(c).abs().mean() for c in cols).row(0, named=True)
    return {c: float(v or 0.0) for c, v in means.items()}


def _iter_stored(
    series: list[_Series], stored: pl.DataFrame
) -> Iterator[tuple[_Series, pl.DataFrame]]:
    by_series = stored.with_columns(_utc(stored, "open_time")).partition_by(
        "symbol", "timeframe", as_dict=True
    )
    for s in series:
        rows = by_series.get((s.symbol, s.timeframe))
        if rows is not None and rows.height:
            yield s, rows.sort("open_time")


def check_lookahead(
    candles: pl.DataFrame,
    indicators: pl.DataFrame,
    spec: IndicatorSpec | None = None,
    *,
    per_series: int = 5,
    seed: int = 0,
) -> CheckOutcome:
    """For a sample of stored bars per series (always the newest), recompute from the candles
    truncated at that bar's close: the values must equal the stored ones (within the
    tolerance), so no stored value used a later bar. The truncated input starts at the earliest
    row any of the bar's values depends on, which keeps each recomputation small.

    `candles` are those the indicators were computed from (with their warm-up history).
    """
    import numpy as np

    spec = spec or load_spec()
    prep = _prepare(candles, spec)
    failures: list[str] = []
    checked = 0
    for s, rows in _iter_stored(prep.series, indicators):
        cols_all, ctx_all = prep.inputs(s)
        first = _first_row_arrays(ctx_all, spec)
        mags = _magnitudes(rows, spec)
        stored_t = rows["open_time"].dt.epoch("ms").to_numpy()
        for j in _sample(rows.height, 0, per_series, seed):
            i = int(np.searchsorted(ctx_all.open_ms, stored_t[j]))
            if i >= len(ctx_all.open_ms) or ctx_all.open_ms[i] != stored_t[j]:
                failures.append(f"{s.symbol} {s.timeframe} {from_ms(stored_t[j])}: no candle")
                continue
            # The earliest row any column needs (all of them when some value is not due).
            lo = max(0, min(int(f[i]) for f in first.values()))
            cols, ctx = prep.inputs(s, lo=s.lo + lo, hi=s.lo + i + 1)
            got = {c: v[-1] for c, v in _compute_series(cols, ctx, spec).items()}
            want = rows.row(j, named=True)
            bad = _differs(spec, got, want, float(cols_all["close"][i]), mags)
            checked += 1
            if bad:
                failures.append(
                    f"{s.symbol} {s.timeframe} {from_ms(stored_t[j]).isoformat()}: {bad}"
                )
    if not failures:
        return CheckOutcome(True, f"{checked} sampled bars recomputed without their future: equal")
    return CheckOutcome(
        False,
        f"{len(failures)} of {checked} sampled bars differ when their"
        " future is cut off (lookahead)",
        {"failures": len(failures), "examples": failures[:MAX_LISTED]},
    )


def check_warmup(
    candles: pl.DataFrame,
    spec: IndicatorSpec | None = None,
    *,
    per_series: int = 3,
    seed: int = 0,
) -> CheckOutcome:
    """Values computed from only their derived warm-up equal those computed from all of
    `candles` within the tolerance, for a sample of bars per series and every column."""
    spec = spec or load_spec()
    full = compute_indicators(candles, spec)
    prep = _prepare(candles, spec)
    failures: list[str] = []
    checked = 0
    for s, rows in _iter_stored(prep.series, full):
        cols_all, ctx_all = prep.inputs(s)
        first = _first_row_arrays(ctx_all, spec)
        mags = _magnitudes(rows, spec)
        for i in _sample(rows.height, min(spec.warmup.values(), default=0), per_series, seed):
            want_all = rows.row(i, named=True)
            by_start: dict[int, list[str]] = {}
            for c, f in first.items():
                if f[i] >= 0:  # due in the full history: recompute from exactly what it needs
                    by_start.setdefault(int(f[i]), []).append(c)
            for start, cols in by_start.items():
                sub, ctx = prep.inputs(s, lo=s.lo + start, hi=s.lo + i + 1)
                res = _compute_series(sub, ctx, spec)
                got = {c: res[c][-1] for c in cols}
                want = {c: want_all[c] for c in cols}
                bad = _differs(spec, got, want, float(cols_all["close"][i]), mags)
                checked += 1
                if bad:
                    failures.append(f"{s.symbol} {s.timeframe} row {i} from row {start}: {bad}")
    if not failures:
        what = (
            "nothing to compare (history shorter than the warm-up)"
            if not checked
            else (f"{checked} sampled recomputations from the derived warm-up match full history")
        )
        return CheckOutcome(True, f"{what} within {spec.tolerance:g}", {"checked": checked})
    return CheckOutcome(
        False,
        f"{len(failures)} of {checked} sampled recomputations from the derived warm-up differ"
        f" from full history beyond {spec.tolerance:g}",
        {"failures": len(failures), "examples": failures[:MAX_LISTED]},
    )


def check_indicators(
    candles: pl.DataFrame, indicators: pl.DataFrame, spec: IndicatorSpec | None = None
) -> dict[str, CheckOutcome]:
    """The per-partition checks by name (the warm-up check wants long history: run it apart)."""
    spec = spec or load_spec()
    return {
        "ranges": check_ranges(indicators, spec),
        "nulls_where_not_due": check_nulls(candles, indicators, spec),
        "no_lookahead": check_lookahead(candles, indicators, spec),
    }

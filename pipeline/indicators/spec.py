"""The indicator registry (`pipeline/indicators.yaml`) resolved into an `IndicatorSpec`, and the
warm-up each entry needs, derived from the entries.

The set lives in `indicators.yaml`: one entry per indicator naming a TA-Lib function (or a custom
one, `pipeline.indicators.custom`), its params, inputs and output columns. Adding an indicator
is one entry there.

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
(`check_lookahead`). Bars count from the start of the input or from the last break in it: a
bucket holding a minute that is neither stored nor confirmed absent by the exchange, or such
minutes between two bars (`pipeline.indicators.history`).
"""

from __future__ import annotations

import datetime as dt
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.candles.timeframes import (
    Timeframe,
    bucket_start,
    day_bounds_ms,
    from_ms,
    shift_buckets,
)
from pipeline.indicators.custom import CUSTOM, Scale

if TYPE_CHECKING:
    pass

SPEC_PATH = Path(__file__).parent.parent / "indicators.yaml"
CANDLE_INPUTS = ("open", "high", "low", "close", "volume", "turnover")
PRICE_INPUTS = ("open", "high", "low", "close")


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

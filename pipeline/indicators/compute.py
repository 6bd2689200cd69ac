"""Indicators computed per series (symbol, timeframe) in numpy/TA-Lib: the whole history, one
series at a time, or one daily partition with its warm-up; NULL wherever a value would depend
on history the computation was not given, or on a bucket with unknown minutes
(`pipeline.indicators.history`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.candles.timeframes import as_timeframe, day_bounds_ms, from_ms, owned_by
from pipeline.indicators.custom import CUSTOM, Context, talib_fn
from pipeline.indicators.history import JOINED, WHOLE, history_flags, segments, utc_times
from pipeline.indicators.spec import CANDLE_INPUTS, Indicator, IndicatorSpec, load_spec

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    import numpy as np
    import polars as pl

ID_COLUMNS = ["symbol", "timeframe", "open_time", "close_time"]
# A series this long keeps its own output chunk rather than being copied into a joint one, and
# spreads its entries over threads.
BIG_SERIES = 20_000


def _first_rows(ctx: Context, spec: IndicatorSpec, exact: bool = True) -> dict[str, Any]:
    """Per column, the first row each value depends on (negative: not in the input, so NULL).

    Kept as a plain count w (row i needs row i - w) while no time-anchored custom function is
    involved, which is every column but VWAP and its dependants; those get arrays, unless
    `exact` is off: then w only says that the first w rows are NULL (enough to mask them).
    Counts only depend on the spec and the custom functions' NULL prefixes: those are
    remembered (every series of a backfill asks, most with the same few prefixes).
    """
    key = None
    if not exact:
        prefixes = tuple(
            CUSTOM[i.fn].null_rows(ctx, i.kwargs)  # type: ignore[misc]
            for i in spec.indicators
            if i.custom and CUSTOM[i.fn].null_rows is not None
        )
        key = (id(spec), prefixes)
        hit = _COUNTS.get(key)
        if hit is not None and hit[0] is spec:
            return hit[1]
    found = _first_rows_of(ctx, spec, exact)
    if key is not None and all(isinstance(v, int) for v in found.values()):
        if len(_COUNTS) >= 4096:
            _COUNTS.clear()
        _COUNTS[key] = (spec, found)
    return found


# (id(spec), NULL prefixes) -> (spec, its counts): see _first_rows.
_COUNTS: dict[tuple[int, tuple[int, ...]], tuple[IndicatorSpec, dict[str, Any]]] = {}


def _first_rows_of(ctx: Context, spec: IndicatorSpec, exact: bool) -> dict[str, Any]:
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


def first_row_arrays(ctx: Context, spec: IndicatorSpec) -> dict[str, np.ndarray]:
    """Per column, the first row each value depends on; negative where it is not due (its
    warm-up reaches before the input or across a break in the history)."""
    import numpy as np

    segs = segments(ctx.whole, ctx.joined)
    if segs is not None:
        out = {c: np.full(len(ctx.open_ms), -1, dtype=np.int64) for c in spec.columns}
        for a, b in segs:
            for c, f in first_row_arrays(ctx.rows(a, b), spec).items():
                out[c][a:b] = np.where(f >= 0, f + a, -1)
        return out
    idx = np.arange(len(ctx.open_ms))
    return {c: idx - v if isinstance(v, int) else v for c, v in _first_rows(ctx, spec).items()}


def compute_series(
    cols: Mapping[str, np.ndarray],
    ctx: Context,
    spec: IndicatorSpec,
    pool: ThreadPoolExecutor | None = None,
) -> dict[str, np.ndarray]:
    """Every column for one series (one symbol and timeframe, open_time ascending), in the
    segments `ctx` marks (pipeline.indicators.history): NULL wherever a value's warm-up would
    reach a bucket with unknown minutes or across unknown minutes between bars.

    With a `pool`, independent entries run in parallel (TA-Lib and numpy release the GIL). Each
    entry is submitted after the entries it reads, so with the pool's FIFO queue an entry that
    waits on an input waits on one that is already running or done: no deadlock at any size.
    """
    import numpy as np

    n = len(ctx.open_ms)
    segs = segments(ctx.whole, ctx.joined)
    if segs is not None:  # each segment on its own, as if history began there; void rows NULL
        out = {c: np.full(n, np.nan) for c in spec.columns}
        for a, b in segs:
            part = {k: v[a:b] for k, v in cols.items()}
            for c, v in compute_series(part, ctx.rows(a, b), spec, pool).items():
                out[c][a:b] = v
        return out
    needs = _first_rows(ctx, spec, exact=False)

    def run(ind: Indicator, args: list[np.ndarray]) -> dict[str, np.ndarray]:
        if n == 0:
            res: Any = tuple(np.empty(0) for _ in ind.outputs)
        elif ind.custom:
            res = CUSTOM[ind.fn].compute(ctx, *args, **ind.kwargs)
        else:
            res = talib_fn(ind.fn)(*args, **ind.kwargs)
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


@dataclass(frozen=True)
class SeriesRange:
    symbol: str
    timeframe: str
    lo: int
    hi: int


@dataclass(frozen=True)
class Prepared:
    """Candles sorted into contiguous series, as numpy columns taken out of polars once."""

    df: pl.DataFrame  # symbol, timeframe, open_time, close_time (UTC) and the float inputs
    series: list[SeriesRange]
    arrays: dict[str, np.ndarray]
    open_ms: np.ndarray
    close_ms: np.ndarray
    whole: np.ndarray  # the bucket counts as history (pipeline.indicators.history)
    joined: np.ndarray  # no unknown minutes between the previous bar of its series and it

    def inputs(
        self, s: SeriesRange, lo: int | None = None, hi: int | None = None
    ) -> tuple[dict[str, np.ndarray], Context]:
        """Rows [lo, hi) of the frame (default: the series `s`) as inputs and their context."""
        a = s.lo if lo is None else lo
        b = s.hi if hi is None else hi
        cols = {c: v[a:b] for c, v in self.arrays.items()}
        ctx = Context(
            as_timeframe(s.timeframe),
            self.open_ms[a:b],
            self.close_ms[a:b],
            self.whole[a:b],
            self.joined[a:b],
        )
        return cols, ctx


def prepare(candles: pl.DataFrame, spec: IndicatorSpec) -> Prepared:
    """Candles sorted into contiguous series with UTC times; the series' row ranges.

    Which rows count as history comes from the WHOLE / JOINED columns when `candles` carries
    them (`mark_history` with the exchange's confirmed gaps, as the Dagster layer does), else
    from `history_flags` on the sorted series: every minute the candles lack is then unknown.
    """
    import numpy as np
    import polars as pl

    need = [c for c in CANDLE_INPUTS if any(c in i.inputs for i in spec.indicators)]
    if "close" not in need:
        need.append("close")  # the scale of price-like values in the checks
    if missing := set(ID_COLUMNS + need) - set(candles.columns):
        raise ValueError(f"candles lack column(s) {sorted(missing)}")
    marked = {WHOLE, JOINED} <= set(candles.columns)
    times = utc_times(candles, "open_time", "close_time")
    df = candles.select(
        pl.col("symbol").cast(pl.String),
        pl.col("timeframe").cast(pl.String),
        *times,
        *[pl.col(c).cast(pl.Float64) for c in need],
        *([pl.col(WHOLE, JOINED).cast(pl.Boolean).fill_null(False)] if marked else []),
        *([pl.col("n_1m")] if "n_1m" in candles.columns and not marked else []),
    )

    def runs(df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, list[Any], np.ndarray]:
        """Whether each row starts a series (symbol and timeframe compared apart: a struct
        of the two costs twice as much), where series start, their keys, open times in ms."""
        ids = df.select(pl.col("symbol").rle_id(), pl.col("timeframe").rle_id())
        sym, tf = ids["symbol"].to_numpy(), ids["timeframe"].to_numpy()
        new = np.ones(len(sym), dtype=bool)
        np.not_equal(sym[1:], sym[:-1], out=new[1:])
        new[1:] |= tf[1:] != tf[:-1]
        starts = np.flatnonzero(new)
        keys = list(zip(df["symbol"].gather(starts), df["timeframe"].gather(starts), strict=True))
        return new, starts, keys, _epoch_ms(df["open_time"])

    new, starts, keys, t = runs(df)
    if len(set(keys)) != len(keys) or not np.all((np.diff(t) > 0) | new[1:]):
        df = df.sort("symbol", "timeframe", "open_time")
        new, starts, keys, t = runs(df)
        if np.any((np.diff(t) == 0) & ~new[1:]):
            raise ValueError("candles hold duplicate (symbol, timeframe, open_time) rows")
    ends = np.r_[starts[1:], len(t)] if len(starts) else starts
    series = [SeriesRange(*k, int(a), int(b)) for k, a, b in zip(keys, starts, ends, strict=True)]
    arrays = {c: df[c].to_numpy() for c in CANDLE_INPUTS if c in need}
    close_ms = _epoch_ms(df["close_time"])
    if marked:
        flags = (df[WHOLE].to_numpy(), df[JOINED].to_numpy())
    else:  # no gap record: every minute the candles lack is unknown
        n_1m = df["n_1m"].to_numpy() if "n_1m" in df.columns else None
        flags = history_flags(new, t, close_ms, n_1m)
    return Prepared(df, series, arrays, t, close_ms, *flags)


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
    return _frame(prepare(candles, spec), None, spec, threads)


def iter_indicators(
    candles: pl.DataFrame, spec: IndicatorSpec | None = None, *, threads: int | None = None
) -> Iterator[pl.DataFrame]:
    """`compute_indicators` one series (symbol, timeframe) at a time, for whole-history passes
    whose output would not fit in memory at once (3 years of 1m is ~0.6 GB of indicators)."""
    spec = spec or load_spec()
    prep = prepare(candles, spec)
    for s in prep.series:
        yield _frame(prep, [s], spec, threads)


def _frame(
    prep: Prepared, series: list[SeriesRange] | None, spec: IndicatorSpec, threads: int | None
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
    pending: list[tuple[SeriesRange, dict[str, np.ndarray]]] = []

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

    if big:
        from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(threads) if big else nullcontext() as pool:
        for s in series:
            long = s.hi - s.lo >= BIG_SERIES
            res = compute_series(*prep.inputs(s), spec, pool if long else None)
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

    _, d1 = day_bounds_ms(day)
    hist = candles_with_history.filter(pl.col("close_time") <= from_ms(d1))
    return compute_indicators(hist, spec).filter(owned_by(day))

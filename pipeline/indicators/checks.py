"""Checks on computed indicators: values in range, NULL exactly where a value is not due, no
lookahead (sampled bars recomputed from history cut at their close) and warm-up vs full history."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from pipeline.candles.timeframes import from_ms
from pipeline.indicators.compute import (
    Prepared,
    SeriesRange,
    compute_indicators,
    compute_series,
    first_row_arrays,
    prepare,
)
from pipeline.indicators.custom import Context
from pipeline.indicators.history import utc_times
from pipeline.indicators.spec import IndicatorSpec, load_spec
from pipeline.quality.checks import FLOAT_RTOL, MAX_LISTED, CheckOutcome

if TYPE_CHECKING:
    import numpy as np
    import polars as pl


def _value_columns(spec: IndicatorSpec, frame: pl.DataFrame) -> list[str]:
    return [c for c in spec.columns if c in frame.columns]


def check_ranges(indicators: pl.DataFrame, spec: IndicatorSpec | None = None) -> CheckOutcome:
    """Configured bounds (RSI, Stochastic, ADX in [0, 100]; ATR >= 0 ...), ordered outputs
    (Bollinger upper >= middle >= lower), and no NaN or infinity stored (missing is NULL).

    Bounds and orderings allow rounding noise of FLOAT_RTOL (pipeline.quality.checks) relative to
    their scale: a bound's magnitude (100 for [0, 100]), for an open bound such as ATR >= 0 the
    largest magnitude of that column in the series (symbol, timeframe), for an ordering the
    larger of the two values. 100 + 4.7e-13 passes; 100.001 fails.
    """
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
        lo, hi = ind.bounds or (None, None)
        finite = [abs(float(b)) for b in (lo, hi) if b is not None]
        for c in cols:
            if not ind.boolean:
                count(f"{c} NaN/inf", ~pl.col(c).is_finite())
            v = pl.col(c).cast(pl.Float64)
            own = v.abs().max().over("symbol", "timeframe")
            slack = FLOAT_RTOL * (pl.max_horizontal(own, max(finite)) if finite else own)
            if lo is not None:
                count(f"{c} < {lo}", v < float(lo) - slack)
            if hi is not None:
                count(f"{c} > {hi}", v > float(hi) + slack)
        if ind.ordered:
            for a, b in itertools.pairwise(cols):
                scale = pl.max_horizontal(pl.col(a).abs(), pl.col(b).abs())
                count(f"{a} < {b}", pl.col(a) < pl.col(b) - FLOAT_RTOL * scale)
    if not problems:
        return CheckOutcome(
            True,
            f"indicator ranges hold on {indicators.height} rows"
            f" (rounding noise up to {FLOAT_RTOL:g} of the scale allowed)",
        )
    total = sum(problems.values())
    return CheckOutcome(
        False,
        f"{total} out-of-range value(s) beyond {FLOAT_RTOL:g} of the scale: {problems}",
        {"violations": problems, "examples": examples[:MAX_LISTED], "tolerance": FLOAT_RTOL},
    )


class _Firsts:
    """One `prepare`d candle frame and, per series, the first row each value depends on
    (`first_row_arrays`), computed once for all the checks of the same rows."""

    def __init__(self, prep: Prepared, spec: IndicatorSpec) -> None:
        self.prep, self.spec = prep, spec
        self._of: dict[SeriesRange, dict[str, np.ndarray]] = {}

    def of(self, s: SeriesRange) -> dict[str, np.ndarray]:
        if s not in self._of:
            self._of[s] = first_row_arrays(self.prep.inputs(s)[1], self.spec)
        return self._of[s]


def _all_due_exactly(firsts: _Firsts, keyed: pl.DataFrame) -> bool:
    """Whether every row of `keyed` (indicators, UTC open_time) has its candle and a value
    exactly where due: the whole frame at once, column by column. False sends `check_nulls`
    through its series-by-series pass, which counts and names what is wrong."""
    import numpy as np

    prep = firsts.prep
    key = ["symbol", "timeframe", "open_time"]
    at = keyed.select(key).join(
        prep.df.select(key).with_row_index("_row"), on=key, how="left", maintain_order="left"
    )["_row"]
    if at.null_count():
        return False  # a row without a candle: an orphan
    row = at.to_numpy().astype(np.int64)
    for c in _value_columns(firsts.spec, keyed):
        due = np.empty(prep.df.height, dtype=bool)
        for s in prep.series:
            due[s.lo : s.hi] = firsts.of(s)[c] >= 0
        if not np.array_equal(due[row], keyed[c].is_not_null().to_numpy()):
            return False
    return True


def check_nulls(
    candles: pl.DataFrame,
    indicators: pl.DataFrame,
    spec: IndicatorSpec | None = None,
    *,
    firsts: _Firsts | None = None,
) -> CheckOutcome:
    """NULL exactly where a value is not due: a value wherever its warm-up was in `candles`
    (no NaN where a value is due) and none where it was not (no silently different number).

    `candles` are the candles the indicators were computed from (with their history);
    `firsts`: their `prepare` and first rows, shared with the other checks of the same rows.
    """
    import numpy as np

    spec = spec or load_spec()
    firsts = firsts or _Firsts(prepare(candles, spec), spec)
    prep, df = firsts.prep, firsts.prep.df
    keyed = indicators.with_columns(utc_times(indicators, "open_time"))
    if _all_due_exactly(firsts, keyed):
        return CheckOutcome(True, f"values present exactly where due on {indicators.height} rows")
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
        first = firsts.of(s)
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
    stored: _Stored,
) -> list[str]:
    """Columns where two values of one bar differ by more than the tolerance (NULL vs value too);
    the stored series' magnitudes (the scale of plain values) are computed only for a
    difference."""
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
            if a == b:
                continue  # within any tolerance, whatever the scale
            if ind.boolean:
                scale = 0.0
            elif ind.scale == "price":
                scale = abs(close)
            elif ind.scale == "range" and ind.bounds:
                scale = float(ind.bounds[1]) - float(ind.bounds[0])  # type: ignore[arg-type]
            else:
                scale = max(stored.magnitudes.get(c, 0.0), 1e-300)
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


@dataclass(frozen=True)
class _Stored:
    """One series' stored rows beside what recomputing them needs."""

    series: SeriesRange
    rows: pl.DataFrame  # open_time ascending
    close: np.ndarray  # the series' closes (the scale of price-like values)
    ctx: Context
    first: dict[str, np.ndarray]  # per column, the first row each value depends on
    spec: IndicatorSpec

    @cached_property
    def magnitudes(self) -> dict[str, float]:
        """Per column, the rows' mean magnitude: only needed where two values differ."""
        return _magnitudes(self.rows, self.spec)


def _iter_stored(firsts: _Firsts, stored: pl.DataFrame) -> Iterator[_Stored]:
    prep = firsts.prep
    # sorted once, not series by series (partition_by keeps the order within each)
    by_series = (
        stored.with_columns(utc_times(stored, "open_time"))
        .sort("symbol", "timeframe", "open_time")
        .partition_by("symbol", "timeframe", as_dict=True)
    )
    for s in prep.series:
        rows = by_series.get((s.symbol, s.timeframe))
        if rows is not None and rows.height:
            cols, ctx = prep.inputs(s)
            yield _Stored(s, rows, cols["close"], ctx, firsts.of(s), firsts.spec)


def check_lookahead(
    candles: pl.DataFrame,
    indicators: pl.DataFrame,
    spec: IndicatorSpec | None = None,
    *,
    per_series: int = 5,
    seed: int = 0,
    firsts: _Firsts | None = None,
) -> CheckOutcome:
    """For a sample of stored bars per series (always the newest), recompute from the candles
    truncated at that bar's close: the values must equal the stored ones (within the
    tolerance), so no stored value used a later bar. The truncated input starts at the earliest
    row any of the bar's values depends on, which keeps each recomputation small.

    `candles` are those the indicators were computed from (with their warm-up history).
    """
    import numpy as np

    spec = spec or load_spec()
    firsts = firsts or _Firsts(prepare(candles, spec), spec)
    prep = firsts.prep
    failures: list[str] = []
    checked = 0
    for st in _iter_stored(firsts, indicators):
        s, rows, ctx_all, first = st.series, st.rows, st.ctx, st.first
        stored_t = rows["open_time"].dt.epoch("ms").to_numpy()
        for j in _sample(rows.height, 0, per_series, seed):
            i = int(np.searchsorted(ctx_all.open_ms, stored_t[j]))
            if i >= len(ctx_all.open_ms) or ctx_all.open_ms[i] != stored_t[j]:
                failures.append(f"{s.symbol} {s.timeframe} {from_ms(stored_t[j])}: no candle")
                continue
            # The earliest row any column needs (all of them when some value is not due).
            lo = max(0, min(int(f[i]) for f in first.values()))
            cols, ctx = prep.inputs(s, lo=s.lo + lo, hi=s.lo + i + 1)
            got = {c: v[-1] for c, v in compute_series(cols, ctx, spec).items()}
            want = rows.row(j, named=True)
            bad = _differs(spec, got, want, float(st.close[i]), st)
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
    firsts = _Firsts(prepare(candles, spec), spec)
    prep = firsts.prep
    failures: list[str] = []
    checked = 0
    for st in _iter_stored(firsts, full):
        s, rows, first = st.series, st.rows, st.first
        for i in _sample(rows.height, min(spec.warmup.values(), default=0), per_series, seed):
            want_all = rows.row(i, named=True)
            by_start: dict[int, list[str]] = {}
            for c, f in first.items():
                if f[i] >= 0:  # due in the full history: recompute from exactly what it needs
                    by_start.setdefault(int(f[i]), []).append(c)
            for start, cols in by_start.items():
                sub, ctx = prep.inputs(s, lo=s.lo + start, hi=s.lo + i + 1)
                res = compute_series(sub, ctx, spec)
                got = {c: res[c][-1] for c in cols}
                want = {c: want_all[c] for c in cols}
                bad = _differs(spec, got, want, float(st.close[i]), st)
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
    firsts = _Firsts(prepare(candles, spec), spec)
    return {
        "ranges": check_ranges(indicators, spec),
        "nulls_where_not_due": check_nulls(candles, indicators, spec, firsts=firsts),
        "no_lookahead": check_lookahead(candles, indicators, spec, firsts=firsts),
    }

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

A signal belongs to the daily partition of its bar (close_time in (D, D+1], like candles);
it is stamped with the bar's close_time and priced at the bar's close.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.candles.timeframes import (
    MINUTE_MS,
    Timeframe,
    as_timeframe,
    bucket_start,
    day_bounds_ms,
    first_owned_start_ms,
    from_ms,
    owner_day_index,
    shift_buckets,
    to_ms,
)
from pipeline.quality.checks import FLOAT_RTOL, MAX_LISTED, CheckOutcome

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from pipeline.strategy.personality import Personality

SIGNAL_COLUMNS = [
    "symbol",
    "personality",
    "timeframe",
    "close_time",
    "open_time",
    "action",
    "confidence",
    "price",
    "reasons",
    "snapshot",
    "quality",
]
KEYS = ["symbol", "personality", "timeframe", "close_time"]
OK = "ok"


def signals_schema() -> dict[str, Any]:
    import polars as pl

    ts = pl.Datetime("us", "UTC")
    return {
        "symbol": pl.String,
        "personality": pl.String,
        "timeframe": pl.String,
        "close_time": ts,
        "open_time": ts,
        "action": pl.String,
        "confidence": pl.Float64,
        "price": pl.Float64,
        "reasons": pl.List(pl.String),
        "snapshot": pl.String,
        "quality": pl.String,
    }


def _personality(p: Personality | str) -> Personality:
    from pipeline.strategy.personality import load_personality

    return load_personality(p)


# -- inputs -------------------------------------------------------------------------------------

Frames = Mapping[str, "pl.DataFrame"]


def join_frames(
    candles: pl.DataFrame, indicators: pl.DataFrame, timeframes: Sequence[str] | None = None
) -> dict[str, pl.DataFrame]:
    """Candles joined with their indicators, one frame per timeframe (the `frames` argument)."""
    import polars as pl

    ind = indicators.drop([c for c in ("close_time",) if c in indicators.columns])
    tfs = timeframes or candles["timeframe"].unique(maintain_order=True).to_list()
    out = {}
    for tf in tfs:
        c = candles.filter(pl.col("timeframe") == tf)
        i = ind.filter(pl.col("timeframe") == tf)
        out[tf] = c.join(i, on=["symbol", "timeframe", "open_time"], how="left").sort(
            "symbol", "open_time"
        )
    return out


def _split(frames: Frames | pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Accept {timeframe: frame} or one frame with a timeframe column."""
    import polars as pl

    if isinstance(frames, pl.DataFrame):
        return {str(k[0]): v for k, v in frames.partition_by("timeframe", as_dict=True).items()}
    return dict(frames)


def _utc(frame: pl.DataFrame, name: str) -> pl.Expr:
    import polars as pl

    tz = getattr(frame.schema[name], "time_zone", None)
    e = pl.col(name)
    e = e.dt.replace_time_zone("UTC") if tz is None else e.dt.convert_time_zone("UTC")
    return e.dt.cast_time_unit("us")


def _needed(p: Personality) -> dict[str, list[str]]:
    """Value columns per timeframe the personality reads (the signal timeframe: also close)."""
    need: dict[str, list[str]] = {tf: [] for tf in p.timeframes}
    for tf, col in p.refs:
        key = tf or p.signal_tf
        if col not in need[key]:
            need[key].append(col)
    return need


@dataclass
class _Series:
    """One symbol's bars of one timeframe as numpy: open times (ms), complete, values."""

    open_ms: np.ndarray
    complete: np.ndarray
    values: dict[str, np.ndarray]


def _series(frames: Frames, p: Personality) -> dict[str, dict[str, _Series]]:
    """Per symbol and timeframe, the columns the personality needs (sorted, Float64, NaN for
    NULL)."""
    import numpy as np
    import polars as pl

    need = _needed(p)
    out: dict[str, dict[str, _Series]] = {}
    for tf in p.timeframes:
        if tf not in frames:
            raise ValueError(f"{p.name}: frames lack timeframe {tf} (have {sorted(frames)})")
        f = frames[tf]
        missing = {"symbol", "open_time", *need[tf]} - set(f.columns)
        if missing:
            raise ValueError(f"{p.name}: the {tf} frame lacks column(s) {sorted(missing)}")
        sel = f.select(
            pl.col("symbol").cast(pl.String),
            _utc(f, "open_time").dt.epoch("ms").alias("_t"),
            (pl.col("complete") if "complete" in f.columns else pl.lit(True))
            .cast(pl.Boolean)
            .fill_null(False)
            .alias("_complete"),
            *[pl.col(c).cast(pl.Float64).alias(c) for c in need[tf]],
        ).sort("symbol", "_t")
        for (sym,), part in sel.partition_by("symbol", as_dict=True, maintain_order=True).items():
            t = part["_t"].to_numpy().astype(np.int64)
            if len(t) > 1 and not (np.diff(t) > 0).all():
                raise ValueError(f"{p.name}: duplicate {tf} bars for {sym}")
            out.setdefault(str(sym), {})[tf] = _Series(
                t,
                part["_complete"].to_numpy().astype(bool),
                {c: part[c].to_numpy().astype(np.float64) for c in need[tf]},
            )
    return out


# -- the computation ----------------------------------------------------------------------------


@dataclass
class _Run:
    """A contiguous stretch of the signal timeframe on a dense grid."""

    g0: int  # grid index of row 0
    n: int
    rows: np.ndarray  # dense row of each present bar
    lo: int  # present bars [lo, hi) of the series
    hi: int


def _grid(tf: Timeframe, open_ms: np.ndarray) -> np.ndarray:
    return (open_ms - tf.anchor_ms) // tf.ms


def _runs(g: np.ndarray, pad: int, gap: int) -> Iterator[_Run]:
    """Split at gaps longer than `gap` bars (nothing reaches across them), pad each run with
    `pad` missing rows in front (what its first bars look back at)."""
    import numpy as np

    if len(g) == 0:
        return
    cuts = np.flatnonzero(np.diff(g) > gap) + 1
    bounds = [0, *cuts.tolist(), len(g)]
    for lo, hi in itertools.pairwise(bounds):
        g0 = int(g[lo]) - pad
        yield _Run(g0, int(g[hi - 1]) - g0 + 1, g[lo:hi] - g0, lo, hi)


@dataclass
class _Htf:
    """A higher timeframe's bars joined onto the dense rows: position of each row's as-of bar,
    whether it exists, and whether it is complete."""

    pos: np.ndarray
    found: np.ndarray
    bad: np.ndarray  # missing or incomplete
    key: np.ndarray  # open time of the as-of bar (for counting distinct bars)


def _join_htf(tf: str, close_ms: np.ndarray, s: _Series | None) -> _Htf:
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
class _Eval:
    """Everything computed for one run, dense."""

    close_ms: np.ndarray
    present: np.ndarray
    regime: np.ndarray  # index into personality.regimes, -1 none
    long: list[np.ndarray]  # per rule: its long vote (0..1)
    short: list[np.ndarray]
    weight: list[np.ndarray]  # per rule: weight x regime multiplier
    net_long: np.ndarray
    net_short: np.ndarray
    cand_long: np.ndarray
    cand_short: np.ndarray
    quality: list[str | None]  # None = ok, else a description (filled for candidates only)
    degraded: np.ndarray
    bars: Any


def _evaluate(p: Personality, sig: _Series, htfs: dict[str, _Series | None], run: _Run) -> _Eval:
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
    longs, shorts, weights = [], [], []
    for r in p.rules:
        v = r.node(bars)
        if r.direction == "both":
            lg = np.clip(np.nan_to_num(v, nan=0.0), 0.0, 1.0)
            sh = np.clip(np.nan_to_num(-v, nan=0.0), 0.0, 1.0)
        else:
            hold = truth(v).astype(np.float64)
            lg = hold if r.direction == "long" else zeros
            sh = hold if r.direction == "short" else zeros
        if r.gate:
            w = zeros
            if r.direction != "short":
                gate_l &= lg > 0
            if r.direction != "long":
                gate_s &= sh > 0
        else:
            mult = np.asarray([*r.multipliers, 1.0])
            w = r.weight * mult[regime]
            score_l += w * lg
            score_s += w * sh
            if r.direction != "short":
                max_l += w
            if r.direction != "long":
                max_s += w
        longs.append(lg)
        shorts.append(sh)
        weights.append(w)

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
    return _Eval(
        close_ms,
        present,
        regime,
        longs,
        shorts,
        weights,
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


def _cooldown(p: Personality, close_ms: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The candidates that fire: the first of each cooldown window."""
    import numpy as np

    if p.cooldown is None or len(idx) == 0:
        return idx
    cd = p.cooldown
    key = (close_ms[idx] - MINUTE_MS - cd.anchor_ms) // cd.ms
    first = np.ones(len(idx), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    return idx[first]


def _rows(p: Personality, symbol: str, ev: _Eval, fired: np.ndarray, out: dict) -> None:
    """Append the fired bars to the column lists in `out`: numbers as arrays (the snapshot
    is built from them in one vectorized pass, `_frame`), reasons as text in rule order."""
    import numpy as np

    k = len(fired)
    if k == 0:
        return
    tf = as_timeframe(p.signal_tf)
    values = {ref: ev.bars.col(ref[1], ref[0])[fired] for ref in p.refs}
    text_vals = {ref: v.tolist() for ref, v in values.items()}
    buy = ev.cand_long[fired]
    reasons: list[list[str]] = [[] for _ in range(k)]
    for n, r in enumerate(p.rules):
        v = np.where(buy, ev.long[n][fired], ev.short[n][fired])
        hold = v > 0
        for j in np.flatnonzero(hold).tolist():
            reasons[j].append(r.reason.render(text_vals, j))
        if not r.gate:
            out[f"rule:{r.name}"].append(np.where(hold, ev.weight[n][fired] * v, np.nan))
    regime = ev.regime[fired]
    if p.regimes:
        labels = [g.name for g in p.regimes] + ["none"]
        for j, g in enumerate(regime.tolist()):
            reasons[j].append("market regime: " + labels[g])
    close_ms = ev.close_ms[fired]
    out["symbol"] += [symbol] * k
    out["close_time"].append(close_ms)
    out["open_time"].append(close_ms - tf.ms)
    out["action"].append(buy)
    out["net"].append(np.where(buy, ev.net_long[fired], ev.net_short[fired]))
    out["regime"].append(regime)
    for ref, v in values.items():
        out[ref].append(v)
    out["reasons"] += reasons
    out["quality"] += [ev.quality[i] or OK for i in fired.tolist()]


def _booleans() -> frozenset[str]:
    from pipeline.indicators import load_spec
    from pipeline.strategy.personality import CANDLE_FLAGS

    spec = load_spec()
    return frozenset([*CANDLE_FLAGS, *(c for i in spec.indicators if i.boolean for c in i.outputs)])


def _columns(p: Personality) -> dict[Any, list]:
    keys: list[Any] = ["symbol", "close_time", "open_time", "action", "net", "regime"]
    keys += [f"rule:{r.name}" for r in p.scored] + list(p.refs) + ["reasons", "quality"]
    return {k: [] for k in keys}


def _snapshot(p: Personality, cols: Mapping[str, str]) -> pl.Expr:
    """The snapshot JSON, vectorized: {"net", "threshold", "regime", "rules": {rule:
    weight x vote of each rule that held}, "values": {column: value}} with a fixed key order
    and shortest round-trip floats, so the same inputs give the same bytes."""
    import polars as pl

    from pipeline.strategy.rules import ref_name

    def key(name: str) -> str:
        return json.dumps(name) + ":"

    def num(c: str) -> pl.Expr:
        e = pl.col(c)
        return pl.when(e.is_finite()).then(e.cast(pl.String)).otherwise(pl.lit("null"))

    booleans = _booleans()
    vals = []
    for ref in p.refs:
        c = cols[ref]  # type: ignore[index]
        e = pl.col(c)
        text = (
            pl.when(e.is_nan()).then(pl.lit("null")).when(e == 1.0).then(pl.lit("true"))
            if ref[1] in booleans
            else None
        )
        v = text.otherwise(pl.lit("false")) if text is not None else num(c)
        vals.append(pl.concat_str(pl.lit(key(ref_name(ref))), v))
    rules = [
        pl.when(pl.col(cols[f"rule:{r.name}"]).is_not_nan()).then(
            pl.concat_str(pl.lit(key(r.name)), pl.col(cols[f"rule:{r.name}"]).cast(pl.String))
        )
        for r in p.scored
    ]
    regime: pl.Expr = pl.lit("null")
    for i, g in reversed(list(enumerate(p.regimes))):
        regime = pl.when(pl.col("regime") == i).then(pl.lit(json.dumps(g.name))).otherwise(regime)
    return pl.concat_str(
        pl.lit('{"net":'),
        num("net"),
        pl.lit(f',"threshold":{json.dumps(p.threshold)},"regime":'),
        regime,
        pl.lit(',"rules":{'),
        pl.concat_str(rules, separator=",", ignore_nulls=True),
        pl.lit('},"values":{'),
        pl.concat_str(vals, separator=","),
        pl.lit("}}"),
    ).alias("snapshot")


def _frame(p: Personality, cols: dict[Any, list]) -> pl.DataFrame:
    import numpy as np
    import polars as pl
    import pyarrow as pa

    schema = signals_schema()
    n = len(cols["symbol"])
    if n == 0:
        return pl.DataFrame(schema=schema)
    names = {k: (k if isinstance(k, str) else f"ref{i}") for i, k in enumerate(cols)}
    numeric = {
        names[k]: np.concatenate(v)
        for k, v in cols.items()
        if k not in ("symbol", "reasons", "quality")
    }
    lengths = np.fromiter((len(r) for r in cols["reasons"]), dtype=np.int32, count=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = pa.array(list(itertools.chain.from_iterable(cols["reasons"])), pa.string())
    reasons = pl.Series("reasons", pa.ListArray.from_arrays(pa.array(offsets), flat))
    ts = schema["close_time"]
    df = pl.DataFrame(numeric).with_columns(
        pl.Series("symbol", cols["symbol"], dtype=pl.String),
        reasons.cast(schema["reasons"]),
        pl.Series("quality", cols["quality"], dtype=pl.String),
    )
    return df.select(
        "symbol",
        pl.lit(p.name, pl.String).alias("personality"),
        pl.lit(p.signal_tf, pl.String).alias("timeframe"),
        (pl.col("close_time") * 1000).cast(ts),
        (pl.col("open_time") * 1000).cast(ts),
        pl.when("action").then(pl.lit("BUY")).otherwise(pl.lit("SELL")).alias("action"),
        pl.col("net").clip(0.0, 1.0).alias("confidence"),
        pl.col(names[(None, "close")]).alias("price"),
        "reasons",
        _snapshot(p, names),
        "quality",
    )


def compute_signals(frames: Frames | pl.DataFrame, personality: Personality | str) -> pl.DataFrame:
    """Every signal the personality gives over all the bars in `frames` (one batch, as a
    backfill over whole history): rows in the `signals` layout, sorted by symbol, close_time.

    `frames`: per timeframe, candles joined with indicators (`join_frames`), any symbols.
    """
    import numpy as np

    p = _personality(personality)
    tf = as_timeframe(p.signal_tf)
    per_symbol = _series(_split(frames), p)
    h = p.lookback + 1
    cd_bars = -(-p.cooldown.ms // tf.ms) if p.cooldown else 0
    cols = _columns(p)
    for sym in sorted(per_symbol):
        series = per_symbol[sym]
        sig = series.get(p.signal_tf)
        if sig is None:
            continue
        g = _grid(tf, sig.open_ms)
        if len(g) and not (sig.open_ms == tf.anchor_ms + g * tf.ms).all():
            raise ValueError(f"{p.name}: {p.signal_tf} bars of {sym} off the grid")
        htfs = {t: series.get(t) for t in p.timeframes[1:]}
        for run in _runs(g, h, h + cd_bars + 1):
            ev = _evaluate(p, sig, htfs, run)
            cands = np.flatnonzero(ev.cand_long | ev.cand_short)
            _rows(p, sym, ev, _cooldown(p, ev.close_ms, cands), cols)
    return _frame(p, cols)


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


def _window(frames: Frames, windows: Mapping[str, tuple[dt.datetime, dt.datetime]]) -> dict:
    out = {}
    for tf, (lo, hi) in windows.items():
        f = frames[tf]
        out[tf] = f.filter((_utc(f, "open_time") >= lo) & (_utc(f, "close_time") <= hi))
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
    split = _split(frames)
    cut = _window(split, signal_input_window(day, p, last_day))
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


def signal_day(close_time: dt.datetime) -> dt.date:
    """The daily partition owning a signal stamped `close_time`."""
    return dt.date(1970, 1, 1) + dt.timedelta(days=int(owner_day_index(to_ms(close_time))))


# -- checks ---------------------------------------------------------------------------------------


def check_signals(
    signals: pl.DataFrame, personality: Personality | str | None = None
) -> CheckOutcome:
    """Rows a bot can trust: actions BUY/SELL, confidence in [0, 1] (and at least the
    threshold), positive prices, one row per key, bars on their timeframe's grid, reasons
    given, snapshots JSON objects, quality "ok" or "degraded: ..." (none when the personality
    does not emit degraded signals), at most one signal per cooldown window."""
    import polars as pl

    p = _personality(personality) if personality is not None else None
    if missing := set(SIGNAL_COLUMNS) - set(signals.columns):
        return CheckOutcome(False, f"signals lack column(s) {sorted(missing)}")
    problems: dict[str, int] = {}
    examples: list[str] = []

    def flag(label: str, bad: pl.DataFrame) -> None:
        if bad.height:
            problems[label] = bad.height
            examples.extend(
                f"{label}: {s} {n} {t.isoformat()}"
                for s, n, t in bad.head(5).select("symbol", "personality", "close_time").rows()
            )

    flag("action not BUY/SELL", signals.filter(~pl.col("action").is_in(["BUY", "SELL"])))
    conf = pl.col("confidence")
    flag("confidence outside [0, 1]", signals.filter(~conf.is_finite() | (conf < 0) | (conf > 1)))
    if p is not None:
        # confidence is the net confluence clipped to [0, 1] (exact); the sums behind the
        # net may round, so the threshold allows FLOAT_RTOL.
        flag("confidence below threshold", signals.filter(conf < p.threshold - FLOAT_RTOL))
        flag("another personality's rows", signals.filter(pl.col("personality") != p.name))
    flag(
        "price not positive", signals.filter(~pl.col("price").is_finite() | (pl.col("price") <= 0))
    )
    dup = signals.filter(pl.struct(KEYS).is_duplicated())
    flag("duplicate key", dup)
    flag("no reasons", signals.filter(pl.col("reasons").list.len().fill_null(0) == 0))
    q = pl.col("quality")
    flag("quality not ok/degraded", signals.filter(~((q == OK) | q.str.starts_with("degraded"))))
    if p is not None and not p.emit_degraded:
        flag("degraded signal emitted", signals.filter(q != OK))
    bad_json = [i for i, s in enumerate(signals["snapshot"].to_list()) if not _is_object(s)]
    flag("snapshot not a JSON object", signals[bad_json] if bad_json else signals.clear())
    for (tfname,), part in signals.partition_by("timeframe", as_dict=True).items():
        try:
            tf = as_timeframe(str(tfname))
        except ValueError:
            flag("unknown timeframe", part)
            continue
        o = part["open_time"].dt.epoch("ms")
        c = part["close_time"].dt.epoch("ms")
        off = ((o - tf.anchor_ms) % tf.ms != 0) | (c - o != tf.ms) if tf.kind == "fixed" else None
        if off is not None:
            flag("bar off the timeframe grid", part.filter(off))
    if p is not None and p.cooldown is not None and signals.height:
        cd = p.cooldown
        win = (pl.col("close_time").dt.epoch("ms") - MINUTE_MS - cd.anchor_ms) // cd.ms
        many = signals.with_columns(_w=win).filter(
            pl.struct("symbol", "personality", "_w").is_duplicated()
        )
        flag(f"more than one signal per {cd.name} cooldown window", many)
    if not problems:
        return CheckOutcome(
            True, f"{signals.height} signal(s) well-formed", {"rows": signals.height}
        )
    return CheckOutcome(
        False,
        f"{sum(problems.values())} problem(s) in {signals.height} signal(s): {problems}",
        {"problems": problems, "examples": examples[:MAX_LISTED]},
    )


def _is_object(s: Any) -> bool:
    try:
        return isinstance(json.loads(s), dict)
    except (TypeError, ValueError):
        return False


def live_signal(
    frames: Frames | pl.DataFrame,
    personality: Personality | str,
    symbol: str,
    close_time: dt.datetime,
) -> pl.DataFrame:
    """What the live path emits for the bar closing at `close_time`: today's partition
    computed from the data known at that moment (bars closed by then), that bar's row (0/1)."""
    import polars as pl

    split = _split(frames)
    one = {tf: f.filter(pl.col("symbol") == symbol) for tf, f in split.items()}
    return _live(one, _personality(personality), close_time)


def _live(frames: Frames, p: Personality, close_time: dt.datetime) -> pl.DataFrame:
    import polars as pl

    windows = {
        tf: (lo, min(hi, close_time))
        for tf, (lo, hi) in signal_input_window(signal_day(close_time), p).items()
    }
    return compute_signals(_window(frames, windows), p).filter(pl.col("close_time") == close_time)


def check_signals_lookahead(
    frames: Frames | pl.DataFrame,
    personality: Personality | str,
    sample: int = 200,
    seed: int = 0,
    day: dt.date | None = None,
) -> CheckOutcome:
    """No lookahead: for a sample of bars (signal bars up to half the sample, the bar after
    each, the newest bar and a seeded random spread; only bars `day` owns if given), the live
    path's result for the bar (its day's partition on data cut at the bar's close) equals
    the batch result over all of `frames`, column for column. A rule that reads a later bar
    fails this; so would a window too short for the rules."""
    import numpy as np
    import polars as pl

    from pipeline.candles.resample import owned_by

    p = _personality(personality)
    split = _split(frames)
    batch = compute_signals(split, p)
    sig = split[p.signal_tf]
    bars = sig.select(pl.col("symbol").cast(pl.String), _utc(sig, "close_time"))
    if day is not None:
        bars, batch = bars.filter(owned_by(day)), batch.filter(owned_by(day))
    bars = bars.sort("symbol", "close_time")
    if bars.is_empty():
        return CheckOutcome(True, "no bars to check", {"checked": 0, "signals_checked": 0})
    picks: set[tuple[str, dt.datetime]] = set()
    sig_keys = batch.select("symbol", "close_time").rows()
    if sig_keys:
        step = max(1, len(sig_keys) // max(1, sample // 2))
        picks.update(sig_keys[::step][: sample // 2])
    all_keys = bars.rows()
    index = {k: i for i, k in enumerate(all_keys)}
    for k in list(picks):  # the bar after a signal (a transition must not repeat)
        i = index.get(k)
        if i is not None and i + 1 < len(all_keys) and all_keys[i + 1][0] == k[0]:
            picks.add(all_keys[i + 1])
    picks.add(all_keys[-1])
    extra = min(max(0, sample - len(picks)), len(all_keys))
    rng = np.random.default_rng(seed)
    picks.update(all_keys[i] for i in rng.choice(len(all_keys), size=extra, replace=False))
    by_key = {(r[0], r[3]): r for r in batch.rows()}
    per_symbol: dict[str, dict[str, pl.DataFrame]] = {}
    failures = []
    for sym, t in sorted(picks):
        if sym not in per_symbol:
            per_symbol[sym] = {tf: f.filter(pl.col("symbol") == sym) for tf, f in split.items()}
        live = _live(per_symbol[sym], p, t).rows()
        want = by_key.get((sym, t))
        got = live[0] if live else None
        if got != want:
            what = (
                "batch signals, live does not"
                if got is None
                else "live signals, batch does not"
                if want is None
                else "rows differ"
            )
            failures.append(f"{sym} {t.isoformat()}: {what}")
    checked = {"checked": len(picks), "signals_checked": len(set(sig_keys) & picks)}
    if not failures:
        return CheckOutcome(
            True,
            f"{len(picks)} sampled {p.signal_tf} bars: live (data cut at the bar) == batch",
            checked,
        )
    return CheckOutcome(
        False,
        f"{len(failures)} of {len(picks)} sampled bars differ when the future is cut off"
        f" (lookahead in {p.name})",
        {"failures": len(failures), **checked, "examples": failures[:MAX_LISTED]},
    )


__all__ = [
    "KEYS",
    "SIGNAL_COLUMNS",
    "check_signals",
    "check_signals_lookahead",
    "compute_signals",
    "join_frames",
    "live_signal",
    "signal_day",
    "signal_input_window",
    "signal_summary",
    "signals_for_partition",
    "signals_schema",
]

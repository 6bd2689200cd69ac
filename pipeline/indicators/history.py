"""Which candles count as indicator history, given the minutes the warehouse lacks.

A minute with no stored 1m candle is one of two kinds:

- confirmed absent: the exchange answered for that minute and has no candle for it
  (`kline_gaps`, e.g. a maintenance window). The exchange's own candles of that period lack
  it too, and nothing more will ever be learned about it, so a bucket missing only such
  minutes is the true candle: it counts as history, and a bar missing entirely is skipped
  (the series runs on across it, as on the exchange's own charts). Signals that look at such
  bars are marked degraded (`quality`).
- unknown: never ingested (a range nobody backfilled) or lost. Every minute before a symbol's
  first stored candle is unknown, even where the exchange said it has none: a listing, the
  start of a data file and the first day of a backfill look the same, and a later backfill
  of earlier days may still fill them.

A bucket holding an unknown minute is not the true candle (the first 37m bucket of a backfill
that starts at midnight began before it): it gets no indicator value at all, and no other
value may use it. Unknown minutes between two buckets (bars missing entirely) break the series
the same way. Each series is therefore computed in segments, each starting after a break as if
history began there, with warm-up counted from the segment's first bar: every value whose
window or warm-up would reach a break is NULL. The nulls, warm-up and lookahead checks
(pipeline.indicators.checks) derive what is due from the very same segments.

`mark_history` writes the two facts per candle row as boolean columns: WHOLE (no unknown
minute inside the bucket) and JOINED (no unknown minute between the previous bar of the series
and this one). `kline_gaps` and `klines_1m` never hold the same minute (ingest replaces
both for a range in one transaction), so unknown = missing - confirmed, counted per span.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from pipeline.candles.timeframes import MINUTE_MS, to_ms

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

WHOLE = "history_whole"
JOINED = "history_joined"

# (lo, hi) -> runs of confirmed-absent minutes in [lo, hi): symbol, start (first minute's
# open_time), minutes (the run's length). The Dagster layer reads them from `kline_gaps`.
GapRuns = Callable[[dt.datetime, dt.datetime], "pl.DataFrame"]


def mark_history(
    candles: pl.DataFrame,
    first_minute: Mapping[str, dt.datetime] | None = None,
    gap_runs: GapRuns | None = None,
) -> pl.DataFrame:
    """`candles` with WHOLE and JOINED added (sorted by symbol, timeframe and open_time unless
    each series already is one ascending run of rows).

    `first_minute`: per symbol, the open_time of its first stored 1m candle; only minutes from
    there on can be confirmed absent. `gap_runs` is asked once, for the span the rows missing
    minutes cover, and only if some row needs it. Without them every missing minute is
    unknown. A frame without `n_1m` (not from the `candles` table) counts every bucket whole;
    bars missing between rows still break the series.
    """
    import numpy as np
    import polars as pl

    df = candles.with_columns(utc_times(candles, "open_time", "close_time"))
    if df.is_empty():
        return df.with_columns(pl.lit(True).alias(WHOLE), pl.lit(True).alias(JOINED))
    new, o = _series_starts(df)
    at = np.flatnonzero(new)
    keys = set(zip(df["symbol"].gather(at), df["timeframe"].gather(at), strict=True))
    if len(keys) < len(at) or not np.all((np.diff(o) > 0) | new[1:]):
        df = df.sort("symbol", "timeframe", "open_time")  # a series in pieces, or unsorted
        new, o = _series_starts(df)
    c = df["close_time"].dt.epoch("ms").to_numpy()
    n_1m = df["n_1m"].to_numpy() if "n_1m" in df.columns else None
    sym = df["symbol"].cast(pl.String).to_numpy() if gap_runs is not None else None
    whole, joined = history_flags(new, o, c, n_1m, sym, first_minute, gap_runs)
    return df.with_columns(pl.Series(WHOLE, whole), pl.Series(JOINED, joined))


def history_flags(
    new: np.ndarray,
    o: np.ndarray,
    c: np.ndarray,
    n_1m: np.ndarray | None,
    sym: np.ndarray | None = None,
    first_minute: Mapping[str, dt.datetime] | None = None,
    gap_runs: GapRuns | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """WHOLE and JOINED for rows sorted into series (`new`: a row starts one; `o`, `c`: open
    and close times in ms; `sym`: each row's symbol, needed only with `gap_runs`)."""
    import numpy as np

    # Missing time (ms) inside each bucket, and between it and the previous bar of its series
    # (whole minutes both; kept in ms: int64 division is the slow part on millions of rows).
    inside = c - o
    if n_1m is not None:
        inside -= n_1m.astype(np.int64) * MINUTE_MS
    before = np.zeros_like(o)
    np.subtract(o[1:], c[:-1], out=before[1:])
    before[new] = 0
    firsts = {str(k): to_ms(v) for k, v in (first_minute or {}).items()}
    missing = bool((inside > 0).any() or (before > 0).any())  # else nothing to explain
    if missing and gap_runs is not None and sym is not None and firsts:
        never = np.iinfo(np.int64).max
        starts = np.flatnonzero(new)  # a symbol is constant along a series: one lookup each
        first_of = [firsts.get(str(sym[i]), never) for i in starts]
        t0 = np.repeat(np.array(first_of, dtype=np.int64), np.diff(np.r_[starts, len(o)]))
        prev_c = np.r_[o[:1], c[:-1]]
        # Only spans from the symbol's first stored minute on can be explained by the exchange.
        ask_in = (inside > 0) & (o >= t0)
        ask_before = (before > 0) & (prev_c >= t0)
        if ask_in.any() or ask_before.any():
            lo = int(min(o[ask_in].min(initial=c.max()), prev_c[ask_before].min(initial=c.max())))
            hi = int(max(c[ask_in].max(initial=lo), o[ask_before].max(initial=lo)))
            counter = _Counter(gap_runs(_from_ms(lo), _from_ms(hi)))
            inside[ask_in] -= counter.count(sym[ask_in], o[ask_in], c[ask_in]) * MINUTE_MS
            before[ask_before] -= (
                counter.count(sym[ask_before], prev_c[ask_before], o[ask_before]) * MINUTE_MS
            )
    return inside <= 0, before <= 0


def _series_starts(df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Whether each row starts a run of one (symbol, timeframe), and open times in ms."""
    import numpy as np
    import polars as pl

    ids = df.select(pl.col("symbol").rle_id(), pl.col("timeframe").rle_id())
    sym, tf = ids["symbol"].to_numpy(), ids["timeframe"].to_numpy()
    new = np.ones(len(sym), dtype=bool)
    new[1:] = (sym[1:] != sym[:-1]) | (tf[1:] != tf[:-1])
    return new, df["open_time"].dt.epoch("ms").to_numpy()


def _from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


class _Counter:
    """Confirmed-absent minutes in [lo, hi) per symbol, from runs (prefix sums, searchsorted)."""

    def __init__(self, runs: pl.DataFrame) -> None:
        import numpy as np
        import polars as pl

        self.by_symbol: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        if runs.is_empty():
            return
        runs = runs.with_columns(pl.col("start").dt.epoch("ms").alias("_s")).sort("symbol", "_s")
        for (s,), part in runs.partition_by("symbol", as_dict=True).items():
            start = part["_s"].to_numpy().astype(np.int64)
            length = part["minutes"].to_numpy().astype(np.int64)
            self.by_symbol[str(s)] = (start, length, np.r_[0, np.cumsum(length)])

    def _below(self, s: str, x: np.ndarray) -> np.ndarray:
        """Confirmed minutes of symbol `s` that open before each time in `x`."""
        import numpy as np

        if s not in self.by_symbol:
            return np.zeros(len(x), dtype=np.int64)
        start, length, cum = self.by_symbol[s]
        k = np.searchsorted(start, x, "right") - 1
        kk = np.maximum(k, 0)
        part = np.clip((x - start[kk] + MINUTE_MS - 1) // MINUTE_MS, 0, length[kk])
        return np.where(k >= 0, cum[kk] + part, 0)

    def count(self, sym: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        import numpy as np

        out = np.zeros(len(sym), dtype=np.int64)
        for s in np.unique(sym):
            m = sym == s
            out[m] = self._below(str(s), hi[m]) - self._below(str(s), lo[m])
        return out


def segments(whole: np.ndarray | None, joined: np.ndarray | None) -> list[tuple[int, int]] | None:
    """Row ranges [a, b) computed as one history each: runs of whole rows, split wherever a row
    is not joined to the one before. None when all rows form one segment (the common case)."""
    import numpy as np

    if whole is None or joined is None or len(whole) == 0:
        return None
    brk = ~whole | ~joined  # a void row, or a row whose history before it is unknown
    brk[0] = ~whole[0]
    brk[1:] |= ~whole[:-1]  # the row after a void one starts afresh
    if not brk.any():
        return None
    ids = np.cumsum(brk)
    rows = np.flatnonzero(whole)
    if not rows.size:
        return []
    seg = ids[rows]
    cut = np.flatnonzero(np.diff(seg)) + 1
    first = rows[np.r_[0, cut]]
    last = rows[np.r_[cut - 1, len(rows) - 1]] + 1
    return list(zip(first.tolist(), last.tolist(), strict=True))


def utc_times(frame: pl.DataFrame, *names: str) -> list[pl.Expr]:
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

"""The aggregation behind `resample`: 1m candles as sorted numpy columns, rolled up level by
level (each timeframe from the coarsest finer one that nests into it) with `reduceat` over the
bucket boundaries (the speed and the bit-for-bit equality are explained in its docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.candles.timeframes import (
    DAY_MS,
    KLINE_COLUMNS,
    MINUTE_MS,
    Timeframe,
    bucket_start,
    from_ms,
)

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

# A candle's numbers: open high low close volume turnover (the klines after their times).
PRICES = KLINE_COLUMNS[3:]


class Minutes:
    """1m candles as sorted numpy columns: symbol ids, open times (ms) and prices."""

    def __init__(self, klines: pl.DataFrame) -> None:
        import numpy as np
        import polars as pl

        missing = {"symbol", "open_time", "open", "high", "low", "close", "volume"} - set(
            klines.columns
        )
        if missing:
            raise ValueError(f"klines lack column(s) {sorted(missing)}")
        df = klines.select(
            pl.col("symbol").cast(pl.String),
            pl.col("open_time").dt.epoch("ms").alias("t"),
            *[pl.col(c).cast(pl.Float64) for c in PRICES[:5]],
            (pl.col("turnover") if "turnover" in klines.columns else pl.lit(None))
            .cast(pl.Float64)
            .alias("turnover"),
        )
        sid = _symbol_runs(df)
        if df.height and not _sorted(df, sid):
            df = df.sort("symbol", "t")
            sid = _symbol_runs(df)
        self.sid = sid.astype(np.int32)
        self.names = df["symbol"].gather(_run_starts(self.sid)) if df.height else df["symbol"]
        self.t = df["t"].to_numpy().astype(np.int64, copy=False)
        self.cols = {c: df[c].to_numpy() for c in PRICES}
        self.n = df.height
        bad = np.flatnonzero(self.t % MINUTE_MS != 0)
        if bad.size:
            raise ValueError(f"1m open_time not on the minute grid: {from_ms(self.t[bad[0]])}")
        dup = np.flatnonzero((np.diff(self.t) == 0) & (np.diff(self.sid) == 0))
        if dup.size:
            sym, when = self.names[int(self.sid[dup[0]])], from_ms(self.t[dup[0]])
            raise ValueError(f"duplicate 1m candle {sym} {when} ({dup.size} duplicates)")

    @classmethod
    def of_symbol(cls, symbol: str, t: np.ndarray, cols: dict[str, np.ndarray]) -> Minutes:
        """One symbol's minutes already as numpy columns, sorted and unique (the fast lane's
        window), without the frame and its checks."""
        import numpy as np
        import polars as pl

        m = cls.__new__(cls)
        m.sid = np.zeros(len(t), dtype=np.int32)
        m.names = pl.Series("symbol", [symbol], dtype=pl.String)
        m.t = np.asarray(t, dtype=np.int64)
        m.cols = {c: cols[c] for c in PRICES}
        m.n = len(t)
        return m


def _symbol_runs(df: pl.DataFrame) -> np.ndarray:
    """Run id of each row's symbol (0, 1, ... each time the symbol changes)."""
    import polars as pl

    return df.select(pl.col("symbol").rle_id())["symbol"].to_numpy()


def _sorted(df: pl.DataFrame, sid: np.ndarray) -> bool:
    """Sorted by (symbol, t)? Checked in numpy so the common, already sorted case costs ~1 ms."""
    import numpy as np

    if not df["symbol"].gather(_run_starts(sid)).is_sorted(descending=False):
        return False  # a symbol in two runs, or runs out of order
    t = df["t"].to_numpy()
    return bool(np.all((np.diff(t) > 0) | (np.diff(sid) != 0)))


def _run_starts(sid: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]]) if sid.size else sid


def repeat_names(names: pl.Series, sid: np.ndarray) -> pl.Series:
    """names[sid] for sorted ids, built run by run (a string gather costs ~100 ns a row)."""
    import numpy as np
    import polars as pl

    counts = np.diff(np.searchsorted(sid, np.arange(len(names) + 1)))
    parts = [
        pl.repeat(names[i], int(k), eager=True, dtype=pl.String) for i, k in enumerate(counts) if k
    ]
    return pl.concat(parts) if parts else pl.Series("symbol", [], dtype=pl.String)


@dataclass
class Level:
    """Buckets of one timeframe as aligned numpy columns, sorted by (symbol id, open time)."""

    sid: np.ndarray
    start: np.ndarray  # open time, epoch ms
    cols: dict[str, np.ndarray]  # open high low close volume turnover
    n1: np.ndarray  # 1m candles per bucket


def _base(m: Minutes) -> Level:
    import numpy as np

    return Level(m.sid, m.t, m.cols, np.ones(m.n, dtype=np.int32))


def nests(child: Timeframe, parent: Timeframe) -> bool:
    """Is every `parent` bucket an exact union of `child` buckets?"""
    if parent.kind == "month":
        if child.kind == "month":
            return parent.months % child.months == 0
        # month boundaries are at 00:00 UTC: the child's grid must hit every midnight
        return DAY_MS % child.ms == 0 and child.anchor_ms % child.ms == 0
    return (
        child.kind == "fixed"
        and parent.ms % child.ms == 0
        and (parent.anchor_ms - child.anchor_ms) % child.ms == 0
    )


def _roll_up(src: Level, tf: Timeframe) -> Level:
    """Aggregate a finer level into `tf`: first/max/min/last, sums, and 1m counts summed."""
    import numpy as np

    n = len(src.start)
    key = bucket_start(tf, src.start)
    brk = np.empty(n, dtype=bool)
    brk[:1] = True
    np.not_equal(key[1:], key[:-1], out=brk[1:])
    brk[1:] |= src.sid[1:] != src.sid[:-1]
    starts = np.flatnonzero(brk)
    last = np.r_[starts[1:], n] - 1
    c = src.cols
    return Level(
        src.sid[starts],
        key[starts],
        {
            "open": c["open"][starts],
            "high": _reduce(np.maximum, c["high"], starts),
            "low": _reduce(np.minimum, c["low"], starts),
            "close": c["close"][last],
            "volume": _reduce(np.add, c["volume"], starts),
            "turnover": _reduce(np.add, c["turnover"], starts),
        },
        _reduce(np.add, src.n1, starts).astype(np.int32),
    )


def _reduce(op: np.ufunc, values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """op.reduceat(values, starts), bit for bit; when the inner groups all hold the same small
    number k of rows (no gaps), as k strided element-wise passes instead, ~3x faster.

    Max, min and integer sums do not depend on the order of evaluation. A float sum does:
    reduceat adds the group's first value to the sum of the rest, and sums fewer than 8 values
    left to right (numpy's pairwise summation starts at 8), so for k <= 8 the passes do the same
    (v0 + ((v1 + v2) + ...)); longer float groups keep reduceat. A partition and the whole
    history then add the same numbers in the same order whichever path each takes.
    """
    import numpy as np

    g = len(starts)
    k = int(starts[2] - starts[1]) if g >= 3 else 0
    a, b = (int(starts[1]), int(starts[-1])) if g >= 3 else (0, 0)
    limit = 8 if op is np.add and values.dtype.kind == "f" else 16
    if not 1 < k <= limit or b - a != k * (g - 2) or (starts[2:] - starts[1:-1] != k).any():
        return op.reduceat(values, starts)
    out = np.empty(g, dtype=values.dtype)
    inner = out[1:-1]
    inner[:] = values[a + 1 : b : k]
    for j in range(2, k):
        op(inner, values[a + j : b : k], out=inner)
    op(values[a:b:k], inner, out=inner)
    out[0] = op.reduceat(values[:a], [0])[0]
    out[-1] = op.reduceat(values[b:], [0])[0]
    return out


def build_levels(m: Minutes, tfs: list[Timeframe]) -> dict[str, Level]:
    """Every timeframe, each rolled up from the coarsest finer one that nests into it (1h from
    30m, 1d from 12h, 1M from 1d, 148m from 37m ...), so only a few levels touch the 1m rows.
    The same nesting in every partition keeps partition output identical to whole history."""
    one = Timeframe("1m", "fixed", 1)
    done: dict[str, tuple[Timeframe, Level]] = {"1m": (one, _base(m))}
    order = sorted(tfs, key=lambda t: (t.kind == "month", t.months, t.minutes))
    for tf in order:
        if tf.name in done:
            continue
        parents = [(t, lvl) for t, lvl in done.values() if nests(t, tf)]
        src = max(parents, key=lambda p: (p[0].kind == "month", p[0].months, p[0].minutes))[1]
        done[tf.name] = (tf, _roll_up(src, tf))
    return {name: lvl for name, (_, lvl) in done.items()}

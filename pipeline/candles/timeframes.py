"""Timeframe names, the bucket grid they live on, and which daily partition owns a bucket.

Fixed-length buckets are anchored at the Unix epoch (so 37m and 148m line up the same way on
every machine and in every partition), weeks start Monday 00:00 UTC, months are calendar months
(nM counts months from January 1970). All arithmetic is on int64 epoch milliseconds and works on
scalars, numpy arrays and polars Datetime series alike, so the resampler, the checks and the
assets share one definition of the grid.

A bucket belongs to exactly one daily partition: the UTC day holding its last minute
(close_time - 1 minute). A 37m bucket spanning midnight, a 1w and a 1M bucket are therefore all
written by the day they close in, once they have closed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

# The 1m candle as every exchange client returns it (pipeline/exchanges/protocol.py).
KLINE_COLUMNS = (
    "symbol",
    "open_time",
    "close_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "turnover",
)

MINUTE_MS = 60_000
DAY_MS = 1440 * MINUTE_MS
MINUTE_US = 1000 * MINUTE_MS
# 1970-01-01 was a Thursday; the first Monday is 1970-01-05.
WEEK_ANCHOR_MS = 4 * DAY_MS

_UNITS = {"m": 1, "h": 60, "d": 1440, "w": 10080}
_TF_RE = re.compile(r"^([1-9][0-9]*)(m|h|d|w|M)$")
# Beyond ~100 years a bucket is a typo, and int64 month arithmetic stays far from overflow.
_MAX_MINUTES = 100 * 366 * 1440


@dataclass(frozen=True)
class Timeframe:
    """A parsed timeframe such as 37m, 4h, 1w or 1M."""

    name: str
    kind: Literal["fixed", "month"]
    minutes: int  # bucket length for fixed kinds; nominal (30 days x n) for months
    months: int = 0
    anchor_ms: int = 0

    @property
    def ms(self) -> int:
        return self.minutes * MINUTE_MS


def parse_timeframe(name: str) -> Timeframe:
    """Parse `<n><unit>` with unit m, h, d, w or M (calendar month)."""
    m = _TF_RE.match(str(name))
    if not m:
        raise ValueError(
            f"timeframe {name!r} is not valid: use a whole number and a unit, "
            "m (minutes), h (hours), d (days), w (weeks) or M (months), e.g. 37m, 4h, 1d, 1w, 1M"
        )
    n, unit = int(m.group(1)), m.group(2)
    if (n * 30 * 1440 if unit == "M" else n * _UNITS[unit]) > _MAX_MINUTES:
        raise ValueError(f"timeframe {name!r} is longer than 100 years")
    if unit == "M":
        return Timeframe(name, "month", 30 * 1440 * n, months=n)
    minutes = n * _UNITS[unit]
    anchor = WEEK_ANCHOR_MS if unit == "w" else 0
    return Timeframe(name, "fixed", minutes, anchor_ms=anchor)


def as_timeframe(tf: Timeframe | str) -> Timeframe:
    return tf if isinstance(tf, Timeframe) else parse_timeframe(tf)


def parse_timeframes(names: Iterable[str]) -> list[Timeframe]:
    """Parse a list, rejecting duplicates (they would write the same rows twice)."""
    tfs = [as_timeframe(n) for n in names]
    seen: set[str] = set()
    for tf in tfs:
        if tf.name in seen:
            raise ValueError(f"timeframe {tf.name!r} is listed twice")
        seen.add(tf.name)
    return tfs


# -- vectorized grid arithmetic -------------------------------------------------------------
# Each function takes an int, an int64 numpy array or a polars Datetime series and returns the
# same kind (ints for expected_minutes).


def _to_ms(x: Any) -> tuple[Any, str]:
    import numpy as np

    if isinstance(x, int | np.integer):
        return np.asarray([x], dtype=np.int64), "int"
    if isinstance(x, dt.datetime):
        return np.asarray([to_ms(x)], dtype=np.int64), "datetime"
    if type(x).__module__.startswith("polars"):
        return x.dt.epoch("ms").to_numpy().astype(np.int64, copy=False), "series"
    return np.asarray(x, dtype=np.int64), "array"


def _back(ms: Any, kind: str, like: Any, *, as_time: bool = True) -> Any:
    if kind == "int":
        return int(ms[0])
    if kind == "datetime":
        return from_ms(int(ms[0])) if as_time else int(ms[0])
    if kind == "series":
        import polars as pl

        s = pl.Series(like.name, ms)
        return pl.from_epoch(s, time_unit="ms").cast(pl.Datetime("us", "UTC")) if as_time else s
    return ms


def _months_since_epoch(ms: np.ndarray) -> np.ndarray:
    """Calendar months since 1970-01 of each time.

    Dense arrays (a year of minutes) go through a per-day lookup table: numpy's calendar
    conversion costs ~40 ns a value, the table gather a few.
    """
    import numpy as np

    if ms.size < 4096:
        return ms.astype("datetime64[ms]").astype("datetime64[M]").astype(np.int64)
    days = ms // DAY_MS
    lo, hi = int(days.min()), int(days.max())
    if hi - lo > ms.size:
        return ms.astype("datetime64[ms]").astype("datetime64[M]").astype(np.int64)
    table = np.arange(lo, hi + 1).astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
    return table[days - lo]


def _month_ms(months: np.ndarray) -> np.ndarray:
    import numpy as np

    return months.astype("datetime64[M]").astype("datetime64[ms]").astype(np.int64)


@overload
def bucket_start(tf: Timeframe | str, ms: int) -> int: ...
@overload
def bucket_start(tf: Timeframe | str, ms: Any) -> Any: ...
def bucket_start(tf: Timeframe | str, ms: Any) -> Any:
    """Open time of the bucket containing each instant."""
    t = as_timeframe(tf)
    a, kind = _to_ms(ms)
    if t.kind == "month":
        out = _month_ms((_months_since_epoch(a) // t.months) * t.months)
    elif t.anchor_ms:
        out = t.anchor_ms + ((a - t.anchor_ms) // t.ms) * t.ms
    else:  # epoch-anchored: half the passes over a year of minutes
        out = a // t.ms
        out *= t.ms
    return _back(out, kind, ms)


def shift_buckets(tf: Timeframe | str, start: Any, n: int) -> Any:
    """Open time of the bucket `n` buckets after (n < 0: before) the one opening at `start`.

    `start` must be on the grid (a month shift keeps only the month of a time inside one).
    """
    t = as_timeframe(tf)
    a, kind = _to_ms(start)
    out = _month_ms(_months_since_epoch(a) + n * t.months) if t.kind == "month" else a + n * t.ms
    return _back(out, kind, start)


def bucket_range(tf: Timeframe | str, first_ms: int, last_ms: int) -> np.ndarray:
    """Open times (ms) of every bucket from the one holding `first_ms` to the one holding
    `last_ms`, both included: a grid to `searchsorted` sorted times against."""
    import numpy as np

    t = as_timeframe(tf)
    a, b = bucket_start(t, int(first_ms)), bucket_start(t, int(last_ms))
    if t.kind != "month":
        return np.arange(a, b + 1, t.ms, dtype=np.int64)
    m = _months_since_epoch(np.asarray([a, b], dtype=np.int64))
    return _month_ms(np.arange(m[0], m[1] + 1, t.months))


def bucket_end(tf: Timeframe | str, start: Any) -> Any:
    """Close time (exclusive end) of the bucket opening at `start`."""
    return shift_buckets(tf, start, 1)


def expected_minutes(tf: Timeframe | str, start: Any) -> Any:
    """How many 1m candles a complete bucket holds (months vary); `start` is any time in it."""
    import numpy as np

    t = as_timeframe(tf)
    a, kind = _to_ms(start)
    if t.kind == "month":
        a = bucket_start(t, a)
        out = (shift_buckets(t, a, 1) - a) // MINUTE_MS
    else:  # fixed length: no arithmetic on a year of open times
        out = np.full(a.shape, t.minutes, dtype=np.int64)
    return _back(out, kind, start, as_time=False)


def on_grid(tf: Timeframe | str, start: Any) -> Any:
    """Whether each time is the open time of a bucket (a bool array, or a bool for a scalar)."""
    a, kind = _to_ms(start)
    ok = bucket_start(tf, a) == a
    return bool(ok[0]) if kind in ("int", "datetime") else ok


# -- times and partitions ----------------------------------------------------------------


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _since_epoch(t: dt.datetime | dt.date) -> dt.timedelta:
    """An aware datetime (naive ones are taken as UTC) or a UTC day, from the epoch."""
    if not isinstance(t, dt.datetime):
        t = dt.datetime(t.year, t.month, t.day, tzinfo=dt.UTC)
    elif t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t - _EPOCH


def to_ms(t: dt.datetime | dt.date) -> int:
    """Epoch milliseconds of an aware datetime (naive ones are taken as UTC) or a UTC day."""
    return _since_epoch(t) // dt.timedelta(milliseconds=1)


def to_us(t: dt.datetime | dt.date) -> int:
    """Epoch microseconds, exactly (no float rounding), of the same inputs as `to_ms`."""
    return _since_epoch(t) // dt.timedelta(microseconds=1)


def from_ms(ms: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(milliseconds=int(ms))


def from_us(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=int(us))


def day_bounds_ms(day: dt.date) -> tuple[int, int]:
    """[00:00, 24:00) of a UTC day in epoch ms."""
    start = to_ms(day)
    return start, start + DAY_MS


def owner_day_index(close_ms: Any) -> Any:
    """Days since the epoch of the partition owning each bucket: the day of its last minute."""
    a, kind = _to_ms(close_ms)
    out = (a - MINUTE_MS) // DAY_MS
    return _back(out, kind, close_ms, as_time=False)


def owner_day(close_time: dt.datetime) -> dt.date:
    """The daily partition that writes the bucket closing at `close_time`."""
    return dt.date(1970, 1, 1) + dt.timedelta(days=int(owner_day_index(to_ms(close_time))))


def first_owned_start_ms(tf: Timeframe | str, day: dt.date) -> int | None:
    """Open time of the first bucket the day owns, or None when it owns none of this timeframe.

    The candidate is the bucket holding 00:00: it closes after midnight, so the day owns it
    exactly when it also closes by the day's end; if it does not, it covers the whole day and
    no bucket of this timeframe closes within it.
    """
    d0, d1 = day_bounds_ms(day)
    start = bucket_start(tf, d0)
    return start if bucket_end(tf, start) <= d1 else None


def partition_input_window(
    day: dt.date, timeframes: Iterable[Timeframe | str]
) -> tuple[dt.datetime, dt.datetime]:
    """The 1m open-time range [start, end) a partition reads to build every bucket it owns.

    Up to a month back on a month's last day (1M), six days back on Sundays (1w), a few
    minutes back for a 37m bucket spanning midnight; just the day otherwise.
    """
    d0, d1 = day_bounds_ms(day)
    starts = [s for tf in timeframes if (s := first_owned_start_ms(tf, day)) is not None]
    return from_ms(min([d0, *starts])), from_ms(d1)


def owned_by(day: dt.date) -> pl.Expr:
    """Polars predicate: rows (candles or indicators) the partition `day` owns."""
    import polars as pl

    d0, d1 = day_bounds_ms(day)
    return (pl.col("close_time") > from_ms(d0)) & (pl.col("close_time") <= from_ms(d1))


# The rows a run over (start, end] owns, of one venue: candles, indicators and signals alike.
OWNED = "exchange = ? AND close_time > ? AND close_time <= ?"


def owned_where(day: dt.date, exchange: str = "bybit") -> tuple[str, list[Any]]:
    """SQL predicate and parameters for `Warehouse.replace` of one venue's partition `day`."""
    d0, d1 = day_bounds_ms(day)
    return OWNED, [exchange, from_ms(d0), from_ms(d1)]

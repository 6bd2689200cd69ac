"""Bybit kline intervals: their bucket grid and aggregation from 1-minute candles.

Deliberately written apart from `pipeline.candles.timeframes` and the pipeline's resampling, so a
test
can check the pipeline against what the exchange reports. Minute and hour buckets and `D` are
anchored at the Unix epoch, `W` starts Monday 00:00 UTC, `M` is the calendar month (UTC).
Rows are float arrays (n, 7): open_time_ms, open, high, low, close, volume, turnover.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

MINUTE_MS = 60_000
DAY_MS = 86_400_000
MONDAY_MS = 4 * DAY_MS  # 1970-01-01 was a Thursday; 1970-01-05 the first Monday
MINUTES = {
    "1": 1, "3": 3, "5": 5, "15": 15, "30": 30, "60": 60, "120": 120, "240": 240,
    "360": 360, "720": 720, "D": 1440, "W": 10080,
}  # fmt: skip
INTERVALS = (*MINUTES, "M")


def _month_index(t_ms: int) -> int:
    d = dt.datetime.fromtimestamp(t_ms // 1000, dt.UTC)
    return d.year * 12 + d.month - 1


def _month_start(index: int) -> int:
    y, m = divmod(index, 12)
    return int(dt.datetime(y, m + 1, 1, tzinfo=dt.UTC).timestamp()) * 1000


def length_ms(interval: str) -> int | None:
    """Fixed bucket length in ms, or None for calendar months."""
    m = MINUTES.get(interval)
    return None if m is None else m * MINUTE_MS


def _anchor(interval: str) -> int:
    return MONDAY_MS if interval == "W" else 0


def floor_open(t_ms: int, interval: str) -> int:
    """Open time of the bucket containing `t_ms`."""
    size = length_ms(interval)
    if size is None:
        return _month_start(_month_index(t_ms))
    a = _anchor(interval)
    return a + (t_ms - a) // size * size


def shift(open_ms: int, k: int, interval: str) -> int:
    """The bucket `k` buckets after (k < 0: before) the one opening at `open_ms`."""
    size = length_ms(interval)
    if size is None:
        return _month_start(_month_index(open_ms) + k)
    return open_ms + k * size


def ceil_open(t_ms: int, interval: str) -> int:
    """The first bucket opening at or after `t_ms`."""
    o = floor_open(t_ms, interval)
    return o if o == t_ms else shift(o, 1, interval)


def close_ms(open_ms: int, interval: str) -> int:
    return shift(open_ms, 1, interval)


def bucket_opens(times: np.ndarray, interval: str) -> np.ndarray:
    """Vectorised `floor_open` over int64 epoch-ms times."""
    size = length_ms(interval)
    if size is None:
        months = times.astype("datetime64[ms]").astype("datetime64[M]")
        return months.astype("datetime64[ms]").astype(np.int64)
    a = _anchor(interval)
    return a + (times - a) // size * size


def aggregate(rows: np.ndarray, interval: str) -> np.ndarray:
    """OHLCV of each bucket that holds at least one row; `rows` sorted by open time."""
    if len(rows) == 0 or interval == "1":
        return rows
    opens = bucket_opens(rows[:, 0].astype(np.int64), interval)
    starts = np.flatnonzero(np.r_[True, opens[1:] != opens[:-1]])
    ends = np.r_[starts[1:], len(rows)] - 1
    out = np.empty((len(starts), 7))
    out[:, 0] = opens[starts]
    out[:, 1] = rows[starts, 1]
    out[:, 2] = np.maximum.reduceat(rows[:, 2], starts)
    out[:, 3] = np.minimum.reduceat(rows[:, 3], starts)
    out[:, 4] = rows[ends, 4]
    out[:, 5] = np.add.reduceat(rows[:, 5], starts)
    out[:, 6] = np.add.reduceat(rows[:, 6], starts)
    return out

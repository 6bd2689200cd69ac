"""Bybit v5 kline pages on the wire: validation, the interval grid, and the candle frame.

Kept apart from the client (bybit.py) so the request loop and the page format each stay short.
Interval arithmetic comes from `pipeline.candles.timeframes` (Bybit's `D`, `W`, `M` are the
pipeline's 1d, 1w — Monday-anchored — and 1M); the production client never imports the replay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.exchanges.protocol import MalformedResponse
from pipeline.exchanges.rest import iso

if TYPE_CHECKING:
    import numpy as np

PAGE_LIMIT = 1000
FIELDS = ("startTime", "open", "high", "low", "close", "volume", "turnover")
INTERVALS = ("1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "D", "W", "M")


def timeframe(interval: str) -> str:
    """The pipeline's timeframe name of a Bybit interval (`1` -> 1m, `D` -> 1d, `M` -> 1M)."""
    return {"D": "1d", "W": "1w", "M": "1M"}.get(interval, f"{interval}m")


def floor_open(t_ms: int, interval: str) -> int:
    from pipeline.candles.timeframes import bucket_start

    return int(bucket_start(timeframe(interval), int(t_ms)))


def shift(open_ms: int, k: int, interval: str) -> int:
    from pipeline.candles.timeframes import shift_buckets

    return int(shift_buckets(timeframe(interval), int(open_ms), k))


# -- validation ----------------------------------------------------------------------------
def envelope(
    payload: Any, bad: Callable[[str], MalformedResponse], category: str, limit: int
) -> tuple[dict[str, Any], list[Any], int]:
    """A v5 answer's result, its `list` (at most `limit` rows) and the server clock (ms), or
    `bad(...)` naming what is wrong with the envelope."""
    if not isinstance(payload, dict):
        raise bad(f"expected a JSON object, got {type(payload).__name__}")
    if payload.get("retCode") != 0:
        raise bad(f"retCode is {payload.get('retCode')!r}, expected 0")
    server_ms = payload.get("time")
    if not isinstance(server_ms, int) or isinstance(server_ms, bool):
        raise bad(f"field 'time' (the server clock) is {server_ms!r}, expected epoch ms")
    result = payload.get("result")
    if not isinstance(result, dict):
        raise bad("field 'result' is missing or not an object")
    if result.get("category", category) != category:
        raise bad(f"result.category is {result.get('category')!r}, expected {category!r}")
    rows = result.get("list")
    if not isinstance(rows, list):
        raise bad("field 'result.list' is missing or not a list")
    if len(rows) > limit:
        raise bad(f"{len(rows)} rows, more than the limit {limit}")
    return result, rows, server_ms


def parse_kline_page(
    payload: Any,
    *,
    symbol: str,
    category: str,
    interval: str,
    lo_ms: int | None,
    hi_ms: int | None,
    what: str,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate one kline response; returns (open times ms, values (n, 6), server clock ms).

    `lo_ms`/`hi_ms` bound the open times requested (None: unbounded). Raises
    `MalformedResponse` naming the row and field at fault.
    """
    import numpy as np

    from pipeline.candles.timeframes import bucket_start

    def bad(msg: str) -> MalformedResponse:
        return MalformedResponse(f"malformed response for {what}: {msg}")

    result, rows, server_ms = envelope(payload, bad, category, PAGE_LIMIT)
    if result.get("symbol") != symbol:
        raise bad(f"result.symbol is {result.get('symbol')!r}, expected {symbol!r}")
    if rows and not (set(map(type, rows)) == {list} and set(map(len, rows)) == {7}):
        for i, r in enumerate(rows):
            if not isinstance(r, list) or len(r) != 7:
                got = f"{len(r)} fields" if isinstance(r, list) else type(r).__name__
                raise bad(f"row {i} has {got}, expected 7 ({', '.join(FIELDS)}): {r!r}")
    if not rows:
        return np.empty(0, np.int64), np.empty((0, 6)), server_ms
    cols = list(zip(*rows, strict=True))
    epoch_ms = "an integer (epoch ms)"
    times = np.array(parse_column(cols[0], int, bad, "startTime", epoch_ms), np.int64)
    values = np.array(
        [parse_column(cols[j], float, bad, FIELDS[j], "a number") for j in range(1, 7)], np.float64
    ).T

    def row_bad(i: int, msg: str) -> MalformedResponse:
        return bad(f"row {i} (open_time {iso(int(times[i]))}) {msg}")

    finite = np.isfinite(values)
    if not finite.all():
        i, j = (int(k) for k in np.argwhere(~finite)[0])
        raise row_bad(i, f"field '{FIELDS[j + 1]}' = {rows[i][j + 1]!r} is not a finite number")
    grid = bucket_start(timeframe(interval), times)
    off = np.flatnonzero(grid != times)
    if len(off):
        raise row_bad(int(off[0]), f"startTime {times[off[0]]} is not on the {interval} grid")
    steps = np.diff(times)
    wrong = np.flatnonzero(steps >= 0)
    if len(wrong):
        i = int(wrong[0])
        if steps[i] == 0:
            raise row_bad(i + 1, "repeats the open time of the row before it (duplicate)")
        raise row_bad(i + 1, f"is newer than row {i}; the list must be newest first")
    outside = np.flatnonzero(
        ((times < lo_ms) if lo_ms is not None else False)
        | ((times > hi_ms) if hi_ms is not None else False)
    )
    if len(outside):
        span = f"[{'-' if lo_ms is None else iso(lo_ms)}, {'-' if hi_ms is None else iso(hi_ms)}]"
        raise row_bad(int(outside[0]), f"is outside the requested open-time range {span}")
    if times[0] > server_ms:
        raise row_bad(0, f"opens after the server clock {iso(server_ms)}")
    o, h, low, c, vol, turn = values.T
    if (h < low).any():
        i = int(np.flatnonzero(h < low)[0])
        raise row_bad(i, f"high {rows[i][2]} is below low {rows[i][3]}")
    outside_hl = (np.minimum(o, c) < low) | (np.maximum(o, c) > h) | (low <= 0)
    if outside_hl.any():
        i = int(np.flatnonzero(outside_hl)[0])
        raise row_bad(
            i,
            f"open {rows[i][1]} / close {rows[i][4]} outside [low {rows[i][3]}, high "
            f"{rows[i][2]}] or a non-positive price",
        )
    negative = (vol < 0) | (turn < 0)
    if negative.any():
        i = int(np.flatnonzero(negative)[0])
        raise row_bad(i, f"negative volume {rows[i][5]} or turnover {rows[i][6]}")
    return times, values, server_ms


def parse_column(
    column: tuple[Any, ...],
    kind: type[int] | type[float],
    bad: Callable[[str], MalformedResponse],
    name: str,
    want: str,
) -> list[Any]:
    """Parse one column of the page's strings; on failure name the first offending row."""
    try:
        if set(map(type, column)) == {str}:
            return list(map(kind, column))
    except (ValueError, OverflowError):
        pass
    for i, v in enumerate(column):
        try:
            if type(v) is not str:
                raise TypeError
            kind(v)
        except (ValueError, OverflowError, TypeError):
            raise bad(f"row {i} field '{name}' = {v!r} is not {want} in a string") from None
    raise bad(f"field '{name}' does not parse as {want}")  # pragma: no cover


def close_times(times: np.ndarray, interval: str) -> np.ndarray:
    """Close time (exclusive end) of each bucket opening at `times` (int64 ms)."""
    import numpy as np

    from pipeline.candles.timeframes import bucket_end

    return np.asarray(bucket_end(timeframe(interval), times.astype(np.int64)), dtype=np.int64)

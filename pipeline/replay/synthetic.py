"""Seeded, realistic synthetic 1-minute candles with random access.

Any minute of any symbol can be generated on its own and always comes out the same for the
same seed, so the replay exchange serves identical candles at every page boundary and on every
run, and tests share one deterministic market. The path is built per UTC day: the day's
opening log price comes from multi-scale value noise (trending and ranging stretches, bounded
around a BTC-like level), and the minutes in between are a Brownian bridge with volatility
clustering and intraday seasonality in both volatility and volume.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

MINUTE_MS = 60_000
DAY_MS = 1440 * MINUTE_MS
# Value-noise scales in days and their log-price amplitudes: weeks-long trends, quarterly
# regimes, multi-year cycles. Together they keep the level within roughly 10k-150k.
_SCALES = ((2, 0.03), (7, 0.06), (30, 0.12), (120, 0.25), (500, 0.45))


def _key(*parts: object) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(_key(*parts))


def _base_level(symbol: str) -> float:
    """BTC trades near 40k; other symbols get a stable level of their own."""
    if symbol.startswith("BTC"):
        return 40_000.0
    return float(10 ** (1 + (_key("level", symbol) % 300) / 100))


def tick_size(symbol: str) -> float:
    """Price tick: 0.1 at BTC's level, five significant digits elsewhere."""
    return float(10 ** (np.floor(np.log10(_base_level(symbol))) - 5))


def price_decimals(symbol: str) -> int:
    """Decimal places of a price on the tick grid (1 for BTC's 0.1 tick)."""
    return max(0, -int(np.floor(np.log10(tick_size(symbol)) + 1e-9)))


def _on_grid(x: np.ndarray | float, tick: float, decimals: int, how=np.round) -> np.ndarray:
    """Snap to the tick, then to the nearest float of that decimal (what parsing the exchange's
    string gives back), so a value survives the round trip through text bit for bit."""
    return np.round(how(np.asarray(x) / tick) * tick, decimals)


def _knot(seed: int, symbol: str, scale: int, index: int) -> float:
    return float(_rng(seed, symbol, "knot", scale, index).standard_normal())


def day_open_log(seed: int, symbol: str, day: int) -> float:
    """Log price at 00:00 UTC of `day` (days since the epoch)."""
    total = np.log(_base_level(symbol))
    for scale, amp in _SCALES:
        i, frac = divmod(day, scale)
        a, b = _knot(seed, symbol, scale, i), _knot(seed, symbol, scale, i + 1)
        w = frac / scale
        w = w * w * (3 - 2 * w)  # smoothstep: no kinks at the knots
        total += amp * (a + (b - a) * w)
    return float(total)


def _seasonal(minutes: np.ndarray) -> np.ndarray:
    """Intraday activity: quiet in the Asian night, busy at the US open (14:30 UTC)."""
    hours = minutes / 60.0
    return (
        0.75
        + 0.35 * np.exp(-(((hours - 14.5) / 2.5) ** 2))
        + 0.15 * np.sin(2 * np.pi * (hours - 8) / 24)
    )


@lru_cache(maxsize=2048)
def _day(seed: int, symbol: str, day: int) -> np.ndarray:
    """One UTC day of 1m candles as an array (1440, 6): open high low close volume turnover."""
    rng = _rng(seed, symbol, "day", day)
    start, end = day_open_log(seed, symbol, day), day_open_log(seed, symbol, day + 1)
    minutes = np.arange(1440, dtype=np.float64)
    season = _seasonal(minutes)
    # Volatility clustering: a GARCH(1,1)-like multiplier plus a regime level for the day.
    regime = np.exp(0.45 * _rng(seed, symbol, "regime", day // 3).standard_normal())
    shocks = rng.standard_normal(1440)
    var = np.empty(1440)
    v = 1.0
    for i in range(1440):
        var[i] = v
        v = 0.05 + 0.90 * v + 0.05 * shocks[i] ** 2
    sigma = 0.0007 * regime * season * np.sqrt(var)
    steps = sigma * shocks
    path = np.cumsum(steps)
    # Brownian bridge: bend the walk so the day ends exactly where the next one starts.
    path = start + path - (path[-1] - (end - start)) * (minutes + 1) / 1440
    tick, dec = tick_size(symbol), price_decimals(symbol)
    close = np.exp(path)
    open_ = np.empty(1440)
    open_[0] = np.exp(start)
    open_[1:] = close[:-1]
    close = _on_grid(close, tick, dec)
    open_ = _on_grid(open_, tick, dec)
    wick = np.abs(rng.standard_normal((2, 1440))) * sigma * 0.6 * close
    high = _on_grid(np.maximum(open_, close) + wick[0], tick, dec, np.ceil)
    low = _on_grid(np.minimum(open_, close) - wick[1], tick, dec, np.floor)
    move = np.abs(steps) / np.maximum(sigma, 1e-12)
    volume = 12.0 * season**2 * regime * (0.6 + 0.5 * move) * rng.lognormal(0.0, 0.35, 1440)
    volume = np.round(np.round(volume, 3) + 0.001, 3)
    turnover = np.round(volume * (open_ + high + low + close) / 4, 4)
    return np.column_stack([open_, high, low, close, volume, turnover])


def candles(symbol: str, start_ms: int, end_ms: int, seed: int = 7) -> np.ndarray:
    """Closed-form candles for open times in [start_ms, end_ms) on the minute grid.

    Returns an array (n, 7): open_time_ms, open, high, low, close, volume, turnover.
    """
    first = -(-start_ms // MINUTE_MS) * MINUTE_MS
    if end_ms <= first:
        return np.empty((0, 7))
    parts = []
    for day in range(first // DAY_MS, (end_ms - 1) // DAY_MS + 1):
        block = _day(seed, symbol, day)
        lo = max(first, day * DAY_MS)
        hi = min(end_ms, (day + 1) * DAY_MS)
        i0 = (lo - day * DAY_MS) // MINUTE_MS
        i1 = -(-(hi - day * DAY_MS) // MINUTE_MS)
        times = day * DAY_MS + np.arange(i0, i1, dtype=np.int64) * MINUTE_MS
        parts.append(np.column_stack([times.astype(np.float64), block[i0:i1]]))
    return np.concatenate(parts)


def forming(symbol: str, open_ms: int, now_ms: int, seed: int = 7) -> np.ndarray:
    """The still-forming candle at `now_ms`: its final values scaled by the elapsed share."""
    row = candles(symbol, open_ms, open_ms + MINUTE_MS, seed)[0].copy()
    f = min(max((now_ms - open_ms) / MINUTE_MS, 0.0), 1.0)
    return partial(row, f, tick_size(symbol), price_decimals(symbol))


def partial(
    row: np.ndarray, f: float, tick: float, decimals: int, size_decimals: tuple[int, int] = (3, 4)
) -> np.ndarray:
    """A candle `f` (0..1) of the way through its minute, from its final values: prices move
    from the open towards the final close/high/low, volume and turnover accrue linearly."""
    row = np.array(row, dtype=np.float64)
    o, h, low, c = row[1:5]
    close = float(_on_grid(o + (c - o) * f, tick, decimals))
    row[2] = max(o, close, float(_on_grid(o + (h - o) * f, tick, decimals)))
    row[3] = min(o, close, float(_on_grid(o - (o - low) * f, tick, decimals)))
    row[4] = close
    row[5] = np.round(row[5] * f, size_decimals[0])
    row[6] = np.round(row[6] * f, size_decimals[1])
    return row


def frame(symbol: str, start_ms: int, end_ms: int, seed: int = 7):  # -> pl.DataFrame
    """Synthetic candles as a polars frame in the warehouse's kline layout (for tests, bench)."""
    import polars as pl

    a = candles(symbol, start_ms, end_ms, seed)
    open_time = pl.Series("open_time", a[:, 0].astype(np.int64)).cast(pl.Datetime("ms", "UTC"))
    return pl.DataFrame(
        {
            "symbol": pl.Series([symbol] * len(a), dtype=pl.String),
            "open_time": open_time.cast(pl.Datetime("us", "UTC")),
            "open": a[:, 1],
            "high": a[:, 2],
            "low": a[:, 3],
            "close": a[:, 4],
            "volume": a[:, 5],
            "turnover": a[:, 6],
        }
    ).with_columns(close_time=pl.col("open_time") + pl.duration(minutes=1))


def venue_seed(seed: int, venue: str) -> int:
    """The seed of `venue`'s market: Bybit keeps `seed` itself, any other venue gets its own,
    so the same coin differs between venues (as real venues' candles do)."""
    return seed if venue == "bybit" else _key("venue", seed, venue) % 2**31

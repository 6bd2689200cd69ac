"""The replay exchange's market: a source's candles seen through the exchange clock.

Kline selection follows Bybit v5 `GET /v5/market/kline` (docs: bybit-exchange.github.io/docs/
v5/market/kline; pybit issue #186; captured responses): the list is newest first; `start` and
`end` are inclusive bounds on a candle's open time; with both, the NEWEST `limit` candles in
[start, end]; with only `start`, up to `limit` candles beginning at `start` (still newest
first); with only `end`, the newest `limit` at or before `end`; with neither, the latest
`limit`. A candle exists once its open time has passed on the exchange clock, so the newest
one may still be forming (its close is the last trade price). `start` inside a bucket selects
from the next bucket on (buckets are identified by their open time).

Every interval is aggregated from the same 1-minute rows (via daily summaries for D, W and M),
so all intervals agree with each other and with `revise()`d candles. Formatted day pages are
cached, so a 1000-row 1m page is a slice and a join.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from pipeline.replay import intervals as iv
from pipeline.replay import synthetic
from pipeline.replay.data import Source
from pipeline.replay.wire import Decimals, format_rows, format_values

DAY_MS, MINUTE_MS = iv.DAY_MS, iv.MINUTE_MS
_FIELDS = ("open", "high", "low", "close", "volume", "turnover")


class MarketError(ValueError):
    """A request the market cannot serve (the message is meant for the caller)."""


class Market:
    """Candles per symbol from `source`, with revisions and clock-limited views."""

    def __init__(self, source: Source, cache_days: int = 128) -> None:
        self.source = source
        self.cache_days = cache_days
        self._lock = threading.RLock()
        self._revisions: dict[str, dict[int, np.ndarray]] = {}
        self._rows: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._text: OrderedDict[tuple[str, int], tuple[np.ndarray, list[str]]] = OrderedDict()
        self._daily: dict[tuple[str, int], np.ndarray] = {}

    def supports(self, symbol: str) -> bool:
        return self.source.supports(symbol)

    def decimals(self, symbol: str) -> Decimals:
        return self.source.decimals(symbol)

    # -- days of 1m rows -----------------------------------------------------------------
    def _cached(self, cache: OrderedDict, key: tuple[str, int], make: Any) -> Any:
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = make()
            while len(cache) > self.cache_days:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return hit

    def day_rows(self, symbol: str, day: int) -> np.ndarray:
        """All 1m rows of a UTC day as the source has them, revisions applied (clock ignored)."""
        with self._lock:
            return self._cached(self._rows, (symbol, day), lambda: self._make_day(symbol, day))

    def _make_day(self, symbol: str, day: int) -> np.ndarray:
        rows = self.source.day(symbol, day)
        revised = self._revisions.get(symbol)
        if revised:
            rows = rows.copy()
            for t, values in revised.items():
                if day * DAY_MS <= t < (day + 1) * DAY_MS:
                    i = int(np.searchsorted(rows[:, 0], t))
                    if i < len(rows) and rows[i, 0] == t:
                        rows[i, 1:] = values
        return rows

    def _day_text(self, symbol: str, day: int) -> tuple[np.ndarray, list[str]]:
        """The day's open times (ascending) and formatted rows (descending, newest first)."""

        def make() -> tuple[np.ndarray, list[str]]:
            rows = self.day_rows(symbol, day)
            text = format_rows(rows[::-1], self.decimals(symbol))
            return rows[:, 0].astype(np.int64), text

        with self._lock:
            return self._cached(self._text, (symbol, day), make)

    def _daily_row(self, symbol: str, day: int) -> np.ndarray:
        """One closed day aggregated (shape (0, 7) when the day has no rows)."""
        key = (symbol, day)
        with self._lock:
            hit = self._daily.get(key)
            if hit is None:
                hit = self._daily[key] = iv.aggregate(self.day_rows(symbol, day), "D")
            return hit

    # -- clock-limited views -------------------------------------------------------------
    def forming(self, symbol: str, open_ms: int, now_ms: int) -> np.ndarray | None:
        """The 1m candle open at `now_ms` (None if the source has no such minute)."""
        rows = self.day_rows(symbol, open_ms // DAY_MS)
        i = int(np.searchsorted(rows[:, 0], open_ms))
        if i >= len(rows) or rows[i, 0] != open_ms:
            return None
        price_dec = self.decimals(symbol)
        f = min(max((now_ms - open_ms) / MINUTE_MS, 0.0), 1.0)
        tick = 10.0 ** -price_dec[0]
        return synthetic.partial(rows[i], f, tick, price_dec[0], price_dec[1:])

    def minutes(self, symbol: str, a_ms: int, b_ms: int, now_ms: int) -> np.ndarray:
        """1m rows with open time in [a, b) that exist at `now_ms` (the forming one partial)."""
        now_open = now_ms // MINUTE_MS * MINUTE_MS
        b_ms = min(b_ms, now_open + MINUTE_MS)
        if b_ms <= a_ms:
            return np.empty((0, 7))
        parts = []
        for day in range(a_ms // DAY_MS, (b_ms - 1) // DAY_MS + 1):
            rows = self.day_rows(symbol, day)
            i0, i1 = np.searchsorted(rows[:, 0], [a_ms, min(b_ms, now_open)])
            parts.append(rows[i0:i1])
        if a_ms <= now_open < b_ms:
            row = self.forming(symbol, now_open, now_ms)
            if row is not None:
                parts.append(row[None, :])
        return np.concatenate(parts) if parts else np.empty((0, 7))

    def days(self, symbol: str, d0: int, d1: int, now_ms: int) -> np.ndarray:
        """Daily summaries for days d0..d1 (inclusive) as of `now_ms`."""
        today = now_ms // DAY_MS
        parts = [self._daily_row(symbol, d) for d in range(d0, min(d1, today - 1) + 1)]
        if d0 <= today <= d1:
            parts.append(
                iv.aggregate(self.minutes(symbol, today * DAY_MS, now_ms + 1, now_ms), "D")
            )
        return np.concatenate(parts) if parts else np.empty((0, 7))

    def candles(self, symbol: str, interval: str, a_ms: int, b_ms: int, now_ms: int) -> np.ndarray:
        """Candles of `interval` whose bucket opens in [a, b), as of `now_ms`."""
        if iv.length_ms(interval) is not None and interval not in ("D", "W"):
            return iv.aggregate(self.minutes(symbol, a_ms, b_ms, now_ms), interval)
        daily = self.days(symbol, a_ms // DAY_MS, (b_ms - 1) // DAY_MS, now_ms)
        return iv.aggregate(daily, interval)

    def candle(self, symbol: str, interval: str, open_ms: int, now_ms: int) -> np.ndarray | None:
        rows = self.candles(symbol, interval, open_ms, iv.close_ms(open_ms, interval), now_ms)
        return rows[0] if len(rows) else None

    # -- the kline endpoint --------------------------------------------------------------
    def kline(
        self,
        symbol: str,
        interval: str,
        start: int | None,
        end: int | None,
        limit: int,
        now_ms: int,
    ) -> list[str]:
        """Formatted rows, newest first, with Bybit's start/end/limit semantics (module doc)."""
        first, last = self.source.span(symbol)
        newest = now_ms if last is None else min(now_ms, last)
        if newest < first:
            return []
        lo = iv.floor_open(first, interval)
        hi = iv.floor_open(newest, interval)
        if start is not None:
            lo = max(lo, iv.ceil_open(start, interval))
        if end is not None:
            hi = min(hi, iv.floor_open(end, interval))
        if lo > hi:
            return []
        forward = start is not None and end is None
        if interval == "1":
            return self._kline_1m(symbol, lo, hi, limit, forward, now_ms)
        return self._kline_agg(symbol, interval, lo, hi, limit, forward, now_ms)

    def _kline_agg(
        self, symbol: str, interval: str, lo: int, hi: int, limit: int, forward: bool, now: int
    ) -> list[str]:
        # Buckets without data (before a file starts, in its gaps) yield no candle, so widen
        # the window until `limit` candles are found or the range is exhausted.
        span = limit
        while True:
            if forward:
                a, b = lo, min(iv.shift(lo, span, interval), iv.shift(hi, 1, interval))
            else:
                a, b = max(lo, iv.shift(hi, 1 - span, interval)), iv.shift(hi, 1, interval)
            rows = self.candles(symbol, interval, a, b, now)
            exhausted = (b > hi) if forward else (a <= lo)
            if len(rows) >= limit or exhausted:
                break
            span *= 4
        rows = rows[:limit] if forward else rows[-limit:]
        return format_rows(rows[::-1], self.decimals(symbol))

    def _kline_1m(
        self, symbol: str, lo: int, hi: int, limit: int, forward: bool, now: int
    ) -> list[str]:
        now_open = now // MINUTE_MS * MINUTE_MS
        forming: list[str] = []
        if hi >= now_open:
            row = self.forming(symbol, now_open, now)
            if row is not None:
                forming = format_rows(row[None, :], self.decimals(symbol))
            hi = now_open - MINUTE_MS
        pieces: list[list[str]] = []
        need = limit
        if forward:
            for day in range(lo // DAY_MS, hi // DAY_MS + 1):
                if need <= 0:
                    break
                chunk = self._slice(symbol, day, lo, hi)
                if chunk:
                    chunk = chunk[-need:]
                    pieces.append(chunk)
                    need -= len(chunk)
            if need > 0 and forming:
                pieces.append(forming)
            return [row for piece in reversed(pieces) for row in piece]
        if forming:
            pieces.append(forming)
            need -= 1
        for day in range(hi // DAY_MS, lo // DAY_MS - 1, -1):
            if need <= 0:
                break
            chunk = self._slice(symbol, day, lo, hi)[:need]
            pieces.append(chunk)
            need -= len(chunk)
        return [row for piece in pieces for row in piece]

    def _slice(self, symbol: str, day: int, lo: int, hi: int) -> list[str]:
        """Formatted closed rows of `day` with open in [lo, hi], newest first."""
        times, text = self._day_text(symbol, day)
        i0 = int(np.searchsorted(times, lo, side="left"))
        i1 = int(np.searchsorted(times, hi, side="right"))
        n = len(times)
        return text[n - i1 : n - i0]

    # -- WebSocket pushes ----------------------------------------------------------------
    def push_values(
        self, symbol: str, interval: str, open_ms: int, now_ms: int
    ) -> list[str] | None:
        """open, high, low, close, volume, turnover strings of one candle, or None."""
        row = self.candle(symbol, interval, open_ms, now_ms)
        return None if row is None else format_values(row, self.decimals(symbol))

    # -- late revisions ------------------------------------------------------------------
    def revise(self, symbol: str, open_ms: int, values: dict[str, float], now_ms: int) -> list[str]:
        """Change an already-closed 1m candle in place (same open time, new values)."""
        if not self.supports(symbol):
            raise MarketError(f"symbol {symbol!r} is not served by this exchange")
        if open_ms % MINUTE_MS:
            raise MarketError(f"open_time {open_ms} is not on the minute grid")
        if open_ms + MINUTE_MS > now_ms:
            raise MarketError(f"candle {open_ms} has not closed yet on the exchange clock")
        unknown = set(values) - set(_FIELDS)
        if unknown:
            raise MarketError(f"unknown field(s) {sorted(unknown)}; use {list(_FIELDS)}")
        day = open_ms // DAY_MS
        with self._lock:
            rows = self.day_rows(symbol, day)
            i = int(np.searchsorted(rows[:, 0], open_ms))
            if i >= len(rows) or rows[i, 0] != open_ms:
                raise MarketError(f"no candle at {open_ms} for {symbol}")
            new = rows[i, 1:].copy()
            for k, v in values.items():
                new[_FIELDS.index(k)] = float(v)
            self._revisions.setdefault(symbol, {})[open_ms] = new
            for cache in (self._rows, self._text, self._daily):
                cache.pop((symbol, day), None)
        return format_rows(np.r_[open_ms, new][None, :], self.decimals(symbol))

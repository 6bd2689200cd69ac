"""A test-only stand-in for pipeline.fastlane.engine.VenueLane, with its API and rules, so the
fast lane's process can be tested before (and apart from) the real engine.

It reads the replica's newest stored minute per symbol (`klines_1m`) as the real engine does,
follows the engine's rules for duplicates, revisions and gaps, and emits ONE deterministic
signal per used minute: BUY at the close, personality "double", timeframe "1m".
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pipeline.exchanges.protocol import ClosedCandle
from pipeline.fastlane.engine import DUPLICATE, GAP, REVISED, SILENT, USED, Fed

MINUTE = dt.timedelta(minutes=1)


class DoubleLane:
    def __init__(self, settings: Any, exchange: str, symbols: list[str]) -> None:
        self.exchange, self.symbols = exchange, list(symbols)
        self._expected: dict[str, dt.datetime | None] = dict.fromkeys(symbols)
        self._silent: dict[str, str] = {s: "not bootstrapped" for s in symbols}
        self._values: dict[tuple[str, dt.datetime], tuple[float, ...]] = {}
        self.fed: list[tuple[str, dt.datetime, str]] = []  # (symbol, open_time, status)

    def bootstrap(self, wh: Any, symbols: list[str] | None = None) -> dict[str, dt.datetime | None]:
        symbols = list(symbols or self.symbols)
        with wh.reader() as con:
            rows = con.execute(
                "SELECT symbol, max(open_time) FROM klines_1m WHERE exchange = ? GROUP BY symbol",
                [self.exchange],
            ).fetchall()
        newest = {s: t.astimezone(dt.UTC) for s, t in rows}
        out: dict[str, dt.datetime | None] = {}
        for s in symbols:
            last = newest.get(s)
            reason = self._silent.get(s, "")
            revised = reason.split(" ", 2)[1] if reason.startswith("revised ") else None
            if revised and last is not None and last < dt.datetime.fromisoformat(revised):
                out[s] = None  # the replica has not moved past the revision yet
                continue
            self._expected[s] = None if last is None else last + MINUTE
            if last is None:
                self._silent[s] = "nothing stored"
            else:
                self._silent.pop(s, None)
            out[s] = self._expected[s]
        return out

    def expected(self, symbol: str) -> dt.datetime | None:
        return None if symbol in self._silent else self._expected[symbol]

    def absent(self, symbol: str, start: dt.datetime, end: dt.datetime) -> None:
        """As the engine: silent until the replica is past `end` (the minutes' reason is
        written like a revision's so `bootstrap` waits for the replica the same way)."""
        self._silent[symbol] = f"revised {(end - MINUTE).isoformat()} absent at the venue"

    def silent(self) -> dict[str, str]:
        return dict(self._silent)

    def feed(self, c: ClosedCandle) -> Fed:
        fed = self._feed(c)
        self.fed.append((c.symbol, c.open_time, fed.status))
        return fed

    def feed_many(self, candles: list[ClosedCandle]) -> list[Fed]:
        return [self.feed(c) for c in candles]

    def _feed(self, c: ClosedCandle) -> Fed:
        s = c.symbol
        if s in self._silent:
            return Fed(SILENT, note=self._silent[s])
        want = self._expected[s]
        assert want is not None
        values = (c.open, c.high, c.low, c.close, c.volume)
        if c.open_time < want:
            if self._values.get((s, c.open_time), values) == values:
                return Fed(DUPLICATE)
            self._silent[s] = f"revised {c.open_time.isoformat()} after use"
            return Fed(REVISED, note=self._silent[s])
        if c.open_time > want:
            return Fed(GAP, missing=(want, c.open_time), note="gap")
        self._values[(s, c.open_time)] = values
        self._expected[s] = c.open_time + MINUTE
        row = {
            "exchange": self.exchange,
            "symbol": s,
            "personality": "double",
            "timeframe": "1m",
            "open_time": c.open_time,
            "close_time": c.open_time + MINUTE,
            "action": "BUY",
            "confidence": 0.5,
            "price": c.close,
            "reasons": ["double"],
            "quality": "ok",
        }
        return Fed(USED, signals=[row])

"""Closing minutes of order flow from a live trade stream, and knowing which ones are whole.

Bybit pushes trades as they happen, ascending by time, and nothing from before a subscription.
So a minute has order flow only if the stream was up from before its open to after its close:
coverage of a symbol starts at the first minute opening at or after the `ts` of the first
message on a (re)connected stream (every trade after that push comes in a later one) and ends
at a disconnection, which drops the minutes still open. A minute closes when a message of its
symbol stamped at or past its end arrives (every trade of it has then arrived), or, for a
quiet symbol, `grace_ms` of exchange clock after its end. A covered minute without trades is
a row with zero volumes; a trade for a minute already closed is counted in `late` (the
minute's row is then short, and the `order_flow_1m` check against the candle flags it).
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

from pipeline.orderflow.aggregate import FLOW_COLUMNS, MINUTE_MS, minute_flow, trades_frame

GRACE_MS = 5_000


class MinuteCollector:
    """Trades of `symbols` in, closed covered minutes out (thread-safe: the stream's thread
    adds, another closes)."""

    def __init__(
        self, symbols: list[str], qty_steps: dict[str, float | None], grace_ms: int = GRACE_MS
    ) -> None:
        self.symbols = set(symbols)
        self.qty_steps = qty_steps
        self.grace_ms = grace_ms
        self._lock = threading.Lock()
        self._from: dict[str, int | None] = dict.fromkeys(symbols)  # next minute to close
        self._first: dict[str, int] = {}  # where the current coverage began
        self._seen: dict[str, int] = {}  # newest message ts per symbol
        self._trades: dict[str, dict[int, list[dict[str, Any]]]] = {s: {} for s in symbols}
        self.late = 0

    def interrupted(self) -> None:
        """The stream (re)connects: what was open is incomplete, coverage starts again."""
        with self._lock:
            for s in self.symbols:
                self._from[s] = None
                self._trades[s].clear()
            self._seen.clear()

    def add(self, ts: int, items: list[dict[str, Any]]) -> None:
        """One pushed message: its `ts` (exchange ms) and trade items (one symbol's)."""
        with self._lock:
            for t in items:
                s = t.get("s")
                if s not in self.symbols:
                    continue
                start = self._from[s]
                if start is None:  # the first message since (re)connecting
                    start = self._from[s] = self._first[s] = -(-ts // MINUTE_MS) * MINUTE_MS
                minute = int(t["T"]) // MINUTE_MS * MINUTE_MS
                if minute >= start:
                    self._trades[s].setdefault(minute, []).append(t)
                elif minute >= self._first[s]:  # its minute was closed already
                    self.late += 1
            for t in items[:1]:
                s = t.get("s")
                if s in self.symbols:
                    self._seen[s] = max(self._seen.get(s, 0), ts)

    def closed_through(self) -> int | None:
        """Every covered minute opening before this (exchange ms) is closed; None while no
        symbol is covered (nothing is coming)."""
        with self._lock:
            open_from = [m for m in self._from.values() if m is not None]
        return min(open_from) if open_from else None

    def close(self, now_ms: int) -> list[dict[str, Any]]:
        """The covered minutes that closed by `now_ms` (exchange clock), as journal rows."""
        collected = dt.datetime.now(dt.UTC)
        rows: list[dict[str, Any]] = []
        items: list[dict[str, Any]] = []
        with self._lock:
            for s in sorted(self.symbols):
                start = self._from[s]
                if start is None:
                    continue
                until = max(self._seen.get(s, 0), now_ms - self.grace_ms)
                end = until // MINUTE_MS * MINUTE_MS  # minutes opening before this have closed
                for minute in range(start, end, MINUTE_MS):
                    got = self._trades[s].pop(minute, None)
                    if got:
                        items += got
                    else:
                        rows.append(_empty(s, minute))
                self._from[s] = max(start, end)
        if items:
            rows += minute_flow(trades_frame(items)).to_dicts()
        for r in rows:
            r["qty_step"] = self.qty_steps.get(r["symbol"])
            r["collected_at"] = collected
        return sorted(rows, key=lambda r: (r["symbol"], r["open_time"]))


def _empty(symbol: str, minute: int) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(FLOW_COLUMNS, 0.0)
    row.update(vwap=None, price_low=None, price_high=None, trade_count=0, symbol=symbol)
    row["open_time"] = dt.datetime.fromtimestamp(minute / 1000, dt.UTC)
    return row

"""Hyperliquid's `WS /ws` on the replay port: the `candle` channel (format in
`hyperliquid_face.py`).

The framing, output and idle handling are the Bybit session's (`ws.WsSession`); only the
messages differ. On connect the server says `Websocket connection established.` (as
Hyperliquid does, and as the SDK expects). A candle subscription pushes the forming candle at
once and every `push_s` wall seconds; when the replay's clock passes a minute it pushes the
final values of the candle(s) that closed (at most the last three when the clock jumps), then
the new forming one.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from pipeline.replay import intervals as iv
from pipeline.replay.hyperliquid_face import INTERVALS, candles
from pipeline.replay.ws import ACK_DELAY_S, IDLE_S, WsSession


@dataclass
class _Candles:
    coin: str
    interval: str
    open_ms: int | None = None
    last_push: float = 0.0


@dataclass(eq=False)
class HlWsSession(WsSession):
    """One client of the Hyperliquid WebSocket."""

    async def run(self, head: bytes) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.0, self._greet)
        await super().run(head)

    def _greet(self) -> None:
        if self.proto is not None and not self.closed:
            self.proto.send_text(b"Websocket connection established.")
            self._flush()

    def _on_text(self, text: str) -> None:
        self.last_seen = time.monotonic()
        try:
            msg = json.loads(text)
            if not isinstance(msg, dict):
                raise ValueError
        except ValueError:
            why = f"Error parsing JSON into valid websocket request: {text[:100]}"
            self.send({"channel": "error", "data": why})
            return
        method = msg.get("method")
        self.stats[f"ws_op hl_{method}"] += 1
        if method == "ping":
            self.send({"channel": "pong"})
        elif method in ("subscribe", "unsubscribe"):
            loop = asyncio.get_running_loop()
            loop.call_later(ACK_DELAY_S, self._subscription, method, msg.get("subscription"))
        else:
            self.send({"channel": "error", "data": f"Unknown method: {method}"})

    def _subscription(self, method: str, sub: Any) -> None:  # type: ignore[override]
        if self.closed:
            return
        ok = (
            isinstance(sub, dict)
            and sub.get("type") == "candle"
            and sub.get("interval") in INTERVALS
            and self.market.supports(str(sub.get("coin")))
        )
        if not ok:
            text = json.dumps(sub, separators=(",", ":"))
            self.send({"channel": "error", "data": f"Invalid subscription {text}"})
            return
        key = f"candle:{sub['coin']},{sub['interval']}"
        if method == "unsubscribe":
            self.subs.pop(key, None)
        elif key not in self.subs:
            self.subs[key] = _Candles(sub["coin"], sub["interval"])  # type: ignore[assignment]
        ack = {"method": method, "subscription": sub}
        self.send({"channel": "subscriptionResponse", "data": ack})
        self.push_due()

    def _push_candle(self, sub: _Candles, open_ms: int, now: int) -> None:
        row = self.market.candle(sub.coin, INTERVALS[sub.interval], open_ms, now)
        if row is not None:
            data = candles(sub.coin, sub.interval, row[None, :], self.market.decimals(sub.coin))
            self.send({"channel": "candle", "data": data[0]})

    def push_due(self) -> None:
        """Final values of candles that closed, then the forming one every `push_s`."""
        if self.closed:
            return
        wall = time.monotonic()
        if not self.subs and wall - self.last_seen > IDLE_S:
            self.close()
            return
        now = self.clock.now_ms()
        for sub in list(self.subs.values()):
            assert isinstance(sub, _Candles)
            bybit = INTERVALS[sub.interval]
            current = iv.floor_open(now, bybit)
            if sub.open_ms is not None and current > sub.open_ms:
                for k in (3, 2, 1):
                    o = iv.shift(current, -k, bybit)
                    if o >= sub.open_ms:
                        self._push_candle(sub, o, now)
            if sub.open_ms != current or wall - sub.last_push >= self.push_s:
                sub.open_ms, sub.last_push = current, wall
                self._push_candle(sub, current, now)

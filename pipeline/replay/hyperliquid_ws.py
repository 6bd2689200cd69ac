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
from dataclasses import dataclass
from typing import Any

from pipeline.replay.hyperliquid_face import INTERVALS, candles
from pipeline.replay.ws import ACK_DELAY_S, Sub, WsSession


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

    def _refuse_text(self, text: str) -> None:
        why = f"Error parsing JSON into valid websocket request: {text}"
        self.send({"channel": "error", "data": why})

    def _on_message(self, msg: dict[str, Any]) -> None:
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
            self.subs[key] = Sub(sub["interval"], sub["coin"])
        ack = {"method": method, "subscription": sub}
        self.send({"channel": "subscriptionResponse", "data": ack})
        self.push_due()

    def _grid_interval(self, sub: Any) -> str:
        return INTERVALS[sub.interval]

    def _push(self, topic: str, sub: Any, open_ms: int, confirm: bool, now: int) -> None:
        row = self.market.candle(sub.symbol, INTERVALS[sub.interval], open_ms, now)
        if row is not None:
            data = candles(sub.symbol, sub.interval, row[None, :], self.market.decimals(sub.symbol))
            self.send({"channel": "candle", "data": data[0]})

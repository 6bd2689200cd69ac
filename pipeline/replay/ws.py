"""Bybit v5 public WebSocket (`/v5/public/{linear,spot,inverse,option}`) on the replay port.

Framing is `websockets`' sans-I/O `ServerProtocol` over the asyncio streams that the HTTP side
already reads, so REST and WebSocket share one port. What pybit relies on is reproduced: the
text pong carries `"ret_msg":"pong"` (`op: pong` with `args` on the option channel, as Bybit
does), subscribe/unsubscribe acks echo `req_id` (sent 50 ms later, like a network round trip:
pybit stores a subscription only after sending it, so an instant ack would race it), and one
bad topic fails the whole batch with
`error:handler not found,topic:<topic>`. Kline topics `kline.{interval}.{symbol}` push a
`confirm=false` snapshot of the forming candle every `push_s` wall seconds and a
`confirm=true` one as soon as the exchange clock passes its close (at most the last three when
the clock jumps). Trade topics `publicTrade.{symbol}` push the trades stamped since the last
push (trades.py), before any confirm. A connection with no subscription and no client message
for 10 minutes is closed, like Bybit's.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.replay import intervals as iv
from pipeline.replay import trades

if TYPE_CHECKING:
    from pipeline.replay.clock import ExchangeClock
    from pipeline.replay.market import Market

CHANNELS = ("linear", "spot", "inverse", "option")
IDLE_S = 600.0
ACK_DELAY_S = 0.05
_TOPIC = re.compile(r"^kline\.([0-9A-Z]+)\.([A-Z0-9]{2,30})$")


@dataclass
class Sub:
    """One kline/candle subscription: its interval in the face's words, the symbol (or
    coin), and what was pushed last."""

    interval: str
    symbol: str
    open_ms: int | None = None
    last_push: float = 0.0


@dataclass(eq=False)
class WsSession:
    channel: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    market: Market
    clock: ExchangeClock
    push_s: float = 2.0
    stats: Counter[str] = field(default_factory=Counter)
    conn_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    subs: dict[str, Any] = field(default_factory=dict)  # topic -> subscription
    last_seen: float = field(default_factory=time.monotonic)
    proto: Any = None
    closed: bool = False
    _partial: bytes = b""
    _held: bool = False  # pushes queued, written at once by push_due

    async def run(self, head: bytes) -> None:
        from websockets.frames import Opcode
        from websockets.http11 import Request
        from websockets.server import ServerProtocol

        self.proto = ServerProtocol(max_size=1 << 20)
        self.proto.receive_data(head)
        request = next((e for e in self.proto.events_received() if isinstance(e, Request)), None)
        if request is None:
            self._flush()
            return
        response = self.proto.accept(request)
        self.proto.send_response(response)
        self._flush()
        if response.status_code != 101:
            return
        try:
            while not self.closed:
                data = await self.reader.read(65536)
                if not data:
                    self.proto.receive_eof()
                    self._flush()
                    break
                self.proto.receive_data(data)
                for event in self.proto.events_received():
                    if event.opcode is Opcode.TEXT or event.opcode is Opcode.CONT:
                        self._partial += event.data
                        if event.fin:
                            text, self._partial = self._partial.decode(errors="replace"), b""
                            self._on_text(text)
                self._flush()
                if self.proto.close_expected():
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed = True

    # -- output --------------------------------------------------------------------------
    def _flush(self) -> None:
        """Write what the protocol has to send in one write (one send call for a burst of
        messages, each still its own frame)."""
        if self._held:
            return
        data = []
        for chunk in self.proto.data_to_send():
            if self.writer.is_closing():
                return
            if chunk:
                data.append(chunk)
                continue
            if data:
                self.writer.write(b"".join(data))
                data = []
            if self.writer.can_write_eof():
                self.writer.write_eof()
        if data and not self.writer.is_closing():
            self.writer.write(b"".join(data))

    def send(self, obj: dict[str, Any]) -> None:
        if self.closed or self.proto is None:
            return
        try:
            self.proto.send_text(json.dumps(obj, separators=(",", ":")).encode())
            self._flush()
        except Exception:  # the peer went away between two pushes
            self.closed = True

    def close(self) -> None:
        if not self.closed and self.proto is not None:
            try:
                self.proto.send_close(1000, "idle")
                self._flush()
            except Exception:
                pass
        self.closed = True
        self.writer.close()

    # -- client messages -----------------------------------------------------------------
    def _ack(self, op: str, req_id: str, ok: bool, msg: str = "") -> None:
        self.send(
            {"success": ok, "ret_msg": msg, "conn_id": self.conn_id, "req_id": req_id, "op": op}
        )

    def _valid(self, topic: Any) -> Sub | trades.TradeSub | None:
        trade = trades.subscription(topic, self.market, self.clock.now_ms())
        if trade is not None:
            return trade
        m = _TOPIC.match(topic) if isinstance(topic, str) else None
        if not m or m.group(1) not in iv.INTERVALS or not self.market.supports(m.group(2)):
            return None
        return Sub(m.group(1), m.group(2))

    def _on_text(self, text: str) -> None:
        self.last_seen = time.monotonic()
        try:
            msg = json.loads(text)
            if not isinstance(msg, dict):
                raise ValueError
        except ValueError:
            self._refuse_text(text[:100])
            return
        self._on_message(msg)

    def _refuse_text(self, text: str) -> None:
        """Answer a message that is not a JSON object (`text`: its start)."""
        self._ack("", "", False, f"error:invalid request, {text}")

    def _on_message(self, msg: dict[str, Any]) -> None:
        op, req_id = msg.get("op", ""), str(msg.get("req_id", "") or "")
        self.stats[f"ws_op {op}"] += 1
        if op == "ping":
            if self.channel == "option":
                self.send(
                    {
                        "req_id": req_id,
                        "op": "pong",
                        "args": [str(self.clock.now_ms())],
                        "conn_id": self.conn_id,
                    }
                )
            else:
                self._ack("ping", req_id, True, "pong")
        elif op in ("subscribe", "unsubscribe"):
            # pybit records a subscription only after sending it; an instant loopback ack
            # would race that (KeyError in pybit's handler), so answer after a network RTT.
            loop = asyncio.get_running_loop()
            loop.call_later(ACK_DELAY_S, self._subscription, op, req_id, msg.get("args"))
        else:
            self._ack(str(op), req_id, False, f"error:Unrecognized request: {op}")

    def _subscription(self, op: str, req_id: str, args: Any) -> None:
        """Apply a (un)subscribe request and acknowledge it; one bad topic fails the batch."""
        if self.closed:
            return
        topics = args if isinstance(args, list) else [args] if args else []
        if op == "unsubscribe":
            for topic in topics:
                self.subs.pop(topic, None)
            self._ack(op, req_id, True)
            return
        subs = {t: self._valid(t) for t in topics}
        bad = [t for t, s in subs.items() if s is None]
        if bad or not topics:
            topic = bad[0] if bad else ""
            self._ack(op, req_id, False, f"error:handler not found,topic:{topic}")
            return
        for topic, sub in subs.items():
            if sub is not None and topic not in self.subs:
                self.subs[topic] = sub
        self._ack(op, req_id, True)
        self.push_due()

    # -- kline pushes --------------------------------------------------------------------
    def _push(self, topic: str, sub: Any, open_ms: int, confirm: bool, now: int) -> None:
        values = self.market.push_values(sub.symbol, sub.interval, open_ms, now)
        if values is None:
            return
        o, h, lo, c, v, t = values
        item = {
            "start": open_ms,
            "end": iv.close_ms(open_ms, sub.interval) - 1,
            "interval": sub.interval,
            "open": o,
            "close": c,
            "high": h,
            "low": lo,
            "volume": v,
            "turnover": t,
            "confirm": confirm,
            "timestamp": now,
        }
        self.send({"topic": topic, "data": [item], "ts": now, "type": "snapshot"})

    def _grid_interval(self, sub: Any) -> str:
        """The subscription's interval in Bybit's words (the replay's grid)."""
        return str(sub.interval)

    def push_due(self, forming: bool = True) -> None:
        """Send what is due now, in one write: the final values of candles that closed
        (confirm=true; at most the last three when the clock jumps), then, with `forming`, the
        forming one of each topic every `push_s` (the server sends every session's confirms
        before any forming candle)."""
        if self.closed:
            return
        wall = time.monotonic()
        if not self.subs and wall - self.last_seen > IDLE_S:
            self.close()
            return
        now = self.clock.now_ms()
        self._held = True
        try:
            for topic, sub in list(self.subs.items()):
                if isinstance(sub, trades.TradeSub):  # trades up to now, before any confirm
                    trades.push(self.market, self.send, topic, sub, now)
                    continue
                interval = self._grid_interval(sub)
                current = iv.floor_open(now, interval)
                if sub.open_ms is not None and current > sub.open_ms:
                    for k in (3, 2, 1):
                        o = iv.shift(current, -k, interval)
                        if o >= sub.open_ms:
                            self._push(topic, sub, o, True, now)
                if sub.open_ms != current:
                    sub.open_ms, sub.last_push = current, float("-inf")  # a new one: push it
            for topic, sub in list(self.subs.items()) if forming else []:
                if isinstance(sub, trades.TradeSub):
                    continue
                if wall - sub.last_push >= self.push_s and sub.open_ms is not None:
                    sub.last_push = wall
                    self._push(topic, sub, sub.open_ms, False, now)
        finally:
            self._held = False
        if not self.closed:
            try:
                self._flush()
            except Exception:  # the peer went away between two pushes
                self.closed = True

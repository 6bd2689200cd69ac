"""Hyperliquid's live 1m candles over the SDK's `WebsocketManager`, one call per closed candle.

Hyperliquid pushes the forming candle again and again; a candle is closed when a candle with a
later open time arrives for the same coin (its final values were the last ones pushed). The
WebSocket carries no clock, so a coin's newest candle waits for its successor. The SDK's
manager does not reconnect (its `run_forever` returns when the connection ends), so each
connection gets a fresh manager, after a backoff from the one retry policy, with the
subscriptions sent again; the candle that was forming when a connection dropped is not passed
on (its last values may not be final: the REST catch-up fills it), and no candle is passed on
twice.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

from pipeline.exchanges.protocol import ClosedCandle
from pipeline.exchanges.retry import Policy, backoff


class CandleStream:
    """A running `candle` subscription (interval 1m) for some coins; `close()` stops it."""

    def __init__(
        self,
        base_url: str,
        coins: list[str],
        on_candle: Callable[[ClosedCandle], None],
        policy: Policy,
    ) -> None:
        self.base_url, self.coins, self.policy = base_url, list(coins), policy
        self.connections = 0
        self._on_candle = on_candle
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._manager: Any = None
        self._pending: dict[str, dict[str, Any]] = {}
        self._passed: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="hyperliquid-stream", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from hyperliquid.websocket_manager import WebsocketManager

        failures = 0
        while not self._stop.is_set():
            opened = threading.Event()
            with self._lock:
                if self._stop.is_set():
                    return
                manager = WebsocketManager(self.base_url)
                manager.daemon = manager.ping_sender.daemon = True
                sdk_open = manager.ws.on_open

                def on_open(ws: Any, sdk_open: Any = sdk_open, opened: Any = opened) -> None:
                    opened.set()
                    self.connections += 1
                    sdk_open(ws)

                manager.ws.on_open = on_open
                for coin in self.coins:
                    sub = {"type": "candle", "coin": coin, "interval": "1m"}
                    manager.subscribe(sub, self._message)
                self._pending.clear()
                self._manager = manager
                manager.start()
            manager.join()
            manager.stop_event.set()  # its ping thread would otherwise wait up to 50 s
            failures = 0 if opened.is_set() else failures + 1
            self._stop.wait(backoff(self.policy, failures + 1))

    def _message(self, msg: dict[str, Any]) -> None:
        data = msg.get("data")
        if not isinstance(data, dict) or data.get("i") != "1m":
            return
        coin, t = str(data.get("s")), data.get("t")
        if not isinstance(t, int):
            return
        with self._lock:
            prev = self._pending.get(coin)
            if prev is not None and t < prev["t"]:
                return  # an update of a candle already passed on
            self._pending[coin] = data
            done = prev if prev is not None and t > prev["t"] else None
            if done is None or self._passed.get(coin, -1) >= done["t"]:
                return
            self._passed[coin] = done["t"]
        self._on_candle(
            ClosedCandle(
                symbol=coin,
                open_time=dt.datetime.fromtimestamp(done["t"] / 1000, dt.UTC),
                open=float(done["o"]),
                high=float(done["h"]),
                low=float(done["l"]),
                close=float(done["c"]),
                volume=float(done["v"]),
                turnover=None,
            )
        )

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            manager = self._manager
        if manager is not None:
            manager.stop()
        self._thread.join(timeout=5)

"""Bybit's live 1m klines over pybit's public `WebSocket`, confirmed candles only.

pybit builds its URL from a module constant (`PUBLIC_WSS`); a subclass points `_connect` at
the endpoint's ws_url instead (the replay's `/v5/public/linear` in replay mode), which also
holds for pybit's own reconnects. pybit resubscribes after a reconnect; a candle confirmed
twice is passed on once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from pipeline.exchanges.protocol import ClosedCandle, ExchangeUnavailable

RETRIES = 5  # pybit's connection attempts (about a second each) before the stream gives up


class KlineStream:
    """A running `kline.1.<SYMBOL>` subscription over pybit's WebSocket."""

    def __init__(
        self,
        ws_url: str,
        category: str,
        symbols: list[str],
        on_candle: Callable[[ClosedCandle], None],
    ) -> None:
        from pybit.unified_trading import WebSocket

        class _At(WebSocket):  # pybit builds its URL from a module constant; point it here
            def _connect(self, url: str) -> None:
                super()._connect(ws_url)

        self._seen: dict[str, int] = {}
        self._on_candle = on_candle
        try:
            self._ws = _At(
                testnet=False, channel_type=category, retries=RETRIES, restart_on_error=True
            )
        except Exception as err:  # pybit's WebSocketTimeoutException after its retries
            raise ExchangeUnavailable(
                f"cannot open the Bybit kline stream at {ws_url} ({err}); start one with "
                "`signalbox replay` or point SIGNALBOX_BYBIT_WS at a reachable exchange"
            ) from None
        self._ws.kline_stream(interval=1, symbol=list(symbols), callback=self._message)

    def _message(self, msg: dict[str, Any]) -> None:
        symbol = str(msg.get("topic", "")).rsplit(".", 1)[-1]
        for k in msg.get("data") or []:
            if not k.get("confirm"):
                continue
            start = int(k["start"])
            if self._seen.get(symbol, -1) >= start:
                continue
            self._seen[symbol] = start
            turnover = k.get("turnover")
            self._on_candle(
                ClosedCandle(
                    symbol=symbol,
                    open_time=dt.datetime.fromtimestamp(start / 1000, dt.UTC),
                    open=float(k["open"]),
                    high=float(k["high"]),
                    low=float(k["low"]),
                    close=float(k["close"]),
                    volume=float(k["volume"]),
                    turnover=None if turnover is None else float(turnover),
                )
            )

    def close(self) -> None:
        self._ws.exit()

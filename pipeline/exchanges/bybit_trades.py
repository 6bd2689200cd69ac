"""Bybit's public trades over pybit's `WebSocket` (`publicTrade.<SYMBOL>`), and each symbol's
qty step from the instrument list: what the trade collector (pipeline/runtime/trades.py)
needs from the venue.

Like the kline stream (bybit_stream.py) it points pybit's `_connect` at the endpoint's ws_url
(the replay's `/v5/public/linear` in replay mode); every (re)connection is also reported to
`on_connect`, because trades pushed while a connection was down are gone: Bybit sends no
history on subscribe, so the collector's coverage restarts after each one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.exchanges.bybit_stream import RETRIES
from pipeline.exchanges.protocol import ExchangeUnavailable

if TYPE_CHECKING:
    from pipeline.exchanges.bybit import BybitClient


class TradeStream:
    """A running `publicTrade.<SYMBOL>` subscription; `on_trades` gets each message (its
    `ts` and `data` items, ascending by time) on pybit's thread."""

    def __init__(
        self,
        client: BybitClient,
        symbols: list[str],
        on_trades: Callable[[int, list[dict[str, Any]]], None],
        on_connect: Callable[[], None],
    ) -> None:
        from pybit.unified_trading import WebSocket

        ws_url = str(client.ws_url)

        class _At(WebSocket):  # pybit builds its URL from a module constant; point it here
            def _connect(self, url: str) -> None:
                on_connect()
                super()._connect(ws_url)

        self._on_trades = on_trades
        try:
            self._ws = _At(
                testnet=False, channel_type=client.category, retries=RETRIES, restart_on_error=True
            )
        except Exception as err:  # pybit's WebSocketTimeoutException after its retries
            raise ExchangeUnavailable(
                f"cannot open the Bybit trade stream at {ws_url} ({err}); start one with "
                "`signalbox replay` or point SIGNALBOX_BYBIT_WS at a reachable exchange"
            ) from None
        self._ws.trade_stream(symbol=list(symbols), callback=self._message)

    def _message(self, msg: dict[str, Any]) -> None:
        self._on_trades(int(msg.get("ts") or 0), list(msg.get("data") or []))

    def close(self) -> None:
        self._ws.exit()


def trade_stream(
    client: BybitClient,
    symbols: list[str],
    on_trades: Callable[[int, list[dict[str, Any]]], None],
    on_connect: Callable[[], None],
) -> TradeStream:
    return TradeStream(client, symbols, on_trades, on_connect)


def qty_steps(client: BybitClient, symbols: list[str]) -> dict[str, float | None]:
    """Each symbol's `lotSizeFilter.qtyStep` from the instrument list (None where the list
    has none: the order-flow check then says it cannot compare that symbol)."""
    steps: dict[str, float | None] = dict.fromkeys(symbols)
    for item in client.instruments_info():
        symbol = item.get("symbol")
        step = (item.get("lotSizeFilter") or {}).get("qtyStep")
        if symbol in steps and step:
            steps[symbol] = float(step)
    return steps

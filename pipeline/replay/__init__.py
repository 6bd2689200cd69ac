"""The replay exchange: a Bybit face (v5 REST klines, server time, instruments, the public
kline WebSocket) and a Hyperliquid face (`POST /info`, the `WS /ws` candle channel), with one
exchange clock, late revisions and fault injection, on one loopback port.

    from pipeline.replay import ReplayExchange
    with ReplayExchange(seed=7) as ex:   # ex.rest_url, ex.ws_url
        ...

`signalbox replay` runs the same server in the foreground (`server.main`). Names are imported
lazily so that `pipeline.replay.intervals` stays cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.replay.clock import ExchangeClock
    from pipeline.replay.exchange import ReplayExchange

__all__ = ["ExchangeClock", "ReplayExchange"]


def __getattr__(name: str) -> Any:
    if name == "ReplayExchange":
        from pipeline.replay.exchange import ReplayExchange

        return ReplayExchange
    if name == "ExchangeClock":
        from pipeline.replay.clock import ExchangeClock

        return ExchangeClock
    raise AttributeError(name)

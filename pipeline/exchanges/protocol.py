"""What the pipeline needs from an exchange, and nothing more.

Every venue (`bybit`, `hyperliquid`, ...) is one module in this package whose client class
satisfies `Exchange`. The pipeline only ever talks to this protocol, so adding a venue is one
module plus its face on the replay exchange (see the README, "Adding an exchange").

Candle frames are 1-minute, CLOSED candles as a polars frame with `KLINE_COLUMNS`
(pipeline/candles/timeframes.py), sorted by
(symbol, open_time), unique; times are UTC `Datetime("us", "UTC")`; `turnover` is null where
the venue does not report it. Symbols are the venue's own names (`BTCUSDT` on Bybit, `BTC` on
Hyperliquid). Errors are the `ExchangeError` family below, whatever the venue's client raises.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import polars as pl

    from pipeline.context.legs import Leg


class ExchangeError(RuntimeError):
    """An exchange call failed; the message says what was asked, of whom, and what failed."""


class InvalidRequest(ExchangeError):
    """The exchange refused the request itself (unknown symbol, bad interval): not retried."""

    def __init__(self, message: str, ret_code: int | None = None, ret_msg: str = "") -> None:
        super().__init__(message)
        self.ret_code = ret_code
        self.ret_msg = ret_msg


class ExchangeUnavailable(ExchangeError):
    """Still failing after the retry policy gave up, or nothing listens at the URL."""


class MalformedResponse(ExchangeError):
    """The exchange answered something that is not what its API documents."""


class Unsupported(ExchangeError):
    """The venue does not offer this data (or Signalbox does not fetch it from this venue):
    said, never skipped silently. `data` names what was asked (e.g. `funding_rates`)."""

    def __init__(self, venue: str, data: str, why: str) -> None:
        super().__init__(f"{venue} cannot supply {data}: {why}")
        self.venue, self.data, self.why = venue, data, why


@dataclass(frozen=True)
class Endpoint:
    """The home's source as decided once (pipeline.exchanges.sources): kind ("live" for the
    live venues, "replay"), the replay's or Bybit's URLs, the warehouse id and a label."""

    kind: str
    rest_url: str
    ws_url: str
    warehouse_id: str
    label: str


@dataclass(frozen=True)
class ClosedCandle:
    """One closed 1-minute candle pushed by a live stream."""

    symbol: str
    open_time: dt.datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    turnover: float | None


class Stream(Protocol):
    """A running live subscription; `close()` stops it and its threads."""

    def close(self) -> None: ...


@runtime_checkable
class Exchange(Protocol):
    """A venue's market data, closed candles only."""

    name: ClassVar[str]  # the value of the warehouse's `exchange` column

    def server_time(self) -> dt.datetime:
        """The exchange clock, UTC."""
        ...

    def fetch_klines(
        self,
        symbol: str,
        start: dt.datetime,
        end: dt.datetime,
        *,
        closed_by: dt.datetime | None = None,
    ) -> pl.DataFrame:
        """Every closed 1m candle with open_time in [start, end) (and closed by `closed_by`)."""
        ...

    def latest_closed_open_time(self, symbol: str) -> dt.datetime | None:
        """Open time of the newest closed 1m candle: one short request, no retry loop."""
        ...

    def instruments(self) -> list[str]:
        """Every symbol the venue lists (its instrument list)."""
        ...

    def unlisted(self, symbols: list[str]) -> dict[str, str]:
        """The symbols the venue does not list, each with the venue's words."""
        ...

    def stream(self, symbols: list[str], on_candle: Callable[[ClosedCandle], None]) -> Stream:
        """Subscribe to the live 1m kline stream; `on_candle` gets each candle once closed."""
        ...

    def close(self) -> None: ...


class MarketContext(Protocol):
    """A venue's market context (issue 16): funding, open interest, the spot leg. A venue
    that cannot supply one raises `Unsupported` for it."""

    def fetch_funding(
        self, symbol: str, start: dt.datetime, end: dt.datetime, *, closed_by: dt.datetime | None
    ) -> pl.DataFrame:
        """(symbol, funding_time, funding_rate) settled in [start, end), by `closed_by`."""
        ...

    def fetch_open_interest(
        self, symbol: str, start: dt.datetime, end: dt.datetime, *, closed_by: dt.datetime | None
    ) -> pl.DataFrame:
        """(symbol, time, open_interest): 5-minute readings in [start, end), interval over."""
        ...

    def legs(self, symbols: list[str], known: dict[str, Leg] | None = None) -> dict[str, Leg]:
        """Each perpetual's spot pair, multiplier and funding interval as the venue states
        them (pipeline/context/legs.py; `known`: a previous answer, used if complete)."""
        ...

    def fetch_spot(
        self, symbol: str, start: dt.datetime, end: dt.datetime, *, closed_by: dt.datetime | None
    ) -> pl.DataFrame:
        """The spot 1m candles of perpetual `symbol`'s spot pair in [start, end), in the
        perpetual's units and under its symbol; `Unsupported` if it has none."""
        ...

    def close(self) -> None: ...

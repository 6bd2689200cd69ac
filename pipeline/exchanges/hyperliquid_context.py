"""Hyperliquid's market context: none of it, said by name (`Unsupported`), never skipped.

- funding: Hyperliquid settles funding every hour (`fundingHistory` on /info); Signalbox does
  not fetch it (yet), nor state its interval (`legs` describes nothing here);
- open interest: the public API has only the current value (`metaAndAssetCtxs`), no history;
- spot candles: Hyperliquid's spot market lists few coins, under other names (UBTC/USDC for
  BTC); no spot pair is matched to a perpetual here.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, NoReturn

from pipeline.exchanges.protocol import Unsupported

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.context.legs import Leg
    from pipeline.exchanges.protocol import Endpoint

VENUE = "hyperliquid"
WHY = {
    "funding_rates": "it settles funding hourly (fundingHistory), and Signalbox does not fetch it",
    "open_interest_5m": "its public API has only the current open interest "
    "(metaAndAssetCtxs), no history",
    "spot_klines_1m": "its spot market names coins differently (UBTC/USDC) and lists few; no "
    "spot pair is matched to a perpetual",
}


class HyperliquidContext:
    """Refuses every market-context request with the venue's reason."""

    def _refuse(self, table: str) -> NoReturn:
        raise Unsupported(VENUE, table, WHY[table])

    def legs(self, symbols: list[str], known: dict[str, Leg] | None = None) -> dict[str, Leg]:
        """Nothing described: every table is refused below."""
        return {}

    def fetch_spot(
        self, symbol: str, start: dt.datetime, end: dt.datetime, *, closed_by: dt.datetime | None
    ) -> NoReturn:
        self._refuse("spot_klines_1m")

    def fetch_funding(
        self, symbol: str, start: dt.datetime, end: dt.datetime, *, closed_by: dt.datetime | None
    ) -> NoReturn:
        self._refuse("funding_rates")

    def fetch_open_interest(
        self, symbol: str, start: dt.datetime, end: dt.datetime, *, closed_by: dt.datetime | None
    ) -> NoReturn:
        self._refuse("open_interest_5m")

    def close(self) -> None:
        pass


def connect(settings: Settings, endpoint: Endpoint) -> HyperliquidContext:
    return HyperliquidContext()

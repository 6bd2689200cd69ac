"""The exchanges room: one module per venue behind `protocol.Exchange`, chosen by name.

`client(name, settings, endpoint)` is the one way the pipeline gets a venue's client: the
module `pipeline.exchanges.<name>` provides `connect(settings, endpoint) -> Exchange`. With a
replay source every venue is a face of the one replay exchange at `endpoint.rest_url`; with a
live source each venue uses the URLs of its own configuration section. `market_context` is
the same for a venue's funding, open interest and spot candles
(`pipeline.exchanges.<name>_context`, `protocol.MarketContext`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pipeline.markets import VENUES

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.exchanges.protocol import Endpoint, Exchange, MarketContext


def client(name: str, settings: Settings, endpoint: Endpoint) -> Exchange:
    """The client of venue `name` at the home's source."""
    if name not in VENUES:
        raise ValueError(f"unknown exchange {name!r}; known: {', '.join(VENUES)}")
    module = importlib.import_module(f"pipeline.exchanges.{name}")
    return module.connect(settings, endpoint)


def market_context(name: str, settings: Settings, endpoint: Endpoint) -> MarketContext:
    """The market-context client of venue `name` at the home's source."""
    if name not in VENUES:
        raise ValueError(f"unknown exchange {name!r}; known: {', '.join(VENUES)}")
    module = importlib.import_module(f"pipeline.exchanges.{name}_context")
    return module.connect(settings, endpoint)

"""The fast lane's compute for one venue: a bounded in-memory window per symbol and timeframe,
updated on each closed minute, and the personalities evaluated on it with the very code the
`signals` asset runs (pipeline.candles, pipeline.indicators, pipeline.strategy).

INTERFACE STUB (issue 14): the process (pipeline/runtime/fastlane.py) codes against this API;
the engine work package fills it in. Rules the process relies on:

- `bootstrap` loads windows from the warehouse REPLICA (the pipeline's data is the truth the
  fast lane must agree with); a symbol without stored candles stays silent.
- `feed` takes candles in open-time order per symbol. The minute it expects is used; an
  older one is a duplicate (same values: ignored) or a revision (different values: the symbol
  goes silent until `bootstrap` reloads it past that minute); a newer one is a gap: nothing is
  used and `missing` names the minutes to fetch over REST and feed first.
- When unsure (silent), it publishes nothing: the pipeline's signal arrives as today.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.exchanges.protocol import ClosedCandle

USED, DUPLICATE, REVISED, GAP, SILENT = "used", "duplicate", "revised", "gap", "silent"


@dataclass(frozen=True)
class Fed:
    """What one candle did: its `status`, the signal rows it produced (dicts with the `signals`
    table's columns plus `exchange`, as `outbox.publish` and `journal.append` take them), the
    minutes [start, end) to fetch first for a gap, and a note for the log."""

    status: str
    signals: list[dict[str, Any]] = field(default_factory=list)
    missing: tuple[dt.datetime, dt.datetime] | None = None
    note: str = ""


class VenueLane:
    """One venue's symbols in the fast lane."""

    def __init__(self, settings: Settings, exchange: str, symbols: list[str]) -> None:
        raise NotImplementedError

    def bootstrap(self, wh: Any, symbols: list[str] | None = None) -> dict[str, dt.datetime | None]:
        """(Re)load the windows of `symbols` (default: all) from the warehouse's replica (`wh`:
        a warehouse.Warehouse; read through `wh.reader()`); per symbol, the open_time of the
        next minute it expects (None: nothing stored yet, the symbol stays silent)."""
        raise NotImplementedError

    def expected(self, symbol: str) -> dt.datetime | None:
        """Open time of the next minute `symbol` needs (None while silent)."""
        raise NotImplementedError

    def silent(self) -> dict[str, str]:
        """Silent symbols, each with why (e.g. "revised 12:03 after use")."""
        raise NotImplementedError

    def feed(self, candle: ClosedCandle) -> Fed:
        """Take one closed 1m candle; see the module's rules."""
        raise NotImplementedError

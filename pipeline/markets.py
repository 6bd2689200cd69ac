"""Markets: a symbol on a venue, and how they are written in configuration and variables.

Every table, check and message keys a series by (exchange, symbol): Bybit's BTCUSDT and
Hyperliquid's BTC are different markets, and so would be a BTC on both venues.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.yamlfile import quote

# Every venue: each has a module pipeline/exchanges/<venue>.py whose `connect` makes its client,
# and a face on the replay exchange. Extend when adding a venue (README: "Adding an exchange").
VENUES = ("bybit", "hyperliquid")
VENUE_NAMES = {"bybit": "Bybit", "hyperliquid": "Hyperliquid"}  # as people write them
SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,30}$")
# What a symbol looks like on each venue (a venue not listed here uses SYMBOL_RE).
SYMBOL_FORMATS: dict[str, tuple[re.Pattern[str], str]] = {
    "bybit": (SYMBOL_RE, "BTCUSDT"),
    "hyperliquid": (re.compile(r"^k?[A-Z0-9]{1,20}$"), "BTC or kPEPE"),  # coins, k = 1000x
}


@dataclass(frozen=True, order=True)
class Market:
    """One symbol on one venue: what candles, indicators and signals are keyed by."""

    exchange: str
    symbol: str

    def __str__(self) -> str:
        return f"{self.exchange}:{self.symbol}"


def parse_markets(text: str) -> dict[str, list[str]]:
    """`BTCUSDT,ETHUSDT` (Bybit's, as before venues) or `bybit:BTCUSDT,hyperliquid:BTC` to the
    `exchanges` mapping. Bare and Bybit symbols are upper-cased; coins keep their case (kPEPE).
    Validation is the configuration's, so a bad venue or symbol is named there."""
    out: dict[str, list[str]] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        venue, _, symbol = item.rpartition(":")
        venue = venue.strip().lower() or "bybit"
        symbol = symbol.strip().upper() if venue == "bybit" else symbol.strip()
        out.setdefault(venue, []).append(symbol)
    return out


def by_venue(markets: list[Market]) -> dict[str, list[str]]:
    """Markets grouped by exchange, symbols in order."""
    out: dict[str, list[str]] = {}
    for m in sorted(markets):
        out.setdefault(m.exchange, []).append(m.symbol)
    return out


def format_markets(markets: list[Market]) -> str:
    """`markets` as `parse_markets` reads them back (SIGNALBOX_SYMBOLS for run processes)."""
    return ",".join(str(m) for m in markets)


def check_exchanges(v: dict[str, list[str]], known: Sequence[str]) -> None:
    """Raise ValueError naming the first unknown venue (with a did-you-mean) or bad symbol."""
    if not v:
        raise ValueError("needs at least one exchange and its symbols, e.g. {bybit: [BTCUSDT]}")
    for venue, symbols in v.items():
        if venue not in known:
            near = difflib.get_close_matches(venue, known, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ValueError(
                f"{quote(venue)} is not a known exchange ({hint}known: {', '.join(known)})"
            )
        pattern, like = SYMBOL_FORMATS.get(venue, (SYMBOL_RE, "BTCUSDT"))
        if not symbols:
            raise ValueError(f"{venue}: needs at least one symbol, e.g. [{like}]")
        for s in symbols:
            if not pattern.match(s):
                raise ValueError(
                    f"{venue}: {quote(s)} is not a symbol there: use symbols like {like}"
                )
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"{venue}: lists a symbol twice")


def find_market(text: str, configured: Sequence[Market]) -> Market:
    """One market as a person names it (`signalbox backtest --symbol`): `venue:SYMBOL` as
    written, configured or not (checked as configuration is), or a bare symbol that names
    exactly one configured market (case aside: `btc` finds hyperliquid:BTC). Raises ValueError,
    one line naming the configured markets, for a bare symbol matching none or several."""
    listed = ", ".join(str(m) for m in configured)
    if ":" in text:
        v = parse_markets(text)
        check_exchanges(v, VENUES)
        found = [Market(venue, s) for venue, symbols in v.items() for s in symbols]
        if len(found) != 1:
            raise ValueError(f"{quote(text)} names {len(found)} markets: give one, e.g. {listed}")
        return found[0]
    same = [m for m in configured if m.symbol.upper() == text.strip().upper()]
    if len(same) == 1:
        return same[0]
    if same:
        raise ValueError(
            f"{quote(text)} is configured on {len(same)} venues "
            f"({', '.join(str(m) for m in same)}): name one as venue:SYMBOL"
        )
    raise ValueError(
        f"{quote(text)} is not a configured market (configured: {listed}); for another, "
        f"name its venue as venue:SYMBOL (venues: {', '.join(VENUES)})"
    )

"""Markets: a symbol on a venue, and how they are written in configuration and variables.

Every table, check and message keys a series by (exchange, symbol): Bybit's BTCUSDT and
Hyperliquid's BTC are different markets, and so would be a BTC on both venues.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import jsonfile
from pipeline.yamlfile import quote

ALL = "all"  # `exchanges: {bybit: all}`: every trading USDT perpetual of the venue
ALL_VENUES = ("bybit",)  # the venues whose `all` Signalbox can resolve
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


Symbols = list[str] | str  # a venue's list, or `ALL`


def parse_markets(text: str) -> dict[str, Symbols]:
    """`BTCUSDT,ETHUSDT` (Bybit's, as before venues) or `bybit:BTCUSDT,hyperliquid:BTC` to the
    `exchanges` mapping; `all` (or `bybit:all`) alone is every trading USDT perpetual. Bare and
    Bybit symbols are upper-cased; coins keep their case (kPEPE). Validation is the
    configuration's, so a bad venue or symbol is named there."""
    out: dict[str, list[str]] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        venue, _, symbol = item.rpartition(":")
        venue = venue.strip().lower() or "bybit"
        symbol = symbol.strip().upper() if venue == "bybit" else symbol.strip()
        out.setdefault(venue, []).append(symbol)
    return {v: ALL if [x.lower() for x in s] == [ALL] else s for v, s in out.items()}


def by_venue(markets: list[Market]) -> dict[str, list[str]]:
    """Markets grouped by exchange, symbols in order."""
    out: dict[str, list[str]] = {}
    for m in sorted(markets):
        out.setdefault(m.exchange, []).append(m.symbol)
    return out


def format_markets(markets: list[Market]) -> str:
    """`markets` as `parse_markets` reads them back (SIGNALBOX_SYMBOLS for run processes)."""
    return ",".join(str(m) for m in markets)


def normalize_all(v: Any) -> Any:
    """The `exchanges` mapping as written, with a venue's `all` (any case) as `ALL`; a venue
    given some other single word is refused here, in one line (not as pydantic's union error)."""
    if not isinstance(v, dict):
        return v
    out = {}
    for venue, symbols in v.items():
        if isinstance(symbols, str):
            if symbols.strip().lower() != ALL:
                raise ValueError(
                    f"{venue}: {quote(symbols)} is neither a list of symbols nor `all` "
                    f"(e.g. {venue}: [{SYMBOL_FORMATS.get(venue, (0, 'BTCUSDT'))[1]}])"
                )
            symbols = ALL
        out[venue] = symbols
    return out


def check_exchanges(v: dict[str, Symbols], known: Sequence[str]) -> None:
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
        if symbols == ALL:
            if venue not in ALL_VENUES:
                raise ValueError(
                    f"{venue}: `all` is supported for {', '.join(ALL_VENUES)} only; list the "
                    f"symbols, e.g. [{like}]"
                )
            continue
        if any(s.lower() == ALL for s in symbols):
            raise ValueError(f"{venue}: `all` stands alone ({venue}: all), not in a list")
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


# -- `all`: a venue's whole market -----------------------------------------------------------
def universe_path(home: Path, venue: str) -> Path:
    """Where the home keeps what a venue's `all` resolved to (pipeline/exchanges/universe.py)."""
    return home / "universe" / f"{venue}.json"


def resolved_universe(home: Path, venue: str) -> dict[str, Any] | None:
    """The home's last resolution of `venue: all`, or None before the first one."""
    try:
        return jsonfile.read(universe_path(home, venue), {"symbols", "resolved_at"})
    except jsonfile.Unreadable as err:
        raise ValueError(f"{err}; delete it and it is resolved again on the next start") from None


def universe_symbols(home: Path, venue: str, min_turnover_24h: float | None) -> list[str]:
    """The symbols `venue: all` resolved to, for these filters. Raises ValueError (one line,
    naming the fix) when the home has not resolved it yet or resolved it with another filter.
    A resolution older than a day is still used: commands that open the exchange refresh it."""
    rec = resolved_universe(home, venue)
    fix = "`signalbox up` or `signalbox backfill` resolves it from the exchange's instrument list"
    if rec is None:
        where = universe_path(home, venue)
        raise ValueError(
            f"exchanges: {venue}: all is not resolved in this home yet ({where} does not exist):"
            f" {fix}"
        )
    if rec.get("min_turnover_24h") != min_turnover_24h:
        raise ValueError(
            f"exchanges: {venue}: all was resolved with min_turnover_24h = "
            f"{rec.get('min_turnover_24h')} ({rec['resolved_at'][:19]}), but {venue}."
            f"min_turnover_24h is now {min_turnover_24h}: {fix} again"
        )
    return list(rec["symbols"])


def universe_age(rec: dict[str, Any], now: dt.datetime | None = None) -> dt.timedelta:
    now = now or dt.datetime.now(dt.UTC)
    return now - dt.datetime.fromisoformat(rec["resolved_at"])


def describe_exchanges(exchanges: dict[str, Symbols]) -> str:
    """The configured markets as written (`bybit:all` for a whole venue), for messages made
    before a venue's `all` is resolved."""
    return ",".join(
        f"{venue}:{ALL}" if symbols == ALL else ",".join(f"{venue}:{s}" for s in sorted(symbols))
        for venue, symbols in sorted(exchanges.items())
    )


# -- a whole market for the replay exchange -------------------------------------------------
_COIN_NAMES = (
    "BTC ETH SOL XRP BNB DOGE ADA AVAX LINK DOT TRX TON LTC BCH NEAR APT ARB OP SUI ATOM FIL "
    "ETC XLM HBAR ICP INJ SEI TIA RNDR IMX STX AAVE UNI MKR LDO CRV DYDX GMX SNX COMP ALGO EGLD "
    "SAND MANA AXS GALA APE CHZ FLOW KAVA RUNE THETA VET XTZ ZEC DASH NEO QTUM ONE ZIL"
)
_COINS = _COIN_NAMES.split()
_SYLLABLES = ("BA", "KO", "RI", "ZE", "LU", "MO", "NA", "TI", "VO", "XE", "DU", "FY", "GO", "PA")
# Instruments a whole synthetic market lists besides its USDT perpetuals, so a filter has
# something to drop: USDC-settled perpetuals (Bybit names them ...PERP) and one not yet trading.
UNIVERSE_EXTRAS = ("BTCPERP", "ETHPERP", "NEWCOINUSDT")


def synthetic_universe(n: int) -> list[str]:
    """`n` plausibly named USDT perpetuals for the replay's synthetic market (BTCUSDT and
    ETHUSDT first, then well-known coins, then made-up ones), plus `UNIVERSE_EXTRAS`. The same
    `n` always gives the same names."""
    names = [f"{c}USDT" for c in _COINS[:n]]
    i = 0
    while len(names) < n:
        k, word = i, ""
        for _ in range(3):
            k, r = divmod(k, len(_SYLLABLES))
            word += _SYLLABLES[(r * 5 + len(word)) % len(_SYLLABLES)]
        names.append(f"{word}USDT")
        i += 1
    return names + list(UNIVERSE_EXTRAS)

"""What a perpetual's market context needs to know of its instrument, from what the exchange
states (Bybit v5 `/v5/market/instruments-info`), never from its name alone:

- its spot pair, for the basis: the spot pair whose `baseCoin` and `quoteCoin` are the
  perpetual's (BTCUSDT -> BTCUSDT, multiplier 1). Bybit lists some perpetuals per 1000 (or
  10 000, 1 000 000) coins: `1000PEPEUSDT`'s baseCoin is `1000PEPE`, and no spot pair has that
  coin; its spot pair is the one of coin `PEPE` (`PEPEUSDT`), priced 1000x lower. So a baseCoin
  that is a power of ten (100 or more) followed by a coin that spot lists gives that pair and
  that multiplier. Where neither holds the configuration may name it
  (`bybit.spot_legs.<SYMBOL>: {symbol, multiplier}`, which wins, and must name a listed spot
  pair); otherwise the market has no spot leg, with a message saying how to configure one:
  its spot candles are not fetched and basis_bps stays NULL, never a wrong basis;
- its funding interval: `fundingInterval` in minutes (480 for most, 60, 120 or 240 for some),
  the grid its funding settles on. Not stated: None (the grid check names it unchecked).

The interval is the one stated now: a market whose interval changed has older days on the old
grid (an 8-hour grid is on a 4-hour one, the other way round it is flagged).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

_POWER_OF_TEN = re.compile(r"^(10{2,})([A-Z].*)$")


@dataclass(frozen=True)
class Leg:
    """A perpetual's spot pair (None: none, `why` says so and how to set one), how many spot
    coins one perpetual unit is (`multiplier`: the spot leg's prices are multiplied by it),
    its funding interval (None: not stated) and how the pair was found (`how`)."""

    spot: str | None
    multiplier: int
    funding_interval: dt.timedelta | None
    how: str

    def as_json(self) -> dict[str, Any]:
        minutes = self.funding_interval and int(self.funding_interval.total_seconds() // 60)
        return {"spot": self.spot, "multiplier": self.multiplier, "funding_minutes": minutes,
                "how": self.how}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Leg:
        minutes = d.get("funding_minutes")
        interval = dt.timedelta(minutes=int(minutes)) if minutes else None
        return cls(d.get("spot"), int(d["multiplier"]), interval, str(d["how"]))


def how_to_set(symbol: str) -> str:
    return (
        f"if its spot pair trades under another name, set `bybit: {{spot_legs: {{{symbol}: "
        "{symbol: <SPOT PAIR>, multiplier: <spot coins per perpetual unit>}}}` in the "
        "configuration; until then its spot candles are not fetched and basis_bps is NULL"
    )


def funding_interval(item: dict[str, Any]) -> dt.timedelta | None:
    """`fundingInterval` (minutes, a number or digits) as a duration; None if not stated."""
    raw = item.get("fundingInterval")
    minutes = raw if isinstance(raw, int) else int(raw) if str(raw or "").isdigit() else 0
    return dt.timedelta(minutes=minutes) if minutes > 0 else None


def resolve(
    venue: str,
    symbol: str,
    linear: dict[str, Any] | None,
    spot: list[dict[str, Any]],
    override: tuple[str, int] | None = None,
) -> Leg:
    """The leg of perpetual `symbol` from its `linear` instruments-info item (None: not
    listed), the `spot` listing and the configuration's `override` (spot symbol, multiplier)."""
    market = f"{venue}:{symbol}"
    interval = funding_interval(linear) if linear else None
    if override is not None:
        pair, mult = override
        if pair not in {str(i.get("symbol")) for i in spot}:
            why = f"{market}: bybit.spot_legs names spot pair {pair}, which {venue} spot"
            return Leg(None, 1, interval, why + " does not list (instruments-info category=spot)")
        return Leg(pair, mult, interval, f"configured: bybit.spot_legs.{symbol}")
    if linear is None:
        why = f"{market} is not in {venue}'s instruments-info (category=linear)"
        return Leg(None, 1, None, f"{why}: no spot pair can be derived; {how_to_set(symbol)}")
    base, quote = str(linear.get("baseCoin") or ""), str(linear.get("quoteCoin") or "")
    pairs = {(str(i.get("baseCoin")), str(i.get("quoteCoin"))): str(i["symbol"]) for i in spot}
    if (base, quote) in pairs:
        return Leg(pairs[base, quote], 1, interval, f"spot baseCoin {base}, quoteCoin {quote}")
    m = _POWER_OF_TEN.match(base)
    if m and (m.group(2), quote) in pairs:
        coin, mult = m.group(2), int(m.group(1))
        how = f"baseCoin {base} = {mult} x spot baseCoin {coin}, quoteCoin {quote}"
        return Leg(pairs[coin, quote], mult, interval, how)
    tried = f" (nor of coin {m.group(2)})" if m else ""
    why = (
        f"{market}: {venue} spot lists no pair of baseCoin {base!r}{tried} quoted in {quote!r} "
        f"(instruments-info category=spot), so no basis can be computed; {how_to_set(symbol)}"
    )
    return Leg(None, 1, interval, why)

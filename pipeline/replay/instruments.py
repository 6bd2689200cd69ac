"""The replay's instrument list and 24h tickers (Bybit v5 `/v5/market/instruments-info` and
`/v5/market/tickers`), for whatever symbols its source serves.

Every served symbol is listed. What an instrument is follows from its name, as on Bybit:
`...PERP` is a USDC-settled perpetual, `UNIVERSE_EXTRAS`' `NEWCOINUSDT` is not trading yet
(`PreLaunch`), every other one is a trading USDT perpetual; it funds every 8 hours unless
`context.FUNDING_MINUTES` says otherwise (`fundingInterval`, minutes, a JSON number as on
Bybit). With `category=spot` the list is the spot pairs (`spot_instrument`: `context.spot_name`
of each USDT perpetual, so `1000PEPEUSDT`'s is `PEPEUSDT`). The list pages like Bybit's:
`limit` 1-1000 (default 500), an opaque `nextPageCursor` that is empty on the last page.

A ticker's `lastPrice` is the newest 1m candle's close on the exchange clock; its
`turnover24h` is seeded per symbol and UTC day (BTC and ETH lead, the rest spread over four
orders of magnitude), so a turnover filter has something real to filter and the same seed
always gives the same market.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from pipeline.replay import synthetic
from pipeline.replay.context import funding_ms
from pipeline.replay.intervals import DAY_MS, MINUTE_MS
from pipeline.replay.market import Market

PRELAUNCH = frozenset({"NEWCOINUSDT"})
PAGE_DEFAULT, PAGE_MAX = 500, 1000
LAUNCH_MS = 1_585_699_200_000  # 2020-04-01, every synthetic instrument's launchTime
_LEADERS = {"BTCUSDT": 8.0e9, "ETHUSDT": 4.0e9, "BTCPERP": 3.0e8, "ETHPERP": 1.5e8}


class CursorError(ValueError):
    pass


def instrument(symbol: str, size_decimals: int = 3) -> dict[str, Any]:
    """One `result.list` item (the fields Signalbox reads, plus a few of Bybit's others); the
    qty step is the source's volume decimals (a trade's size is whole steps)."""
    usdc = symbol.endswith("PERP")
    quote = "USDC" if usdc else "USDT"
    base = symbol.removesuffix("PERP") if usdc else symbol.removesuffix("USDT")
    return {
        "symbol": symbol,
        "contractType": "LinearPerpetual",
        "status": "PreLaunch" if symbol in PRELAUNCH else "Trading",
        "baseCoin": base,
        "quoteCoin": quote,
        "settleCoin": quote,
        "launchTime": str(LAUNCH_MS),
        "priceScale": str(synthetic.price_decimals(symbol)),
        "lotSizeFilter": {"qtyStep": f"{10.0**-size_decimals:.{size_decimals}f}"},
        "fundingInterval": funding_ms(symbol) // MINUTE_MS,
    }


def spot_instrument(symbol: str, size_decimals: int = 3) -> dict[str, Any]:
    """One `category=spot` item: the pair's own coins (`PEPEUSDT`: baseCoin `PEPE`)."""
    return {
        "symbol": symbol,
        "baseCoin": symbol.removesuffix("USDT"),
        "quoteCoin": "USDT",
        "status": "Trading",
        "lotSizeFilter": {"basePrecision": f"{10.0**-size_decimals:.{size_decimals}f}"},
    }


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset={offset}".encode()).decode()


def _offset(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
        return int(text.removeprefix("offset="))
    except ValueError:
        raise CursorError(f"params error: invalid cursor {cursor!r}") from None


def instruments_page(
    symbols: list[str],
    q: dict[str, str],
    size_decimals: dict[str, int] | None = None,
    *,
    spot: bool = False,
) -> tuple[list[dict], str]:
    """One page of the sorted instrument list (`spot`: of spot pairs) for query `q`
    (`symbol`, `status`, `limit`, `cursor`), and the cursor of the next page ("" when it was
    the last)."""
    dec = size_decimals or {}
    make = spot_instrument if spot else instrument
    items = [make(s, dec.get(s, 3)) for s in sorted(symbols)]
    if q.get("symbol"):
        items = [i for i in items if i["symbol"] == q["symbol"]]
    if q.get("status"):
        items = [i for i in items if i["status"] == q["status"]]
    raw = q.get("limit") or str(PAGE_DEFAULT)
    if not raw.isdigit() or not 1 <= int(raw) <= PAGE_MAX:
        raise CursorError(f"params error: limit must be between 1 and {PAGE_MAX}, not {raw!r}")
    limit = int(raw)
    start = _offset(q["cursor"]) if q.get("cursor") else 0
    page = items[start : start + limit]
    more = start + limit < len(items)
    return page, _cursor(start + limit) if more else ""


def turnover_24h(seed: int, symbol: str, day: int) -> float:
    """The symbol's seeded 24h turnover in quote coin on UTC `day`."""
    level = _LEADERS.get(symbol)
    if level is None:  # log-uniform between 1e5 and 2e9
        u = synthetic._key(seed, "turnover24h", symbol) % 10_000 / 10_000
        level = 10 ** (5 + u * math.log10(2e4))
    wobble = synthetic._key(seed, "turnover24h", symbol, day) % 1000 / 1000  # +-20 % a day
    return round(level * (0.8 + 0.4 * wobble), 4)


def ticker(market: Market, seed: int, symbol: str, now_ms: int) -> dict[str, str]:
    """One `/v5/market/tickers` item: `lastPrice`, `turnover24h`, `volume24h` and the like."""
    rows = market.kline(symbol, "1", None, None, 1, now_ms)
    last = json.loads(rows[0])[4] if rows else "0"
    turnover = turnover_24h(seed, symbol, now_ms // DAY_MS)
    price = float(last) or 1.0
    return {
        "symbol": symbol,
        "lastPrice": last,
        "markPrice": last,
        "turnover24h": f"{turnover:.4f}".rstrip("0").rstrip("."),
        "volume24h": f"{turnover / price:.3f}".rstrip("0").rstrip("."),
    }

"""The replay exchange's Hyperliquid face: `POST /info` (meta, spotMeta, candleSnapshot) and the
`candle` channel on `WS /ws` (`hyperliquid_ws.py`), on the same port as the Bybit face.

Wire format (Hyperliquid API docs, "Info endpoint" and "Websocket"; what the official
`hyperliquid-python-sdk` 0.24 sends and reads):

    POST /info {"type": "meta", "dex": ""}
      -> {"universe": [{"name": "BTC", "szDecimals": 5, "maxLeverage": 50}, ...]}
    POST /info {"type": "spotMeta"}            (Info() asks for it while constructing)
      -> {"universe": [], "tokens": [{"name": "USDC", "index": 0, "szDecimals": 8, ...}]}
    POST /info {"type": "candleSnapshot",
                "req": {"coin": "BTC", "interval": "1m", "startTime": ms, "endTime": ms}}
      -> [{"t": open ms, "T": close ms - 1, "s": "BTC", "i": "1m", "o": "40123.5",
           "c": "...", "h": "...", "l": "...", "v": "12.345" (base volume), "n": trades}, ...]
         oldest first; candles whose open time t is in [startTime, endTime], the forming one
         included; at most 5000 per request (here: the first 5000 from startTime). Real
         Hyperliquid also keeps only the newest 5000 candles of each interval; the replay
         serves its whole history.
    WS /ws  <- {"method": "subscribe", "subscription": {"type": "candle", "coin": "BTC",
                                                        "interval": "1m"}}
            -> {"channel": "subscriptionResponse", "data": {"method": "subscribe",
                                                           "subscription": {...}}}
            -> {"channel": "candle", "data": {<one candle as above>}}, repeatedly: updates of
               the forming candle, and at each minute of the replay's clock the final values
               of the candle that closed, then the new one.
            <- {"method": "ping"} -> {"channel": "pong"}

Errors: an unknown request type or a body that does not parse is HTTP 422 with Hyperliquid's
"Failed to deserialize the JSON body into the target type: ..." text; a candleSnapshot for a
coin Hyperliquid does not list is HTTP 500 with body `null`, and a subscription to one is
`{"channel": "error", "data": "Invalid subscription ..."}` (both as reported by users of the
API, not verified here). Every response carries an HTTP `Date` header of the replay's clock,
which is how the client tells closed candles without a server-time endpoint.

Coins are the base assets of the replay's Bybit symbols (BTCUSDT -> BTC). Synthetic candles
are seeded per (venue, symbol) (`synthetic.venue_seed`), so the two venues differ. With a data
file (`replay.data`) both faces serve the file's real candles, Hyperliquid under its base coin:
the file is the only real market there is, and inventing other numbers for it would not be
real. Faults are the Bybit face's plan (one shared stream of draws), translated: rate limits are
HTTP 429, retCode errors HTTP 500, malformed bodies break the candle list.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from pipeline.replay import intervals as iv
from pipeline.replay import synthetic
from pipeline.replay.data import Source, SyntheticSource
from pipeline.replay.faults import GROUPS, Fault, misorder
from pipeline.replay.http import GATEWAY, Reply
from pipeline.replay.market import Market
from pipeline.replay.wire import Decimals, format_rows

VENUE = "hyperliquid"
PAGE_LIMIT = 5000
INTERVALS = {
    "1m": "1", "3m": "3", "5m": "5", "15m": "15", "30m": "30", "1h": "60", "2h": "120",
    "4h": "240", "12h": "720", "1d": "D", "1w": "W", "1M": "M",
}  # fmt: skip
_QUOTE = re.compile(r"(USDT|USDC|USD|PERP)$")
_MALFORMED = set(GROUPS["malformed"])
_DESERIALIZE = "Failed to deserialize the JSON body into the target type: "


def base_coin(symbol: str) -> str:
    """BTCUSDT -> BTC."""
    return _QUOTE.sub("", symbol) or symbol


class CoinSource:
    """The replay's market as Hyperliquid coins (see the module doc)."""

    def __init__(self, base: Source) -> None:
        self.base = base
        self.name, self.ident, self.label = base.name, base.ident, base.label
        self._symbol = {base_coin(s): s for s in base.listed()}
        self._seed = synthetic.venue_seed(base.seed, VENUE) if self.synthetic else 0

    @property
    def synthetic(self) -> bool:
        return isinstance(self.base, SyntheticSource)

    def listed(self) -> list[str]:
        return sorted(self._symbol)

    def supports(self, symbol: str) -> bool:
        return symbol in self._symbol

    def span(self, symbol: str) -> tuple[int, int | None]:
        return self.base.span(self._symbol[symbol])

    def day(self, symbol: str, day: int) -> np.ndarray:
        if not self.synthetic:
            return self.base.day(self._symbol[symbol], day)
        start = day * iv.DAY_MS
        return synthetic.candles(symbol, start, start + iv.DAY_MS, self._seed)

    def decimals(self, symbol: str) -> Decimals:
        if not self.synthetic:
            return self.base.decimals(self._symbol[symbol])
        return synthetic.price_decimals(symbol), 3, 4


def candles(coin: str, interval: str, rows: np.ndarray, dec: Decimals) -> list[dict[str, Any]]:
    """Rows (open_time_ms, o, h, l, c, v, t) as Hyperliquid candles (one formatting pass)."""
    if len(rows) == 0:
        return []
    texts = json.loads("[" + ",".join(format_rows(rows, dec)) + "]")
    bybit = INTERVALS[interval]
    out = []
    for t_text, o, h, lo, c, v, _ in texts:
        t = int(t_text)
        trades = 1 + int(float(v) * 10) % 997  # synthetic: the replay has no trades
        out.append({"t": t, "T": iv.close_ms(t, bybit) - 1, "s": coin, "i": interval, "o": o,
                    "c": c, "h": h, "l": lo, "v": v, "n": trades})  # fmt: skip
    return out


def reply(body: bytes, market: Market, fault: Fault | None, now: int) -> Reply:
    """The answer to one `POST /info`, broken as `fault` says."""
    kind = fault.kind if fault else None
    if kind in ("ret_10006", "http_429", "http_403"):
        return Reply(429, b"null")
    if kind in ("ret_10000", "ret_10016"):
        return Reply(500, b"null")
    if kind and kind.startswith("http_"):
        return Reply(int(kind[5:]), GATEWAY[int(kind[5:])], ctype="text/html")
    try:
        req = json.loads(body)
        kind_of = req["type"] if isinstance(req, dict) else None
    except (ValueError, KeyError):
        return Reply(422, (_DESERIALIZE + "missing field `type`").encode(), ctype="text/plain")
    if kind_of == "meta":
        coins = market.source.listed()
        obj: Any = {"universe": [{"name": c, "szDecimals": 3, "maxLeverage": 50} for c in coins]}
    elif kind_of == "spotMeta":
        usdc = {"name": "USDC", "szDecimals": 8, "weiDecimals": 8, "index": 0, "isCanonical": True}
        obj = {"universe": [], "tokens": [usdc]}
    elif kind_of == "candleSnapshot":
        try:
            coin, interval, start, end = _snapshot_params(req.get("req"))
        except ValueError as err:
            return Reply(422, (_DESERIALIZE + str(err)).encode(), ctype="text/plain")
        if not market.supports(coin):
            return Reply(500, b"null")
        obj = snapshot(market, coin, interval, start, end, now)
        if kind in _MALFORMED:
            return Reply(200, malformed(fault, obj, coin))  # type: ignore[arg-type]
    else:
        msg = f"unknown variant `{kind_of}`"
        return Reply(422, (_DESERIALIZE + msg).encode(), ctype="text/plain")
    if kind in ("bad_json", "truncated"):
        return Reply(200, malformed(fault, obj, ""))  # type: ignore[arg-type]
    return Reply(200, json.dumps(obj, separators=(",", ":")).encode())


def _snapshot_params(req: Any) -> tuple[str, str, int, int]:
    if not isinstance(req, dict):
        raise ValueError("missing field `req`")
    for name in ("coin", "interval", "startTime"):
        if name not in req:
            raise ValueError(f"req: missing field `{name}`")
    interval = req["interval"]
    if interval not in INTERVALS:
        raise ValueError(f"req.interval: unknown variant `{interval}`")
    try:
        start = int(req["startTime"])
        end = int(req["endTime"]) if req.get("endTime") is not None else 2**62
    except (TypeError, ValueError):
        raise ValueError("req.startTime/endTime: invalid type, expected u64") from None
    return str(req["coin"]), interval, start, end


def snapshot(
    market: Market, coin: str, interval: str, start: int, end: int, now: int
) -> list[dict[str, Any]]:
    """Candles opening in [start, end] as of `now`, oldest first, at most `PAGE_LIMIT`."""
    bybit = INTERVALS[interval]
    first, last = market.source.span(coin)
    lo = max(iv.floor_open(max(start, first), bybit), iv.floor_open(first, bybit))
    newest = now if last is None else min(now, last)
    hi = min(iv.floor_open(min(end, newest), bybit), end)
    if lo > hi:
        return []
    b = min(iv.shift(lo, PAGE_LIMIT, bybit), iv.shift(hi, 1, bybit))
    rows = market.candles(coin, bybit, lo, b, now)
    rows = rows[rows[:, 0] >= start][:PAGE_LIMIT] if len(rows) else rows
    return candles(coin, interval, rows, market.decimals(coin))


def malformed(fault: Fault, candles: Any, coin: str) -> bytes:
    """A broken `/info` body: Hyperliquid's candle list with one detectable defect."""
    text = json.dumps(candles, separators=(",", ":"))
    kind = fault.kind
    if kind == "bad_json":
        return fault.pick([b"<html><body>502 Bad Gateway</body></html>", b"OK", b"{"])
    if kind == "truncated":
        return text[: max(1, int(len(text) * (0.1 + 0.8 * fault.q)))].encode()
    rows = [dict(c) for c in candles]
    if not rows or (kind == "non_monotonic" and len(rows) < 2):
        return b'{"unexpected":"object"}'
    i = min(int(fault.p * len(rows)), len(rows) - 1)
    if kind == "wrong_symbol":
        rows[i]["s"] = "ETH" if coin != "ETH" else "BTC"
    elif kind == "high_below_low":
        rows[i]["h"] = f"{float(rows[i]['l']) * 0.99:.8g}"
    elif kind == "non_numeric":
        rows[i][fault.pick(["o", "h", "l", "c", "v"])] = fault.pick(["abc", "", "NaN", "inf"])
    elif kind in ("missing_field", "short_row"):
        del rows[i][fault.pick(["t", "o", "c", "v"])]
    elif kind in ("non_monotonic", "duplicate_time"):
        misorder(rows, i, kind)
    elif kind == "off_grid":
        rows[i]["t"] += 1000 * (1 + int(fault.q * 58))
    elif kind == "out_of_range":
        extra = dict(rows[-1])
        extra["t"] += (1 + int(fault.q * 5)) * 10 * iv.DAY_MS
        rows.append(extra)
    return json.dumps(rows, separators=(",", ":")).encode()

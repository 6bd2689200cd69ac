"""The replay exchange's Bybit v5 face: `GET /v5/market/kline`, `/v5/market/time`,
`/v5/market/instruments-info`, `/v5/market/tickers`, and the market context's
`/v5/market/funding/history` and `/v5/market/open-interest` (`context_face.py`) (the
WebSocket side is `ws.py`). Klines with `category=spot` are the spot market's
(`context.SpotSource`, when the server passes one), every other category the perpetual's.

Request errors are HTTP 200 with a Bybit retCode, as on the real exchange. Parameter errors
other than Bybit's documented ones ("Invalid period!", "Not supported symbols") use retCode
10001 with a "params error: ..." message; real Bybit's wording for those is not verified.
Instruments (linear; with `category=spot` the spot market's pairs) and tickers are
`instruments.py`'s; the rate limit headers every answer carries are `ratelimit.py`'s (added
by the server).
"""

from __future__ import annotations

import json
import time

from pipeline.replay import context_face, wire
from pipeline.replay import instruments as ins
from pipeline.replay import intervals as iv
from pipeline.replay.faults import GROUPS, Fault, malformed_kline, malformed_time
from pipeline.replay.http import GATEWAY, Reply
from pipeline.replay.market import Market

PATHS = (
    "/v5/market/kline",
    "/v5/market/time",
    "/v5/market/instruments-info",
    "/v5/market/tickers",
    *context_face.PATHS,
)
CATEGORIES = ("spot", "linear", "inverse")
MALFORMED = set(GROUPS["malformed"])


def reply(
    path: str,
    query: dict[str, str],
    market: Market,
    fault: Fault | None,
    now: int,
    spot: Market | None = None,
) -> Reply:
    """The answer to one market request, broken as `fault` says."""
    kind = fault.kind if fault else None
    replaced = fault_reply(kind, now) if kind else None
    if replaced is not None:
        return replaced
    if path == "/v5/market/kline":
        is_spot = spot is not None and query.get("category") == "spot"
        return _kline(spot if is_spot else market, query, fault, now)  # type: ignore[arg-type]
    if path in context_face.PATHS:
        return context_face.reply(path, query, market, fault, now)
    if path == "/v5/market/instruments-info":
        is_spot = spot is not None and query.get("category") == "spot"
        listing = spot if is_spot and spot is not None else market
        return _instruments(listing, query, fault, now, spot=is_spot)
    if path == "/v5/market/tickers":
        return _tickers(market, query, fault, now)
    if fault and fault.kind in MALFORMED:
        return Reply(200, malformed_time(fault, now)[0])
    return Reply(200, wire.time_body(now))


def fault_reply(kind: str, now_ms: int) -> Reply | None:
    """Replies that replace the real one entirely (status and retCode faults)."""
    if kind == "ret_10006":
        reset = int(time.time() * 1000) + 100 + (now_ms % 200)
        headers = {
            "X-Bapi-Limit": "600",
            "X-Bapi-Limit-Status": "0",
            "X-Bapi-Limit-Reset-Timestamp": str(reset),
        }
        return Reply(200, wire.error_body(10006, "Too many visits!", now_ms), headers)
    if kind.startswith("http_"):
        status = int(kind[5:])
        return Reply(status, GATEWAY[status], ctype="text/html")
    if kind == "ret_10000":
        return Reply(200, wire.error_body(10000, "Server Timeout", now_ms))
    if kind == "ret_10016":
        return Reply(200, wire.error_body(10016, "Internal server error.", now_ms))
    return None


def _kline(market: Market, q: dict[str, str], fault: Fault | None, now: int) -> Reply:
    try:
        category, symbol, interval, start, end, limit = _kline_params(q, market)
    except ParamError as err:
        body = wire.error_body(10001, str(err), now)
        if fault and fault.kind == "truncated":
            body = body[: len(body) // 2]
        return Reply(200, body)
    rows = market.kline(symbol, interval, start, end, limit, now)
    if fault and fault.kind in MALFORMED:
        step = iv.length_ms(interval) or 30 * iv.DAY_MS
        body, _ = malformed_kline(fault, symbol, category, rows, now, step, start, end)
        return Reply(200, body)
    return Reply(200, wire.kline_body(symbol, category, rows, now))


def _instruments(
    market: Market, q: dict[str, str], fault: Fault | None, now: int, *, spot: bool = False
) -> Reply:
    category = q.get("category") or "linear"
    if category not in CATEGORIES:
        return Reply(200, wire.error_body(10001, "Illegal category", now))
    try:
        listed = market.source.listed()
        sizes = {s: market.decimals(s)[1] for s in listed}
        items, cursor = ins.instruments_page(listed, q, sizes, spot=spot)
    except ins.CursorError as err:
        return Reply(200, wire.error_body(10001, str(err), now))
    result = {"category": category, "list": items, "nextPageCursor": cursor}
    return _result(result, fault, now)


def _tickers(market: Market, q: dict[str, str], fault: Fault | None, now: int) -> Reply:
    category = q.get("category", "")
    if category not in CATEGORIES:  # required on Bybit
        return Reply(200, wire.error_body(10001, "Illegal category", now))
    symbol = q.get("symbol")
    if symbol and not market.supports(symbol):
        return Reply(200, wire.error_body(10001, "Not supported symbols", now))
    seed = int(getattr(market.source, "seed", 0))
    symbols = [symbol] if symbol else market.source.listed()
    items = [ins.ticker(market, seed, s, now) for s in symbols]
    return _result({"category": category, "list": items}, fault, now)


def _result(result: dict, fault: Fault | None, now: int) -> Reply:
    envelope = {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": now}
    if fault and fault.kind in MALFORMED:
        del result["list"]
    return Reply(200, json.dumps(envelope, separators=(",", ":")).encode())


class ParamError(ValueError):
    pass


def _int_param(q: dict[str, str], name: str) -> int | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ParamError(f"params error: {name} must be an integer, not {raw!r}") from None


def _kline_params(
    q: dict[str, str], market: Market
) -> tuple[str, str, str, int | None, int | None, int]:
    category = q.get("category") or "linear"
    if category not in CATEGORIES:
        raise ParamError("Illegal category")
    symbol = q.get("symbol", "")
    if not market.supports(symbol):
        raise ParamError("Not supported symbols")
    interval = q.get("interval", "")
    if interval not in iv.INTERVALS:
        raise ParamError("Invalid period!")
    limit = _int_param(q, "limit")
    limit = 200 if limit is None else limit
    if not 1 <= limit <= 1000:
        raise ParamError(f"params error: limit must be between 1 and 1000, not {limit}")
    start, end = _int_param(q, "start"), _int_param(q, "end")
    if start is not None and end is not None and start > end:
        raise ParamError("params error: start must not be greater than end")
    return category, symbol, interval, start, end, limit

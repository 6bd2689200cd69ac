"""The Bybit face's market-context endpoints (values from `context.py`), broken by the same
fault plan as klines (faults.py: status and retCode faults replace the reply before it gets
here; the malformed kinds are applied to these object lists below, each detectable):

- `GET /v5/market/funding/history`: category linear|inverse, symbol, startTime with endTime
  (startTime alone is refused, as on Bybit), limit 1-200 (default 200); the newest `limit`
  settlements (on the market's funding grid) in [startTime, endTime] (inclusive), newest first, as
  `{symbol, fundingRate, fundingRateTimestamp}`.
- `GET /v5/market/open-interest`: category, symbol, intervalTime (only `5min` is served),
  startTime, endTime, limit 1-200 (default 50), cursor; newest first as
  `{openInterest, timestamp}` with `nextPageCursor` ("" on the last page). The cursor is the
  replay's own (`lastid%3D<ms>`): opaque to clients, as on Bybit.

Parameter errors are retCode 10001; the exact wording of Bybit's for these two endpoints is
not verified ("Not supported symbols" and "Illegal category" are the kline endpoint's).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pipeline.replay import context as cx
from pipeline.replay import wire
from pipeline.replay.faults import GROUPS, Fault, broken_json, misorder
from pipeline.replay.http import Reply

if TYPE_CHECKING:
    from pipeline.replay.market import Market

FUNDING, OPEN_INTEREST = "/v5/market/funding/history", "/v5/market/open-interest"
PATHS = (FUNDING, OPEN_INTEREST)
MALFORMED = set(GROUPS["malformed"])
_CURSOR = "lastid%3D"


class ParamError(ValueError):
    pass


def reply(path: str, q: dict[str, str], market: Market, fault: Fault | None, now: int) -> Reply:
    """The answer to one market-context request (faults that replace it come before)."""
    try:
        return _reply(path, q, market, fault, now)
    except ParamError as err:
        return Reply(200, wire.error_body(10001, str(err), now))


def _reply(path: str, q: dict[str, str], market: Market, fault: Fault | None, now: int) -> Reply:
    if (q.get("category") or "") not in ("linear", "inverse"):
        raise ParamError("Illegal category")
    symbol = q.get("symbol", "")
    if not market.supports(symbol):
        raise ParamError("Not supported symbols")
    start, end = _int(q, "startTime"), _int(q, "endTime")
    if start is not None and end is not None and start > end:
        raise ParamError("params error: startTime must not be greater than endTime")
    seed = int(getattr(market.source, "seed", 0))
    lo, hi = start if start is not None else 0, end if end is not None else now
    if path == FUNDING:
        if start is not None and end is None:
            raise ParamError("params error: endTime is required with startTime")
        limit = _limit(q, 200)
        rows = cx.funding(market.source, seed, symbol, lo, hi, now)[::-1][:limit]
        items = [
            {"symbol": symbol, "fundingRate": _num(r, 8), "fundingRateTimestamp": str(int(t))}
            for t, r in rows
        ]
        result: dict[str, Any] = {"category": q["category"], "list": items}
        return _body(
            symbol, result, items, fault, now, "fundingRateTimestamp", "fundingRate", start, end
        )
    if q.get("intervalTime") != "5min":
        raise ParamError(
            f"params error: intervalTime {q.get('intervalTime')!r}: the replay serves 5min only"
        )
    limit = _limit(q, 50)
    cursor = q.get("cursor") or ""
    if cursor:
        if not cursor.startswith(_CURSOR) or not cursor[len(_CURSOR) :].isdigit():
            raise ParamError(f"params error: invalid cursor {cursor!r}")
        hi = min(hi, int(cursor[len(_CURSOR) :]) - 1)
    rows = cx.open_interest(market.source, seed, symbol, lo, hi, now)[::-1]
    more = len(rows) > limit
    rows = rows[:limit]
    items = [{"openInterest": f"{v:.8f}", "timestamp": str(int(t))} for t, v in rows]
    result = {
        "symbol": symbol,
        "category": q["category"],
        "list": items,
        "nextPageCursor": f"{_CURSOR}{int(rows[-1][0])}" if more else "",
    }
    return _body(symbol, result, items, fault, now, "timestamp", "openInterest", start, end)


def _num(x: float, decimals: int) -> str:
    """A number as Bybit prints a rate: fixed point, no trailing zeros ("0.0001")."""
    text = f"{x:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _int(q: dict[str, str], name: str) -> int | None:
    raw = q.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)  # type: ignore[arg-type]
    except ValueError:
        raise ParamError(f"params error: {name} must be an integer, not {raw!r}") from None


def _limit(q: dict[str, str], default: int) -> int:
    limit = _int(q, "limit")
    limit = default if limit is None else limit
    if not 1 <= limit <= 200:
        raise ParamError(f"params error: limit must be between 1 and 200, not {limit}")
    return limit


def _body(
    symbol: str,
    result: dict[str, Any],
    items: list[dict[str, str]],
    fault: Fault | None,
    now: int,
    time_key: str,
    value_key: str,
    start: int | None,
    end: int | None,
) -> Reply:
    envelope = {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": now}
    if fault and fault.kind in MALFORMED:
        broken = broken_json(fault, envelope)
        if broken is not None:
            return Reply(200, broken)
        _break(fault, symbol, envelope, items, time_key, value_key, start, end)
    return Reply(200, json.dumps(envelope, separators=(",", ":")).encode())


def _break(
    fault: Fault,
    symbol: str,
    envelope: dict[str, Any],
    items: list[dict[str, str]],
    time_key: str,
    value_key: str,
    start: int | None,
    end: int | None,
) -> None:
    """Apply a malformed kind to an object list in place; a kind that needs rows the page
    lacks drops `result.list` instead (still detectable)."""
    kind = fault.kind
    oi = "symbol" in envelope["result"]
    needs = {"wrong_symbol": 0 if oi else 1, "non_monotonic": 2, "duplicate_time": 1}
    if len(items) < needs.get(kind, 1 if kind in ("high_below_low", "non_numeric") else 0):
        kind = "missing_field"
    if kind in ("short_row", "off_grid") and not items:
        kind = "missing_field"
    i = min(int(fault.p * len(items)), max(len(items) - 1, 0))
    if kind == "high_below_low" and not oi:
        kind = "non_numeric"  # a funding rate may be negative: make it no number instead
    if kind == "wrong_symbol":
        other = "ETHUSDT" if symbol != "ETHUSDT" else "BTCUSDT"
        if oi:
            envelope["result"]["symbol"] = other
        else:
            for item in items:
                item["symbol"] = other
    elif kind == "high_below_low":
        items[i][value_key] = "-" + items[i][value_key]
    elif kind == "non_numeric":
        key = time_key if fault.q < 0.3 else value_key
        items[i][key] = fault.pick(["abc", "", "NaN", "inf", "12,5", "-inf"])
    elif kind == "missing_field":
        where = fault.pick(["list", "time"])
        if where == "time":
            del envelope["time"]
        else:
            del envelope["result"]["list"]
    elif kind == "short_row":
        del items[i][value_key if fault.q < 0.5 else time_key]
    elif kind in ("non_monotonic", "duplicate_time"):
        misorder(items, i, kind)
    elif kind == "off_grid":
        items[i][time_key] = str(int(items[i][time_key]) + 1000 * (1 + int(fault.q * 58)))
    elif kind == "out_of_range":
        k = 1 + int(fault.q * 5)
        step = cx.OI_MS if oi else cx.funding_ms(symbol)
        template = dict(items[0]) if items else {time_key: "0", value_key: "1"}
        if not oi:
            template["symbol"] = symbol
        if end is not None:
            template[time_key] = str(end // step * step + k * step)
            items.insert(0, template)
        elif start is not None:
            template[time_key] = str(-(-start // step) * step - k * step)
            items.append(template)
        else:
            template[time_key] = str(int(envelope["time"]) // step * step + k * step)
            items.insert(0, template)

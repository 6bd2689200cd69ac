"""Fault injection: which market request fails, and how, deterministically.

Every request to `/v5/market/*` draws from one random stream seeded by the exchange seed, so
the same seed and the same request order give the same faults. A share `rate` of requests fail
with a kind drawn from the enabled ones; groups (each equally likely, kinds weighted within):

- `rate_limit`: retCode 10006 with X-Bapi-Limit* headers (reset 100-300 ms ahead on the WALL
  clock), sometimes HTTP 429 or 403 (Bybit's IP ban);
- `5xx`: HTTP 502/503/504 gateway pages, retCode 10000 (timeout) or 10016 (server error);
- `drop`: connection closed before any response, or in the middle of the body;
- `delay`: a few hundred ms, or `long_delay_s` (set it above the client's timeout);
- `malformed`: invalid JSON, truncated body, wrong symbol, high < low, non-numeric field,
  missing field, short row, non-monotonic or duplicated times, off-grid time, a candle outside
  the requested range. Every variant is detectable by a validating client.

`configure(rate=1.0, kinds=["5xx"], duration_s=120)` (or `count=N`) overrides the plan for a
while (an outage); without duration or count it replaces the base plan.
"""

from __future__ import annotations

import copy
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

GROUPS: dict[str, dict[str, float]] = {
    "rate_limit": {"ret_10006": 6, "http_429": 2, "http_403": 1},
    "5xx": {"http_502": 1, "http_503": 1, "http_504": 1, "ret_10000": 1, "ret_10016": 1},
    "drop": {"drop_before": 1, "drop_mid_body": 1},
    "delay": {"delay": 4, "long_delay": 1},
    "malformed": {
        k: 1.0
        for k in (
            "bad_json",
            "truncated",
            "wrong_symbol",
            "high_below_low",
            "non_numeric",
            "missing_field",
            "short_row",
            "non_monotonic",
            "duplicate_time",
            "off_grid",
            "out_of_range",
        )
    },
}
KINDS = {k: g for g, kinds in GROUPS.items() for k in kinds}
_NEEDS_ROWS = {"high_below_low", "non_numeric", "short_row", "off_grid", "duplicate_time"}
_NEEDS_TWO = {"non_monotonic"}


def expand(kinds: list[str] | tuple[str, ...] | None) -> dict[str, float]:
    """Kind -> weight for a list of group and/or kind names (None: every group, equally)."""
    names = list(GROUPS) if not kinds else list(kinds)
    weights: dict[str, float] = {}
    for name in names:
        if name in GROUPS:
            group = GROUPS[name]
            total = sum(group.values())
            for k, w in group.items():
                weights[k] = weights.get(k, 0.0) + w / total
        elif name in KINDS:
            weights[name] = weights.get(name, 0.0) + 1.0
        else:
            raise ValueError(
                f"unknown fault kind {name!r}: use a group {sorted(GROUPS)} "
                f"or a kind {sorted(KINDS)}"
            )
    return weights


@dataclass(frozen=True)
class Fault:
    kind: str
    p: float  # uniform draws that place the fault (which row, which variant, how long)
    q: float

    def pick(self, options: list[Any] | tuple[Any, ...]) -> Any:
        return options[min(int(self.q * len(options)), len(options) - 1)]


@dataclass
class _Plan:
    rate: float
    weights: dict[str, float]
    until: float | None = None  # monotonic deadline of a temporary override
    remaining: int | None = None  # requests left in a temporary override
    kinds: list[str] = field(default_factory=list)


class Faults:
    """The fault plan of one exchange, with statistics."""

    def __init__(
        self,
        seed: int = 7,
        rate: float = 0.0,
        kinds: list[str] | None = None,
        delay_s: tuple[float, float] = (0.1, 0.4),
        long_delay_s: float = 3.0,
    ) -> None:
        self._check_rate(rate)
        self._lock = threading.Lock()
        self._rng = random.Random(f"signalbox-replay-faults:{seed}")
        self._base = _Plan(rate, expand(kinds), kinds=list(kinds or GROUPS))
        self._override: _Plan | None = None
        self.delay_s = delay_s
        self.long_delay_s = long_delay_s
        self.counts: Counter[str] = Counter()

    @staticmethod
    def _check_rate(rate: float) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be between 0 and 1, not {rate}")

    def configure(
        self,
        rate: float | None = None,
        kinds: list[str] | None = None,
        duration_s: float | None = None,
        count: int | None = None,
        long_delay_s: float | None = None,
        delay_s: tuple[float, float] | None = None,
    ) -> dict[str, Any]:
        """Change the plan; with `duration_s` or `count` only temporarily (an outage)."""
        with self._lock:
            if long_delay_s is not None:
                self.long_delay_s = float(long_delay_s)
            if delay_s is not None:
                self.delay_s = (float(delay_s[0]), float(delay_s[1]))
            if rate is not None or kinds is not None:
                current = self._override or self._base
                new_rate = current.rate if rate is None else float(rate)
                self._check_rate(new_rate)
                new_kinds = list(kinds) if kinds else current.kinds
                plan = _Plan(new_rate, expand(new_kinds), kinds=new_kinds)
                if duration_s is not None or count is not None:
                    plan.until = None if duration_s is None else time.monotonic() + duration_s
                    plan.remaining = None if count is None else int(count)
                    self._override = plan
                else:
                    self._base, self._override = plan, None
        return self.state()

    def clear(self) -> dict[str, Any]:
        """No faults at all from now on."""
        with self._lock:
            self._base, self._override = _Plan(0.0, expand(None), kinds=list(GROUPS)), None
        return self.state()

    def _active(self) -> _Plan:
        o = self._override
        if o is not None:
            expired = (o.until is not None and time.monotonic() >= o.until) or (
                o.remaining is not None and o.remaining <= 0
            )
            if not expired:
                return o
            self._override = None
        return self._base

    def draw(self) -> Fault | None:
        """The fault for the next market request, or None. Always consumes four draws."""
        with self._lock:
            u, k, p, q = (self._rng.random() for _ in range(4))
            plan = self._active()
            if plan.remaining is not None:
                plan.remaining -= 1
            if u >= plan.rate or not plan.weights:
                return None
            total = sum(plan.weights.values())
            acc, kind = 0.0, next(iter(plan.weights))
            for name, w in plan.weights.items():
                acc += w / total
                if k < acc:
                    kind = name
                    break
            return Fault(kind, p, q)

    def record(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def state(self) -> dict[str, Any]:
        with self._lock:
            plan = self._active()
            left = None if plan.until is None else max(plan.until - time.monotonic(), 0.0)
            return {
                "rate": plan.rate,
                "kinds": plan.kinds,
                "temporary": plan is self._override,
                "seconds_left": left,
                "requests_left": plan.remaining,
                "base_rate": self._base.rate,
                "delay_s": list(self.delay_s),
                "long_delay_s": self.long_delay_s,
            }


# -- malformed payloads --------------------------------------------------------------------
def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def malformed_kline(
    fault: Fault,
    symbol: str,
    category: str,
    rows: list[str],
    now_ms: int,
    interval_ms: int,
    start: int | None,
    end: int | None,
) -> tuple[bytes, str]:
    """A broken kline body for a malformed-kind fault; returns (body, variant applied)."""
    kind = fault.kind
    parsed = [json.loads(r) for r in rows]
    if (kind in _NEEDS_ROWS and not parsed) or (kind in _NEEDS_TWO and len(parsed) < 2):
        kind = "wrong_symbol"
    i = min(int(fault.p * len(parsed)), max(len(parsed) - 1, 0))
    envelope: dict[str, Any] = {
        "retCode": 0,
        "retMsg": "OK",
        "result": {"symbol": symbol, "category": category, "list": parsed},
        "retExtInfo": {},
        "time": now_ms,
    }
    broken = broken_json(fault, envelope)
    if broken is not None:
        return broken, kind
    if kind == "wrong_symbol":
        envelope["result"]["symbol"] = "ETHUSDT" if symbol != "ETHUSDT" else "BTCUSDT"
    elif kind == "high_below_low":
        row = parsed[i]
        row[2] = f"{float(row[3]) * 0.99:.8g}"
    elif kind == "non_numeric":
        col = 1 + int(fault.q * 6) % 6
        parsed[i][col] = fault.pick(["abc", "", "NaN", "inf", "12,5", "-inf"])
    elif kind == "missing_field":
        where = fault.pick(["list", "symbol", "time"])
        if where == "time":
            del envelope["time"]
        else:
            del envelope["result"][where]
    elif kind == "short_row":
        parsed[i] = parsed[i][:6]
    elif kind in ("non_monotonic", "duplicate_time"):
        misorder(parsed, i, kind)
    elif kind == "off_grid":
        parsed[i][0] = str(int(parsed[i][0]) + 1000 * (1 + int(fault.q * 58)))
    elif kind == "out_of_range":
        k = 1 + int(fault.q * 5)
        template = list(parsed[0]) if parsed else ["0", "1", "1", "1", "1", "0", "0"]
        if end is not None:
            template[0] = str(end // interval_ms * interval_ms + k * interval_ms)
            parsed.insert(0, template)
        elif start is not None:
            template[0] = str(-(-start // interval_ms) * interval_ms - k * interval_ms)
            parsed.append(template)
        else:
            template[0] = str(now_ms // interval_ms * interval_ms + k * interval_ms)
            parsed.insert(0, template)
    return _dumps(envelope).encode(), kind


def broken_json(fault: Fault, envelope: dict[str, Any]) -> bytes | None:
    """The body of a `bad_json` or `truncated` fault over `envelope` (None for other kinds)."""
    if fault.kind == "bad_json":
        body = fault.pick(
            [
                "<html><head><title>502 Bad Gateway</title></head><body>cloudfront</body></html>",
                _dumps(envelope)[:-1] + ',"retExtInfo":}',
                "OK",
                "[]",
            ]
        )
        return body.encode()
    if fault.kind == "truncated":
        text = _dumps(envelope)
        return text[: max(1, int(len(text) * (0.1 + 0.8 * fault.q)))].encode()
    return None


def malformed_time(fault: Fault, now_ms: int) -> tuple[bytes, str]:
    """A broken `/v5/market/time` body."""
    result = {"timeSecond": str(now_ms // 1000), "timeNano": str(now_ms * 1_000_000)}
    envelope: dict[str, Any] = {"retCode": 0, "retMsg": "OK", "result": result, "time": now_ms}
    if fault.kind == "bad_json":
        return b"<html><body>bad gateway</body></html>", "bad_json"
    text = _dumps(envelope)
    if fault.kind == "truncated":
        return text[: max(1, int(len(text) * (0.1 + 0.8 * fault.q)))].encode(), "truncated"
    del result["timeNano"]
    del result["timeSecond"]
    return _dumps(envelope).encode(), "missing_field"


def misorder(rows: list[Any], i: int, kind: str) -> None:
    """The faults that only move rows, whatever the wire format: `non_monotonic` swaps row i
    with its successor (i clipped to the second last), `duplicate_time` repeats row i."""
    if kind == "non_monotonic":
        i = min(i, len(rows) - 2)
        rows[i], rows[i + 1] = rows[i + 1], rows[i]
    else:
        rows.insert(i + 1, copy.copy(rows[i]))

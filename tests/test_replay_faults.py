"""Fault injection on the wire, its determinism, and the admin endpoints that control it."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest
import requests

from pipeline.replay.clock import to_ms

JAN1 = to_ms("2024-01-01T00:00:00Z")
KLINE = {"symbol": "BTCUSDT", "interval": "1", "start": JAN1, "end": JAN1 + 99 * 60_000}


def get(ex: Any, path: str = "/v5/market/kline", **params: Any) -> requests.Response:
    return requests.get(f"{ex.rest_url}{path}", params=params or KLINE, timeout=5)


def admin(ex: Any, name: str, body: dict[str, Any] | None = None) -> requests.Response:
    if body is None:
        return requests.get(f"{ex.rest_url}/_replay/{name}", timeout=5)
    return requests.post(f"{ex.rest_url}/_replay/{name}", json=body, timeout=5)


def force(ex: Any, kind: str, count: int = 1, **extra: Any) -> None:
    r = admin(ex, "faults", {"rate": 1.0, "kinds": [kind], "count": count, **extra})
    assert r.status_code == 200, r.text


@pytest.fixture
def ex(replay_factory):
    return replay_factory(clock_start="2024-01-02T00:00:00Z")


def test_rate_limit_fault_has_bybit_headers_with_a_near_reset(ex):
    force(ex, "ret_10006")
    before = time.time() * 1000
    r = get(ex)
    after = time.time() * 1000
    assert r.status_code == 200 and r.json()["retCode"] == 10006
    assert r.headers["X-Bapi-Limit"] and r.headers["X-Bapi-Limit-Status"] == "0"
    reset = int(r.headers["X-Bapi-Limit-Reset-Timestamp"])
    assert before + 100 <= reset <= after + 300  # wall clock, 100-300 ms after the answer
    assert get(ex).json()["retCode"] == 0  # count=1: the next request is served


@pytest.mark.parametrize("status", [403, 429, 502, 503, 504])
def test_http_status_faults(ex, status):
    force(ex, f"http_{status}")
    assert get(ex).status_code == status


@pytest.mark.parametrize(("kind", "code"), [("ret_10000", 10000), ("ret_10016", 10016)])
def test_server_error_retcodes(ex, kind, code):
    force(ex, kind)
    r = get(ex)
    assert r.status_code == 200 and r.json()["retCode"] == code


def test_dropped_connection_before_the_response(ex):
    force(ex, "drop_before")
    with pytest.raises(requests.exceptions.ConnectionError):
        get(ex)


def test_dropped_connection_in_the_middle_of_the_body(ex):
    force(ex, "drop_mid_body")
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        get(ex)


def test_long_delay_outlasts_a_client_timeout(ex):
    force(ex, "long_delay", long_delay_s=1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{ex.rest_url}/v5/market/kline", params=KLINE, timeout=0.2)
    assert get(ex).json()["retCode"] == 0


def test_short_delay_still_answers(ex):
    force(ex, "delay")
    assert get(ex).json()["retCode"] == 0
    assert ex.stats()["faults"] == {"delay": 1}


def _body(ex: Any, kind: str, **params: Any) -> str:
    force(ex, kind)
    r = get(ex, **params)
    assert r.status_code == 200
    return r.text


def test_malformed_bodies(ex):
    for _ in range(4):  # every variant: not JSON, or not a JSON object
        with pytest.raises((ValueError, AttributeError)):
            json.loads(_body(ex, "bad_json")).get("result")
    with pytest.raises(ValueError):
        json.loads(_body(ex, "truncated"))
    assert json.loads(_body(ex, "wrong_symbol"))["result"]["symbol"] != "BTCUSDT"
    rows = json.loads(_body(ex, "short_row"))["result"]["list"]
    assert sorted({len(r) for r in rows}) == [6, 7]
    rows = json.loads(_body(ex, "high_below_low"))["result"]["list"]
    assert any(float(r[2]) < float(r[3]) for r in rows)
    rows = json.loads(_body(ex, "duplicate_time"))["result"]["list"]
    assert len(rows) == 101 and len({r[0] for r in rows}) == 100
    rows = json.loads(_body(ex, "non_monotonic"))["result"]["list"]
    times = [int(r[0]) for r in rows]
    assert times != sorted(times, reverse=True)
    assert sorted(times) == list(range(JAN1, JAN1 + 100 * 60_000, 60_000))
    rows = json.loads(_body(ex, "off_grid"))["result"]["list"]
    assert sum(int(r[0]) % 60_000 != 0 for r in rows) == 1
    rows = json.loads(_body(ex, "out_of_range"))["result"]["list"]
    assert max(int(r[0]) for r in rows) > KLINE["end"]
    rows = json.loads(_body(ex, "non_numeric"))["result"]["list"]
    bad = [v for r in rows for v in r[1:] if v in ("abc", "", "NaN", "inf", "12,5", "-inf")]
    assert len(bad) == 1
    body = json.loads(_body(ex, "missing_field"))
    assert "time" not in body or "list" not in body["result"] or "symbol" not in body["result"]


def test_server_time_faults(ex):
    force(ex, "missing_field")
    assert "timeSecond" not in get(ex, "/v5/market/time", x=1).json()["result"]
    force(ex, "http_503")
    assert get(ex, "/v5/market/time", x=1).status_code == 503


def _fingerprint(ex: Any, n: int = 40) -> list[str]:
    out = []
    with requests.Session() as s:
        for _ in range(n):
            r = s.get(f"{ex.rest_url}/v5/market/kline", params=KLINE, timeout=5)
            out.append(f"{r.status_code}:{hashlib.sha1(r.content).hexdigest()}")
    return out


def test_faults_are_deterministic_for_a_seed_and_request_order(replay_factory):
    kinds = ["rate_limit", "5xx", "malformed"]  # no delays or drops: keeps this test quick
    kw = {"clock_start": "2024-01-02T00:00:00Z", "clock_speed": 1e-9, "fault_kinds": kinds}
    a = _fingerprint(replay_factory(faults=0.3, **kw))
    b = _fingerprint(replay_factory(faults=0.3, **kw))
    c = _fingerprint(replay_factory(faults=0.3, seed=8, **kw))
    assert a == b
    assert a != c
    healthy = max(set(a), key=a.count)  # the clock is frozen, so good answers are identical
    assert 0 < a.count(healthy) < 40 and len(set(a)) > 3  # some failed, in several ways


def test_share_of_failures_follows_the_rate(replay_factory):
    ex = replay_factory(faults=0.25, fault_kinds=["5xx"], clock_start="2024-01-02T00:00:00Z")
    for _ in range(200):
        get(ex)
    failed = sum(ex.stats()["faults"].values())
    assert 25 <= failed <= 80  # 50 expected; a seeded draw, so this never flakes


def test_outage_for_a_duration_then_recovery(ex):
    r = admin(ex, "faults", {"rate": 1.0, "kinds": ["5xx"], "duration_s": 1.0})
    assert r.json()["temporary"] is True and r.json()["rate"] == 1.0
    assert get(ex).status_code != 200 or get(ex).json()["retCode"] != 0
    time.sleep(1.05)
    assert get(ex).json()["retCode"] == 0
    assert admin(ex, "faults").json()["rate"] == 0.0


def test_base_rate_and_clear(ex):
    admin(ex, "faults", {"rate": 1.0, "kinds": "5xx"})
    assert all(get(ex).status_code != 200 or get(ex).json()["retCode"] != 0 for _ in range(3))
    assert admin(ex, "faults", {"clear": True}).json()["rate"] == 0.0
    assert get(ex).json()["retCode"] == 0


def test_admin_rejects_unknown_kinds_and_rates(ex):
    r = admin(ex, "faults", {"rate": 1.0, "kinds": ["meteor"]})
    assert r.status_code == 400 and "meteor" in r.json()["error"]
    r = admin(ex, "faults", {"rate": 2})
    assert r.status_code == 400 and "between 0 and 1" in r.json()["error"]


def test_stats_count_requests_by_path_and_fault_kind(ex):
    force(ex, "http_502", count=2)
    for _ in range(3):
        get(ex)
    get(ex, "/v5/market/time", x=1)
    stats = admin(ex, "stats").json()
    assert stats["paths"]["/v5/market/kline"] == 3 and stats["paths"]["/v5/market/time"] == 1
    assert stats["faults"] == {"http_502": 2}
    assert stats["ok"] == 2
    assert admin(ex, "stats", {"reset": True}).json()["requests"] == 0


def test_clock_endpoint_sets_jumps_and_reports(ex):
    r = admin(ex, "clock", {"now": "2024-06-01T00:00:00Z", "speed": 1e-9})
    assert r.json()["now_ms"] == pytest.approx(to_ms("2024-06-01"), abs=5)
    r = admin(ex, "clock", {"advance_s": 3600})
    assert r.json()["now_ms"] == pytest.approx(to_ms("2024-06-01T01:00:00Z"), abs=5)
    t = get(ex, "/v5/market/time", x=1).json()["time"]
    assert t == pytest.approx(to_ms("2024-06-01T01:00:00Z"), abs=5)
    assert admin(ex, "clock", {"now": "yesterday"}).status_code == 400


def test_revise_changes_a_closed_candle_everywhere(ex):
    t = JAN1 + 10 * 60_000
    r = admin(ex, "revise", {"symbol": "BTCUSDT", "open_time": "2024-01-01T00:10:00Z",
                             "close": 40000, "high": 60000})  # fmt: skip
    assert r.status_code == 200 and r.json()["candle"][4] == "40000"
    one = get(ex, symbol="BTCUSDT", interval="1", start=t, end=t).json()["result"]["list"][0]
    assert one[0] == str(t) and one[4] == "40000" and one[2] == "60000"
    hour = get(ex, symbol="BTCUSDT", interval="60", start=JAN1, end=JAN1).json()["result"]["list"]
    assert hour[0][2] == "60000"  # the hour's high comes from the revised minute
    again = ex.revise("BTCUSDT", t, volume=1.5)
    assert again[4] == "40000" and again[5] == "1.5"


def test_revise_refuses_what_has_not_closed_or_does_not_exist(ex):
    r = admin(ex, "revise", {"symbol": "BTCUSDT", "open_time": "2024-01-02T00:00:00Z"})
    assert r.status_code == 400 and "not closed" in r.json()["error"]
    r = admin(ex, "revise", {"symbol": "BTCUSDT", "open_time": JAN1 + 1, "close": 1})
    assert r.status_code == 400 and "minute grid" in r.json()["error"]
    r = admin(ex, "revise", {"symbol": "NOPE", "open_time": JAN1})
    assert r.status_code == 400 and "NOPE" in r.json()["error"]
    r = admin(ex, "revise", {"symbol": "BTCUSDT"})
    assert r.status_code == 400 and "open_time" in r.json()["error"]

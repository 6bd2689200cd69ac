"""The replay's Hyperliquid face on the wire: what the official SDK sends, and the errors."""

from __future__ import annotations

import email.utils

import requests

from pipeline.replay.clock import to_ms

NOW = "2024-01-10T00:00:30Z"
MIN = 60_000


def info(ex, body) -> requests.Response:
    return requests.post(f"{ex.rest_url}/info", json=body, timeout=5)


def test_the_sdk_s_info_constructs_and_reads_candles(replay_factory):
    from hyperliquid.info import Info

    ex = replay_factory(clock_start=NOW)
    sdk = Info(ex.rest_url, skip_ws=True, timeout=5)  # asks spotMeta and meta itself
    assert "BTC" in sdk.name_to_coin and ex.stats()["paths"]["/info"] == 2
    start = to_ms("2024-01-09T23:55:00Z")
    got = sdk.candles_snapshot("BTC", "1m", start, start + 10 * MIN)
    assert [c["t"] for c in got] == [start + k * MIN for k in range(6)]  # up to the forming one
    assert all(c["T"] == c["t"] + MIN - 1 and c["s"] == "BTC" and c["i"] == "1m" for c in got)


def test_pages_hold_at_most_5000_candles_and_carry_the_clock(replay_factory):
    ex = replay_factory(clock_start=NOW)
    req = {"coin": "ETH", "interval": "1m", "startTime": to_ms("2024-01-01"), "endTime": 2**50}
    r = info(ex, {"type": "candleSnapshot", "req": req})
    assert r.status_code == 200 and len(r.json()) == 5000
    assert r.json()[0]["t"] == to_ms("2024-01-01")
    assert email.utils.parsedate_to_datetime(r.headers["Date"]).timestamp() * 1000 == to_ms(NOW)


def test_unknown_coins_and_requests_get_hyperliquid_s_answers(replay_factory):
    ex = replay_factory(clock_start=NOW)
    req = {"coin": "NOPE", "interval": "1m", "startTime": 0, "endTime": 1}
    r = info(ex, {"type": "candleSnapshot", "req": req})
    assert (r.status_code, r.text) == (500, "null")
    r = info(ex, {"type": "nonsense"})
    assert r.status_code == 422 and "unknown variant `nonsense`" in r.text
    r = info(ex, {"type": "candleSnapshot", "req": {**req, "coin": "BTC", "interval": "7m"}})
    assert r.status_code == 422 and "7m" in r.text

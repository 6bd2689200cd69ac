"""The replay exchange's REST API behaves like Bybit v5 `/v5/market/kline` and `/market/time`."""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import pytest
import requests

from pipeline.replay import synthetic
from pipeline.replay.clock import to_ms

MIN = 60_000
DAY = 86_400_000
JAN1 = to_ms("2024-01-01T00:00:00Z")


def kline(ex: Any, **params: Any) -> dict[str, Any]:
    r = requests.get(f"{ex.rest_url}/v5/market/kline", params=params, timeout=10)
    assert r.status_code == 200
    return r.json()


def rows(ex: Any, **params: Any) -> list[list[str]]:
    body = kline(ex, **params)
    assert body["retCode"] == 0, body
    return body["result"]["list"]


def as_array(rs: list[list[str]]) -> np.ndarray:
    return np.array(rs, dtype=float)


def test_latest_page_is_newest_first_with_the_forming_candle(replay_factory):
    ex = replay_factory(clock_start="2024-01-02T00:00:30Z")
    body = kline(ex, category="linear", symbol="BTCUSDT", interval="1")
    assert body["retMsg"] == "OK"
    assert body["result"]["symbol"] == "BTCUSDT" and body["result"]["category"] == "linear"
    rs = body["result"]["list"]
    assert len(rs) == 200  # Bybit's default limit
    a = as_array(rs)
    assert (np.diff(a[:, 0]) == -MIN).all()
    newest = int(a[0, 0])
    assert newest == JAN1 + DAY  # the forming candle at 00:00, 30 s into its minute
    forming = synthetic.forming("BTCUSDT", newest, body["time"])
    assert a[0, 1:] == pytest.approx(forming[1:])
    final = synthetic.candles("BTCUSDT", newest, newest + MIN)[0]
    assert a[0, 5] < final[5]  # volume still accruing
    closed = synthetic.candles("BTCUSDT", newest - 199 * MIN, newest)
    np.testing.assert_array_equal(a[1:][::-1], closed)


def test_numbers_are_strings_without_trailing_zeros(replay_factory):
    ex = replay_factory(clock_start="2024-01-03T00:00:00Z")
    rs = rows(ex, symbol="BTCUSDT", interval="1", start=JAN1, end=JAN1 + 999 * MIN, limit=1000)
    assert len(rs) == 1000
    flat = [v for r in rs for v in r]
    assert all(isinstance(v, str) for v in flat)
    assert not [v for v in flat if re.search(r"\.\d*0$|\.$|e", v)]
    assert any("." not in v for r in rs for v in r[1:5])  # whole prices print as "26210"
    truth = synthetic.candles("BTCUSDT", JAN1, JAN1 + 1000 * MIN)
    np.testing.assert_array_equal(as_array(rs)[::-1], truth)  # exact after the text round trip


def test_start_and_end_select_the_newest_within_inclusive_bounds(replay_factory):
    ex = replay_factory(clock_start="2024-01-05T00:00:00Z")
    start, end = JAN1, JAN1 + 2000 * MIN
    a = as_array(rows(ex, symbol="BTCUSDT", interval="1", start=start, end=end, limit=1000))
    assert len(a) == 1000
    assert a[0, 0] == end and a[-1, 0] == end - 999 * MIN  # newest 1000, end inclusive
    a = as_array(rows(ex, symbol="BTCUSDT", interval="1", start=start, end=start + 10 * MIN))
    assert len(a) == 11 and a[-1, 0] == start  # start inclusive too


def test_only_start_returns_limit_candles_beginning_at_start(replay_factory):
    ex = replay_factory(clock_start="2024-01-05T00:00:00Z")
    a = as_array(rows(ex, symbol="BTCUSDT", interval="1", start=JAN1 + 1, limit=5))
    assert list(a[:, 0]) == [JAN1 + k * MIN for k in (5, 4, 3, 2, 1)]  # unaligned start: next


def test_only_end_and_neither(replay_factory):
    ex = replay_factory(clock_start="2024-01-05T00:00:00Z")
    a = as_array(rows(ex, symbol="BTCUSDT", interval="1", end=JAN1 + 30_000, limit=3))
    assert list(a[:, 0]) == [JAN1, JAN1 - MIN, JAN1 - 2 * MIN]
    a = as_array(rows(ex, symbol="BTCUSDT", interval="60", limit=2))
    assert list(a[:, 0]) == [JAN1 + 4 * DAY, JAN1 + 4 * DAY - 3_600_000]


def test_nothing_exists_after_the_exchange_clock(replay_factory):
    ex = replay_factory(clock_start="2024-01-01T00:10:00Z")
    assert rows(ex, symbol="BTCUSDT", interval="1", start=JAN1 + DAY, end=JAN1 + 2 * DAY) == []
    a = as_array(rows(ex, symbol="BTCUSDT", interval="1", start=JAN1, end=JAN1 + DAY))
    assert a[0, 0] == JAN1 + 10 * MIN and len(a) == 11


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"symbol": "BTCUSDT", "interval": "2"}, "Invalid period!"),
        ({"symbol": "BTCUSDT", "interval": "1m"}, "Invalid period!"),
        ({"symbol": "BTCUSDT"}, "Invalid period!"),
        ({"symbol": "FOOBAR", "interval": "1"}, "Not supported symbols"),
        ({"symbol": "btcusdt", "interval": "1"}, "Not supported symbols"),
        ({"interval": "1"}, "Not supported symbols"),
        ({"symbol": "BTCUSDT", "interval": "1", "limit": 0}, "limit"),
        ({"symbol": "BTCUSDT", "interval": "1", "limit": 1001}, "limit"),
        ({"symbol": "BTCUSDT", "interval": "1", "limit": "ten"}, "limit"),
        ({"symbol": "BTCUSDT", "interval": "1", "start": "yesterday"}, "start"),
        ({"symbol": "BTCUSDT", "interval": "1", "start": 2, "end": 1}, "start"),
        ({"symbol": "BTCUSDT", "interval": "1", "category": "option"}, "Illegal category"),
    ],
)
def test_bad_requests_are_http_200_with_retcode_10001(replay_session, params, message):
    body = kline(replay_session, **params)
    assert body["retCode"] == 10001
    assert message in body["retMsg"]
    assert body["result"] == {}


def test_limit_bounds_are_served(replay_session):
    assert len(rows(replay_session, symbol="BTCUSDT", interval="1", limit=1)) == 1
    assert len(rows(replay_session, symbol="BTCUSDT", interval="1", limit=1000)) == 1000


def test_server_time_is_the_exchange_clock(replay_factory):
    ex = replay_factory(clock_start="2024-01-01T12:00:00Z", clock_speed=60)
    before = ex.clock.now_ms()
    body = requests.get(f"{ex.rest_url}/v5/market/time", timeout=10).json()
    after = ex.clock.now_ms()
    assert body["retCode"] == 0
    assert before <= body["time"] <= after
    assert int(body["result"]["timeNano"]) // 1_000_000 == body["time"]
    assert int(body["result"]["timeSecond"]) == body["time"] // 1000


def test_candles_close_in_real_time_at_clock_speed(replay_factory):
    ex = replay_factory(clock_start="2024-01-01T23:59:50Z", clock_speed=60)
    first = kline(ex, symbol="BTCUSDT", interval="1", limit=1)
    open0 = int(first["result"]["list"][0][0])
    time.sleep(1.2)  # more than one exchange minute at 60x
    later = kline(ex, symbol="BTCUSDT", interval="1", limit=3)
    newest = as_array(later["result"]["list"])
    assert newest[0, 0] > open0
    closed = newest[1:]  # fully formed now, identical to the seeded history
    truth = synthetic.candles("BTCUSDT", int(closed[-1, 0]), int(closed[0, 0]) + MIN)
    np.testing.assert_array_equal(closed[::-1], truth)


def _agg(a: np.ndarray, size: int) -> np.ndarray:
    """Reference OHLCV of consecutive blocks of `size` 1m rows."""
    b = a.reshape(-1, size, 7)
    out = np.column_stack(
        [b[:, 0, 0], b[:, 0, 1], b[:, :, 2].max(1), b[:, :, 3].min(1), b[:, -1, 4],
         b[:, :, 5].sum(1), b[:, :, 6].sum(1)]
    )  # fmt: skip
    return out


@pytest.mark.parametrize("interval", ["3", "5", "15", "30", "60", "120", "240", "360", "720", "D"])
def test_intervals_aggregate_the_1m_candles(replay_factory, interval):
    ex = replay_factory(clock_start="2024-01-09T00:00:00Z")
    size = 1440 if interval == "D" else int(interval)
    got = as_array(
        rows(ex, symbol="BTCUSDT", interval=interval, start=JAN1, end=JAN1 + 4 * DAY - 1)
    )[::-1]
    want = _agg(synthetic.candles("BTCUSDT", JAN1, JAN1 + 4 * DAY), size)[-len(got) :]  # newest
    assert len(got) == min(200, 4 * 1440 // size)
    np.testing.assert_array_equal(got[:, :5], want[:, :5])
    np.testing.assert_allclose(got[:, 5:], want[:, 5:], rtol=1e-9, atol=1e-3)


def test_weeks_start_monday_and_months_are_calendar_months(replay_factory):
    ex = replay_factory(clock_start="2024-04-10T00:00:00Z")
    weeks = as_array(rows(ex, symbol="BTCUSDT", interval="W", start=JAN1, end=to_ms("2024-03-31")))
    assert all(
        time.gmtime(t / 1000).tm_wday == 0 and t % DAY == 0 for t in weeks[:, 0]
    )  # Mondays at 00:00 UTC (2024-01-01 was one)
    days = as_array(rows(ex, symbol="BTCUSDT", interval="D", start=JAN1, end=to_ms("2024-03-31")))
    days = days[::-1]
    week = days[:7]  # the week of 2024-01-01
    assert weeks[-1, 0] == JAN1
    assert weeks[-1, 1] == week[0, 1] and weeks[-1, 4] == week[-1, 4]
    assert weeks[-1, 2] == week[:, 2].max() and weeks[-1, 3] == week[:, 3].min()
    months = as_array(rows(ex, symbol="BTCUSDT", interval="M", start=JAN1, end=to_ms("2024-04-01")))
    assert list(months[:, 0]) == [to_ms(f"2024-0{m}-01") for m in (4, 3, 2, 1)]
    feb = days[(days[:, 0] >= to_ms("2024-02-01")) & (days[:, 0] < to_ms("2024-03-01"))]
    assert len(feb) == 29
    m = months[2]
    assert m[1] == feb[0, 1] and m[4] == feb[-1, 4] and m[2] == feb[:, 2].max()
    assert m[5] == pytest.approx(feb[:, 5].sum(), abs=0.01)


def test_forming_higher_interval_candle_includes_the_forming_minute(replay_factory):
    ex = replay_factory(clock_start="2024-01-01T10:30:30Z")
    body = kline(ex, symbol="BTCUSDT", interval="60", limit=1)
    hour = as_array(body["result"]["list"])[0]
    assert hour[0] == JAN1 + 10 * 3_600_000
    closed = synthetic.candles("BTCUSDT", JAN1 + 600 * MIN, JAN1 + 630 * MIN)
    forming = synthetic.forming("BTCUSDT", JAN1 + 630 * MIN, body["time"])
    assert hour[4] == forming[4]
    assert hour[5] == pytest.approx(closed[:, 5].sum() + forming[5], abs=1e-6)


def test_every_symbol_has_its_own_deterministic_market(replay_session):
    eth = rows(replay_session, symbol="ETHUSDT", interval="1", start=JAN1, end=JAN1 + 9 * MIN)
    btc = rows(replay_session, symbol="BTCUSDT", interval="1", start=JAN1, end=JAN1 + 9 * MIN)
    assert len(eth) == len(btc) == 10 and eth != btc
    truth = synthetic.candles("ETHUSDT", JAN1, JAN1 + 10 * MIN)
    np.testing.assert_array_equal(as_array(eth)[::-1], truth)


def test_symbol_list_limits_what_is_supported(replay_factory):
    ex = replay_factory(symbols=["BTCUSDT"])
    assert kline(ex, symbol="ETHUSDT", interval="1")["retMsg"] == "Not supported symbols"
    assert kline(ex, symbol="BTCUSDT", interval="1", limit=1)["retCode"] == 0


def test_unknown_paths_and_methods(replay_session):
    assert (
        requests.get(f"{replay_session.rest_url}/v5/market/orderbook", timeout=5).status_code == 404
    )
    r = requests.post(f"{replay_session.rest_url}/v5/market/kline", timeout=5)
    assert r.status_code == 405


def test_keep_alive_serves_many_requests_on_one_connection(replay_session):
    with requests.Session() as s:
        for _ in range(5):
            r = s.get(f"{replay_session.rest_url}/v5/market/time", timeout=5)
            assert r.json()["retCode"] == 0
        assert r.headers["Connection"].lower() == "keep-alive"


def test_restart_keeps_the_port_and_the_market(replay_factory):
    ex = replay_factory(clock_start="2024-01-02T00:00:00Z", clock_speed=1e-9)
    before = rows(ex, symbol="BTCUSDT", interval="1", limit=5)
    url = ex.rest_url
    ex.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{url}/v5/market/time", timeout=2)
    ex.start()
    assert ex.rest_url == url
    assert rows(ex, symbol="BTCUSDT", interval="1", limit=5) == before

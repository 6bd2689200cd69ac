"""BybitClient errors: bad input fails at once and clearly, bad pages never leak, retries end."""

from __future__ import annotations

import datetime as dt
import socket

import pytest

from pipeline.candles.timeframes import KLINE_COLUMNS as COLUMNS
from pipeline.exchanges.bybit import BybitClient
from pipeline.exchanges.bybit_wire import parse_kline_page
from pipeline.exchanges.protocol import (
    ExchangeError,
    ExchangeUnavailable,
    InvalidRequest,
    MalformedResponse,
)
from pipeline.replay import synthetic

UTC = dt.UTC
JAN1 = dt.datetime(2024, 1, 1, tzinfo=UTC)
END = JAN1 + dt.timedelta(minutes=100)
RANGE = "[2024-01-01T00:00:00Z, 2024-01-01T01:39:00Z]"


@pytest.fixture
def ex(replay_factory):
    return replay_factory(clock_start="2024-01-02T00:00:00Z", long_delay_s=1.2)


def client(ex, **kw) -> BybitClient:
    opts = {"timeout_s": 0.8, "backoff_s": 0.01, "backoff_cap_s": 0.05, **kw}
    return BybitClient(ex.rest_url, **opts)


def kline_requests(ex) -> int:
    return ex.stats()["paths"].get("/v5/market/kline", 0)


def test_unknown_symbol_is_rejected_once_with_its_name(ex):
    with pytest.raises(InvalidRequest) as err:
        client(ex).fetch_klines("NOSUCHCOIN", JAN1, END)
    msg = str(err.value)
    assert "NOSUCHCOIN" in msg and "Not supported symbols" in msg and "retCode 10001" in msg
    assert ex.rest_url in msg and "check the symbol" in msg
    assert kline_requests(ex) == 1  # not retried


def test_bad_interval_is_rejected_once_naming_the_interval(ex):
    with pytest.raises(InvalidRequest) as err:
        client(ex).fetch_klines("BTCUSDT", JAN1, END, interval="7")
    msg = str(err.value)
    assert "interval 7" in msg and "Invalid period!" in msg and "720 D W M" in msg
    assert kline_requests(ex) == 1


MALFORMED = {
    "bad_json": r"not (valid JSON|a valid JSON object)",
    "truncated": r"not valid JSON",
    "wrong_symbol": r"result\.symbol is 'ETHUSDT', expected 'BTCUSDT'",
    "high_below_low": r"row \d+ \(open_time .*\) high [\d.]+ is below low",
    "non_numeric": r"row \d+ .*field '\w+' = '.*' is not (a number|a finite number)",
    "missing_field": r"'result\.list' is missing|result\.symbol is None|field 'time'",
    "short_row": r"row \d+ has 6 fields, expected 7",
    "non_monotonic": r"row \d+ .* is newer than row \d+; the list must be newest first",
    "duplicate_time": r"row \d+ .* repeats the open time .* \(duplicate\)",
    "off_grid": r"row \d+ .* startTime \d+ is not on the 1 grid",
    "out_of_range": r"row 0 .* is outside the requested open-time range",
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_persistent_malformed_pages_fail_with_what_was_wrong(ex, kind):
    ex.set_faults(rate=1.0, kinds=[kind])
    with pytest.raises(MalformedResponse, match=MALFORMED[kind]) as err:
        client(ex, malformed_retries=2).fetch_klines("BTCUSDT", JAN1, END)
    msg = str(err.value)
    assert "BTCUSDT" in msg and ex.rest_url in msg
    if kind not in ("bad_json", "truncated"):
        assert RANGE in msg
    assert kline_requests(ex) == 3  # the first try and two retries, then it gives up


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_transient_malformed_page_is_retried_and_never_leaks(ex, kind):
    ex.set_faults(rate=1.0, kinds=[kind], count=1)
    got = client(ex).fetch_klines("BTCUSDT", JAN1, END)
    assert got.equals(synthetic.frame("BTCUSDT", 1704067200000, 1704073200000).select(COLUMNS))
    assert kline_requests(ex) == 2


@pytest.mark.parametrize(
    "kind",
    ["ret_10006", "http_429", "http_403", "http_502", "http_503", "http_504", "ret_10000",
     "ret_10016", "drop_before", "drop_mid_body", "long_delay"],
)  # fmt: skip
def test_transient_failures_are_retried(ex, kind):
    ex.set_faults(rate=1.0, kinds=[kind], count=2)
    got = client(ex).fetch_klines("BTCUSDT", JAN1, END)
    assert got.height == 100
    assert ex.stats()["faults"] == {kind: 2}
    assert kline_requests(ex) == 3


def test_a_short_delay_is_just_waited_for(ex):
    ex.set_faults(rate=1.0, kinds=["delay"], count=1)
    assert client(ex, timeout_s=5).fetch_klines("BTCUSDT", JAN1, END).height == 100
    assert kline_requests(ex) == 1


def test_an_outage_longer_than_the_retries_ends_in_a_clear_error(ex):
    ex.set_faults(rate=1.0, kinds=["5xx"], duration_s=120)
    with pytest.raises(ExchangeUnavailable) as err:
        client(ex, max_retries=3).fetch_klines("BTCUSDT", JAN1, END)
    msg = str(err.value)
    assert "still failing after 4 attempt(s)" in msg and "max_retries=3" in msg
    assert "BTCUSDT" in msg and RANGE in msg
    assert kline_requests(ex) == 4


def test_the_time_budget_bounds_retries(ex):
    ex.set_faults(rate=1.0, kinds=["5xx"], duration_s=120)
    c = client(ex, max_retries=1000, retry_budget_s=0.3, backoff_s=0.05, backoff_cap_s=0.1)
    with pytest.raises(ExchangeUnavailable, match=r"budget 0\.3 s"):
        c.fetch_klines("BTCUSDT", JAN1, END)
    assert kline_requests(ex) < 1000


def test_unreachable_exchange_names_the_url_and_the_way_out():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    c = BybitClient(url, timeout_s=0.5, backoff_s=0.01)
    with pytest.raises(ExchangeUnavailable) as err:
        c.fetch_klines("BTCUSDT", JAN1, END)
    msg = str(err.value)
    assert url in msg and "signalbox replay" in msg and "SIGNALBOX_BYBIT_URL" in msg
    with pytest.raises(ExchangeUnavailable, match="signalbox replay"):
        c.server_time()
    with pytest.raises(ExchangeUnavailable, match="signalbox replay"):
        c.latest_closed_open_time("BTCUSDT")


def test_a_url_that_is_not_bybit(ex):
    c = BybitClient(ex.rest_url + "/nothing-here", timeout_s=1)
    with pytest.raises(ExchangeError, match="HTTP 404") as err:
        c.server_time()
    assert "Bybit v5 endpoint" in str(err.value)


def test_latest_closed_open_time_makes_exactly_one_attempt(ex):
    ex.set_faults(rate=1.0, kinds=["http_503"], count=1)
    c = client(ex)
    with pytest.raises(ExchangeUnavailable):
        c.latest_closed_open_time("BTCUSDT")
    assert kline_requests(ex) == 1
    assert c.latest_closed_open_time("BTCUSDT") == dt.datetime(2024, 1, 1, 23, 59, tzinfo=UTC)


def test_server_time_retries_and_validates(ex):
    ex.set_faults(rate=1.0, kinds=["missing_field"], count=1)
    assert client(ex).server_time().date() == dt.date(2024, 1, 2)
    ex.set_faults(rate=1.0, kinds=["missing_field"])
    with pytest.raises(MalformedResponse, match="timeNano"):
        client(ex, malformed_retries=1).server_time()


def _payload(rows, **over):
    body = {"retCode": 0, "retMsg": "OK", "result": {"symbol": "BTCUSDT", "category": "linear",
            "list": rows}, "retExtInfo": {}, "time": 1704070000000}  # fmt: skip
    body.update(over)
    return body


def _parse(payload, lo=1704067200000, hi=1704067320000):
    return parse_kline_page(
        payload, symbol="BTCUSDT", category="linear", interval="1", lo_ms=lo, hi_ms=hi, what="t"
    )


GOOD = [
    ["1704067320000", "100", "101", "99", "100.5", "1", "100"],
    ["1704067260000", "100", "101", "99", "100", "1", "100"],
]


def test_page_validation_accepts_good_rows_and_returns_arrays():
    times, values, server = _parse(_payload(GOOD))
    assert list(times) == [1704067320000, 1704067260000] and values.shape == (2, 6)
    assert server == 1704070000000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r[0].__setitem__(3, "102"), "high 101 is below low 102"),
        (lambda r: r[0].__setitem__(1, "98"), "outside .low 99, high 101"),
        (lambda r: r[0].__setitem__(5, "-1"), "negative volume -1"),
        (lambda r: r[1].__setitem__(4, "inf"), "'close' = 'inf' is not a finite number"),
        (lambda r: r[1].__setitem__(0, "17040672600x0"), "'startTime' = '17040672600x0'"),
        (lambda r: r[1].__setitem__(0, "1704067320000"), "duplicate"),
        (lambda r: r.reverse(), "newest first"),
        (lambda r: r[0].__setitem__(0, "1704067380000"), "outside the requested"),
        (lambda r: r[0].__setitem__(0, "1704067321000"), "not on the 1 grid"),
        (lambda r: r[0].pop(), "has 6 fields"),
    ],
)
def test_page_validation_names_row_and_field(change, message):
    rows = [list(r) for r in GOOD]
    change(rows)
    with pytest.raises(MalformedResponse, match=message):
        _parse(_payload(rows))


def test_page_validation_of_the_envelope():
    with pytest.raises(MalformedResponse, match="expected a JSON object"):
        _parse([])
    with pytest.raises(MalformedResponse, match="retCode is None"):
        _parse({"result": {}})
    with pytest.raises(MalformedResponse, match=r"result\.category is 'spot'"):
        _parse(_payload(GOOD, result={"symbol": "BTCUSDT", "category": "spot", "list": GOOD}))
    with pytest.raises(MalformedResponse, match="opens after the server clock"):
        _parse(_payload(GOOD, time=1704067300000))
    too_many = [GOOD[0]] * 1001
    with pytest.raises(MalformedResponse, match="more than the limit"):
        _parse(_payload(too_many))

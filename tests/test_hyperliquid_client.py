"""The Hyperliquid client (official SDK) against the replay's Hyperliquid face on loopback."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time

import polars as pl
import pytest

from pipeline.candles.timeframes import KLINE_COLUMNS
from pipeline.config import load_settings
from pipeline.exchanges.hyperliquid import HyperliquidClient, connect
from pipeline.exchanges.protocol import (
    ClosedCandle,
    Endpoint,
    ExchangeUnavailable,
    InvalidRequest,
)
from pipeline.replay import synthetic

UTC = dt.UTC
NOW = "2024-01-10T00:00:30Z"
JAN9 = dt.datetime(2024, 1, 9, tzinfo=UTC)
MIN = dt.timedelta(minutes=1)
HL_SEED = synthetic.venue_seed(7, "hyperliquid")


def client(ex, **kw) -> HyperliquidClient:
    opts = {"timeout_s": 2.0, "backoff_s": 0.01, "backoff_cap_s": 0.05, **kw}
    return HyperliquidClient(ex.rest_url, **opts)


def truth(coin: str, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
    """What the replay's Hyperliquid market holds (turnover: Hyperliquid reports none)."""
    a, b = (int(t.timestamp() * 1000) for t in (start, end))
    f = synthetic.frame(coin, a, b, HL_SEED)
    return f.with_columns(turnover=pl.lit(None, pl.Float64)).select(KLINE_COLUMNS)


def info_requests(ex) -> int:
    return ex.stats()["paths"].get("/info", 0)


@pytest.fixture
def ex(replay_factory):
    return replay_factory(clock_start=NOW, long_delay_s=2.5, ws_push_s=0.2)


def test_paging_over_more_than_5000_minutes_equals_the_replay_s_truth(ex):
    start, end = dt.datetime(2024, 1, 5, 12, tzinfo=UTC), dt.datetime(2024, 1, 9, 12, tzinfo=UTC)
    got = client(ex).fetch_klines("BTC", start, end)
    assert got.height == 5760 and got.equals(truth("BTC", start, end))
    assert info_requests(ex) == 1 + 2  # the coin list, then two pages of at most 5000


def test_only_closed_candles_by_the_exchange_s_clock(ex):
    start = dt.datetime(2024, 1, 9, 23, 50, tzinfo=UTC)
    got = client(ex).fetch_klines("BTC", start, start + 30 * MIN)  # reaches past the clock
    assert got["open_time"].max() == dt.datetime(2024, 1, 9, 23, 59, tzinfo=UTC)
    assert got.height == 10
    cut = client(ex).fetch_klines("BTC", start, start + 30 * MIN, closed_by=start + 5 * MIN)
    assert cut.height == 5  # 23:50..23:54: closed at or before 23:55
    assert client(ex).latest_closed_open_time("BTC") == dt.datetime(2024, 1, 9, 23, 59, tzinfo=UTC)


def test_a_range_older_than_the_candles_the_venue_keeps_is_refused_not_read_as_no_trades(ex):
    """Live Hyperliquid keeps only its newest 5000 1m candles and answers older windows with
    nothing; stored, that would be minutes without trades. `keeps` is what `connect` sets for
    the live venue (5000); here 60, against the replay's clock (00:00:30)."""
    kept = client(ex, keeps=60)
    oldest = dt.datetime(2024, 1, 9, 23, 1, tzinfo=UTC)  # 60 candles up to the 00:00 open
    assert kept.fetch_klines("BTC", oldest, oldest + 10 * MIN).height == 10
    with pytest.raises(InvalidRequest) as err:
        kept.fetch_klines("BTC", oldest - MIN, oldest + 10 * MIN)
    says = str(err.value)
    assert "newest 60 1m candles (from 2024-01-09 23:01 UTC on)" in says
    assert "BTC from 2024-01-09 23:00" in says and "nothing was stored" in says
    assert "live.history_days" in says  # and how to proceed
    settings = load_settings(None, env={})
    live = Endpoint("live", "https://api.bybit.com", "wss://x", "bybit", "bybit")
    assert connect(settings, live).keeps == 5000
    assert connect(settings, Endpoint("replay", ex.rest_url, "", "replay", "r")).keeps is None


def test_the_venues_differ_for_the_same_coin(ex):
    from pipeline.exchanges.bybit import BybitClient

    start = dt.datetime(2024, 1, 9, tzinfo=UTC)
    hl = client(ex).fetch_klines("BTC", start, start + 60 * MIN)
    by = BybitClient(ex.rest_url, timeout_s=2.0).fetch_klines("BTCUSDT", start, start + 60 * MIN)
    assert hl.height == by.height == 60
    assert (hl["close"] - by["close"]).abs().max() > 1.0  # prices, in dollars


def test_an_unknown_coin_is_refused_by_name(ex):
    c = client(ex)
    with pytest.raises(InvalidRequest, match="NOPE not listed at Hyperliquid"):
        c.fetch_klines("NOPE", JAN9, JAN9 + 60 * MIN)
    with pytest.raises(InvalidRequest, match="NOPE"):
        c.stream(["BTC", "NOPE"], lambda candle: None)
    assert c.unlisted(["BTC", "NOPE"]) == {"NOPE": "not in Hyperliquid's meta universe (7 coins)"}
    assert c.instruments() == ["ADA", "BNB", "BTC", "DOGE", "ETH", "SOL", "XRP"]


def test_only_1m_candles_are_asked_for(ex):
    """The shared paging takes Bybit's interval words; Hyperliquid's client serves only 1."""
    c = client(ex)
    with pytest.raises(InvalidRequest, match="1m only, not interval '5'"):
        c.fetch_klines("BTC", JAN9, JAN9 + 60 * MIN, interval="5")
    assert c.fetch_klines("BTC", JAN9, JAN9 + 5 * MIN, interval="1").height == 5


@pytest.mark.parametrize(
    "kind",
    ["http_429", "http_502", "ret_10016", "drop_before", "drop_mid_body", "long_delay",
     "bad_json", "truncated", "wrong_symbol", "high_below_low", "non_numeric", "missing_field",
     "non_monotonic", "duplicate_time", "off_grid", "out_of_range"],
)  # fmt: skip
def test_faults_are_retried_and_never_leak(ex, kind):
    c = client(ex)
    c.instruments()  # the coin list first, so the faults hit the candle request
    start = dt.datetime(2024, 1, 9, tzinfo=UTC)
    ex.set_faults(rate=1.0, kinds=[kind], count=1)
    got = c.fetch_klines("BTC", start, start + 100 * MIN)
    assert got.equals(truth("BTC", start, start + 100 * MIN))
    assert ex.stats()["faults"] == {kind: 1} and info_requests(ex) == 1 + 2


def test_an_outage_ends_in_a_clear_error(ex):
    c = client(ex, max_retries=2)
    c.instruments()
    ex.set_faults(rate=1.0, kinds=["5xx"], duration_s=60)
    with pytest.raises(ExchangeUnavailable, match=r"BTC 1m candles .* still failing after 3"):
        c.fetch_klines("BTC", JAN9, JAN9 + 60 * MIN)


def test_the_stream_delivers_each_closed_candle_once(ex):
    ex.set_clock(speed=60)  # a minute a second
    got: list[ClosedCandle] = []
    three = threading.Event()

    def on_candle(candle: ClosedCandle) -> None:
        got.append(candle)
        if len(got) >= 3:
            three.set()

    c = client(ex)
    stream = c.stream(["BTC"], on_candle)
    try:
        assert three.wait(20)
    finally:
        stream.close()
    opens = [g.open_time for g in got]
    assert opens == sorted(set(opens)) and all(b - a == MIN for a, b in itertools.pairwise(opens))
    rest = c.fetch_klines("BTC", opens[0], opens[-1] + MIN)
    assert [(g.open, g.high, g.low, g.close, g.volume) for g in got] == list(
        rest.select("open", "high", "low", "close", "volume").iter_rows()
    )


def test_the_stream_reconnects_after_the_exchange_restarts(replay_factory):
    ex = replay_factory(clock_start=NOW, clock_speed=60, ws_push_s=0.2)
    got: list[ClosedCandle] = []
    stream = client(ex).stream(["ETH"], got.append)
    try:
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        ex.stop()
        ex.start()  # same port
        n = len(got)
        while len(got) < n + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stream.connections >= 2 and len(got) >= n + 2  # type: ignore[attr-defined]
    finally:
        stream.close()
    opens = [g.open_time for g in got]
    assert opens == sorted(set(opens))


def test_with_a_data_file_both_faces_serve_its_real_candles(tmp_path, replay_factory):
    from pipeline.exchanges.bybit import BybitClient
    from tests.test_replay_data import candles_file

    path = tmp_path / "bybit_linear_ETHUSDT_1m_2024-01-01_2024-01-02.parquet"
    candles_file(path)
    ex = replay_factory(data=path, clock_start="2024-01-05T00:00:00Z")
    start = dt.datetime(2024, 1, 1, 12, tzinfo=UTC)
    hl = client(ex).fetch_klines("ETH", start, start + 90 * MIN)
    by = BybitClient(ex.rest_url, timeout_s=2.0).fetch_klines("ETHUSDT", start, start + 90 * MIN)
    assert client(ex).instruments() == ["ETH"] and hl.height == 90
    values = ["open_time", "open", "high", "low", "close", "volume"]
    assert hl.select(values).equals(by.select(values))

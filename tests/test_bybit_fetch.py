"""BybitClient fetches exactly the closed candles of a range, through pybit, from the replay."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from pipeline.candles.timeframes import KLINE_COLUMNS as COLUMNS
from pipeline.exchanges.bybit import BybitClient
from pipeline.replay import synthetic

UTC = dt.UTC
JAN1 = dt.datetime(2024, 1, 1, tzinfo=UTC)
MIN = dt.timedelta(minutes=1)


def ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def truth(symbol: str, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
    return synthetic.frame(symbol, ms(start), ms(end)).select(COLUMNS)


def client(ex, **kw) -> BybitClient:
    return BybitClient(ex.rest_url, timeout_s=2.0, backoff_s=0.01, backoff_cap_s=0.05, **kw)


def test_long_range_in_pages_equals_the_synthetic_truth(replay_factory):
    ex = replay_factory(clock_start="2024-01-05T00:00:00Z")
    start = JAN1 + dt.timedelta(seconds=30)  # off the grid: the first candle is 00:01
    end = JAN1 + dt.timedelta(days=2, hours=7, minutes=13)  # 3312 candles: odd page boundaries
    got = client(ex).fetch_klines("BTCUSDT", start, end)
    assert got.columns == list(COLUMNS)
    assert got.schema["open_time"] == pl.Datetime("us", "UTC")
    assert got.schema["symbol"] == pl.String and got.schema["turnover"] == pl.Float64
    want = truth("BTCUSDT", JAN1 + MIN, end)
    assert got.height == want.height == 3312
    assert got.equals(want)
    assert ex.stats()["paths"]["/v5/market/kline"] == 4  # ceil(3312 / 1000) pages


def test_the_forming_candle_is_dropped_and_closed_by_is_honoured(replay_factory):
    ex = replay_factory(clock_start="2024-01-02T00:00:30Z")
    c = client(ex)
    got = c.fetch_klines("BTCUSDT", JAN1 + dt.timedelta(hours=23), JAN1 + dt.timedelta(days=2))
    assert got["open_time"].max() == JAN1 + dt.timedelta(hours=23, minutes=59)
    assert got["close_time"].max() == JAN1 + dt.timedelta(days=1)
    assert got.equals(truth("BTCUSDT", JAN1 + dt.timedelta(hours=23), JAN1 + dt.timedelta(days=1)))
    cut = JAN1 + dt.timedelta(hours=23, minutes=30)
    early = c.fetch_klines("BTCUSDT", JAN1 + dt.timedelta(hours=23), cut + MIN * 5, closed_by=cut)
    assert early["close_time"].max() == cut


def test_empty_ranges_give_an_empty_frame_with_the_schema(replay_factory):
    ex = replay_factory(clock_start="2024-01-02T00:00:00Z")
    c = client(ex)
    empty = c.fetch_klines("BTCUSDT", JAN1, JAN1)
    assert empty.height == 0 and empty.columns == list(COLUMNS)
    assert empty.schema["close_time"] == pl.Datetime("us", "UTC")
    future = c.fetch_klines("BTCUSDT", JAN1 + dt.timedelta(days=30), JAN1 + dt.timedelta(days=90))
    assert future.height == 0
    assert ex.stats()["paths"]["/v5/market/kline"] == 1  # stops at the exchange clock


def test_server_time_and_latest_closed_open_time(replay_factory):
    ex = replay_factory(clock_start="2024-01-02T00:00:30Z", clock_speed=1e-9)
    c = client(ex)
    assert abs(c.server_time() - dt.datetime(2024, 1, 2, 0, 0, 30, tzinfo=UTC)) < MIN / 60
    assert c.latest_closed_open_time("BTCUSDT") == dt.datetime(2024, 1, 1, 23, 59, tzinfo=UTC)
    ex.set_clock("2024-01-02T00:01:00Z")  # exactly at a close: that candle counts as closed
    assert c.latest_closed_open_time("BTCUSDT") == dt.datetime(2024, 1, 2, 0, 0, tzinfo=UTC)


def test_latest_closed_is_none_before_anything_closed(tmp_path, replay_factory):
    ex = replay_factory(clock_start="2017-06-01T00:00:00Z")  # before the synthetic listing
    assert client(ex).latest_closed_open_time("BTCUSDT") is None


def test_week_of_two_symbols_with_10_percent_faults_equals_the_clean_fetch(replay_factory):
    clean_ex = replay_factory(clock_start="2024-01-09T00:00:00Z")
    faulty = replay_factory(clock_start="2024-01-09T00:00:00Z", faults=0.10, long_delay_s=1.5)
    end = JAN1 + dt.timedelta(days=7)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        clean = client(clean_ex).fetch_klines(symbol, JAN1, end)
        assert clean.height == 7 * 1440
        got = BybitClient(faulty.rest_url, timeout_s=1.0, backoff_s=0.01, backoff_cap_s=0.1)
        assert got.fetch_klines(symbol, JAN1, end).equals(clean)
    stats = faulty.stats()
    assert sum(stats["faults"].values()) >= 1, stats  # the faulty exchange did fail some


def test_half_of_all_requests_failing_in_every_way_still_gives_the_truth(replay_factory):
    ex = replay_factory(clock_start="2024-01-09T00:00:00Z", faults=0.5, long_delay_s=1.5)
    c = BybitClient(
        ex.rest_url, timeout_s=1.0, max_retries=20, malformed_retries=10, backoff_s=0.01,
        backoff_cap_s=0.05,
    )  # fmt: skip
    start, end = JAN1 + dt.timedelta(hours=5, minutes=3), JAN1 + dt.timedelta(days=3)
    for symbol in ("BTCUSDT", "SOLUSDT"):
        assert c.fetch_klines(symbol, start, end).equals(truth(symbol, start, end))
    faults = ex.stats()["faults"]
    assert sum(faults.values()) >= 5 and len(faults) >= 4, faults  # several kinds, all survived


def test_late_revision_shows_on_the_next_fetch(replay_factory):
    ex = replay_factory(clock_start="2024-01-02T00:00:00Z")
    c = client(ex)
    before = c.fetch_klines("BTCUSDT", JAN1, JAN1 + MIN * 10)
    ex.revise("BTCUSDT", JAN1 + MIN * 3, close=99999.9, high=99999.9)
    after = c.fetch_klines("BTCUSDT", JAN1, JAN1 + MIN * 10)
    changed = before.join(after, on="open_time").filter(pl.col("close") != pl.col("close_right"))
    assert changed["open_time"].to_list() == [JAN1 + MIN * 3]
    assert changed["close_right"].item() == 99999.9


@pytest.mark.parametrize("interval", ["60", "240", "D"])
def test_other_intervals_page_and_validate_too(replay_factory, interval):
    ex = replay_factory(clock_start="2024-03-01T00:00:00Z")
    got = client(ex).fetch_klines("BTCUSDT", JAN1, JAN1 + dt.timedelta(days=20), interval=interval)
    size = {"60": 60, "240": 240, "D": 1440}[interval]
    assert got.height == 20 * 1440 // size
    assert (got["close_time"] - got["open_time"]).unique().to_list() == [MIN * size]
    assert got["open_time"].is_sorted() and got["open_time"].n_unique() == got.height


def test_from_settings_uses_the_bybit_section(replay_session, home):
    from pipeline.config import load_settings

    settings = load_settings(env={"SIGNALBOX_BYBIT_URL": replay_session.rest_url})
    c = BybitClient.from_settings(settings)
    assert c.rest_url == replay_session.rest_url and c.max_retries == settings.bybit.max_retries
    assert c.server_time().year >= 2024


def test_one_client_shared_by_threads(replay_factory):
    from concurrent.futures import ThreadPoolExecutor

    ex = replay_factory(clock_start="2024-01-05T00:00:00Z", faults=0.1, long_delay_s=1.5)
    c = BybitClient(ex.rest_url, timeout_s=1.0, backoff_s=0.01, backoff_cap_s=0.05)
    jobs = [(s, JAN1 + k * 1000 * MIN, JAN1 + (k + 1) * 1000 * MIN)
            for s in ("BTCUSDT", "ETHUSDT") for k in range(4)]  # fmt: skip
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda j: c.fetch_klines(*j), jobs))
    got = pl.concat(parts).sort("symbol", "open_time")
    end = JAN1 + 4000 * MIN
    assert got.equals(pl.concat([truth("BTCUSDT", JAN1, end), truth("ETHUSDT", JAN1, end)]))


def test_instruments_lists_every_symbol_of_the_category(replay_session):
    from pipeline.config import REPLAY_SYMBOLS

    with BybitClient(replay_session.rest_url, timeout_s=2.0) as c:
        assert c.instruments() == sorted(REPLAY_SYMBOLS)

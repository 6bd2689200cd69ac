"""The trade collector on the replay exchange: the real pybit client follows
`publicTrade.<SYMBOL>`, every covered minute is journaled whole and adds up to its candle, and a
cut stream drops the minutes it spoiled from coverage."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from pathlib import Path

import pytest

from pipeline.config import load_settings
from pipeline.exchanges.sources import replay_endpoint
from pipeline.orderflow import journal
from pipeline.orderflow.collect import MinuteCollector
from pipeline.runtime.trades import venues
from tests.daemon import replay_env

MIN = 60_000
STEP = 0.001
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC


def _run(home: Path, ex, seconds_of_exchange: float, drop_at: float | None = None):
    env = {**replay_env(home, ex), "SIGNALBOX_SYMBOLS": "bybit:BTCUSDT,bybit:ETHUSDT"}
    settings = load_settings(env=env)
    (v,) = venues(settings, replay_endpoint(settings), grace_ms=5_000)
    assert v.collector.qty_steps == {"BTCUSDT": STEP, "ETHUSDT": STEP}  # from lotSizeFilter
    start = ex.clock.now_ms()
    v.start()
    dropped = False
    try:
        while ex.clock.now_ms() - start < seconds_of_exchange * 1000:
            if drop_at is not None and not dropped and ex.clock.now_ms() - start > drop_at * 1000:
                dropped = ex.drop_streams() >= 1
            time.sleep(0.05)
            v.tick()
    finally:
        v.stop()
    return v, journal.read(home, "bybit", dt.date(2024, 1, 1))


def _volumes(ex, symbol: str) -> dict[dt.datetime, float]:
    rows = ex.market.candles(symbol, "1", T0, T0 + 30 * MIN, ex.clock.now_ms())
    return {dt.datetime.fromtimestamp(r[0] / 1000, dt.UTC): r[5] for r in rows}


@pytest.mark.timeout(60)
def test_covered_minutes_are_whole_and_match_their_candles(tmp_path, replay_factory):
    ex = replay_factory(clock_start="2024-01-01T00:00:30Z", clock_speed=60)
    v, rows = _run(tmp_path, ex, 250)  # ~4 s of wall time
    assert v.connections == 1 and v.collector.late == 0
    for symbol in ("BTCUSDT", "ETHUSDT"):
        mine = rows.filter(rows["symbol"] == symbol)
        times = mine["open_time"].to_list()
        # coverage starts at the first minute after the stream's first push, then no holes
        assert times and times[0] >= dt.datetime(2024, 1, 1, 0, 1, tzinfo=dt.UTC)
        assert [b - a for a, b in itertools.pairwise(times)] == [dt.timedelta(minutes=1)] * (
            len(times) - 1
        )
        assert len(times) >= 2
        volume = _volumes(ex, symbol)
        for r in mine.iter_rows(named=True):
            total = r["taker_buy_volume"] + r["taker_sell_volume"]
            assert abs(total - volume[r["open_time"]]) < STEP / 2, r["open_time"]
            assert r["qty_step"] == STEP and r["trade_count"] > 0


@pytest.mark.timeout(60)
def test_a_cut_stream_restarts_coverage_and_nothing_short_is_journaled(tmp_path, replay_factory):
    ex = replay_factory(clock_start="2024-01-01T00:00:30Z", clock_speed=60)
    v, rows = _run(tmp_path, ex, 330, drop_at=150)
    assert v.connections >= 2  # pybit came back
    mine = rows.filter(rows["symbol"] == "BTCUSDT")
    times = mine["open_time"].to_list()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert any(g > dt.timedelta(minutes=1) for g in gaps), "the cut minute must be left out"
    volume = _volumes(ex, "BTCUSDT")
    for r in mine.iter_rows(named=True):
        total = r["taker_buy_volume"] + r["taker_sell_volume"]
        assert abs(total - volume[r["open_time"]]) < STEP / 2, r["open_time"]


def test_a_quiet_covered_minute_is_zero_and_a_late_trade_is_counted() -> None:
    trade = {"T": T0 + 10_000, "s": "BTCUSDT", "S": "Buy", "v": "0.002", "p": "100"}
    c2 = MinuteCollector(["BTCUSDT"], {"BTCUSDT": STEP}, grace_ms=5_000)
    c2.add(T0 + 10_000, [trade])  # the first push: coverage from the next minute
    out = c2.close(T0 + 3 * MIN + 5_000)  # minutes 00:01 and 00:02 closed by the clock
    assert [r["open_time"].minute for r in out] == [1, 2]
    assert c2.close(T0 + 3 * MIN + 5_000) == []  # nothing twice
    assert all(r["trade_count"] == 0 and r["taker_buy_volume"] == 0.0 for r in out)
    assert all(r["vwap"] is None for r in out)
    c2.add(T0 + 3 * MIN + 6_000, [{**trade, "T": T0 + 2 * MIN + 59_000}])
    assert c2.late == 1

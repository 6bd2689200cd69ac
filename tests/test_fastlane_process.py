"""The fast lane's process against the real replay exchange on loopback (REST and WebSocket),
a real warehouse replica, outbox and journal; the engine is the test double of
tests/fastlane_double.py (one BUY per used minute), so these tests hold for the process alone.

Fast clocks: the replay runs at 120x (a minute per half wall second) where the stream is needed.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.config import Settings, load_settings
from pipeline.exchanges import client
from pipeline.exchanges.protocol import ClosedCandle, Endpoint
from pipeline.exchanges.sources import replay_endpoint, warehouse_for
from pipeline.fastlane import journal, newest
from pipeline.runtime import latency
from pipeline.runtime.fastlane import FastLane
from pipeline.runtime.fastvenue import Timing, VenueRunner, candles_of
from pipeline.sidecar.outbox import publish
from tests.daemon import replay_env
from tests.fastlane_double import DoubleLane
from tests.test_replay_data import candles_file

MIN, HOUR = dt.timedelta(minutes=1), dt.timedelta(hours=1)
T0 = dt.datetime(2024, 3, 1, 12, 0, 30, tzinfo=dt.UTC)  # the replay clock's start
REPLICA_END = dt.datetime(2024, 3, 1, 11, 55, tzinfo=dt.UTC)  # stored: open times before it
SPEED = 120.0  # the replay clock's speed-up where the stream is needed
FAST = Timing(stall_s=70.0, tick_s=0.2, rebootstrap_s=0.5)


def settings_for(home: Path, ex: Any, markets: str = "bybit:BTCUSDT") -> Settings:
    env = {**replay_env(home, ex), "SIGNALBOX_HOME": str(home), "SIGNALBOX_SYMBOLS": markets}
    return load_settings(env=env)


def store(
    settings: Settings,
    ep: Endpoint,
    first: dt.datetime,
    end: dt.datetime,
    venue: str = "bybit",
    symbol: str = "BTCUSDT",
) -> None:
    """Put the venue's 1m candles with open_time in [first, end) into the warehouse (and so
    its replica), as the pipeline would have."""
    c = client(venue, settings, ep)
    try:
        frame = c.fetch_klines(symbol, first, end)
    finally:
        c.close()
    rows = frame.with_columns(
        exchange=pl.lit(venue),
        source=pl.lit("replay"),
        ingested_at=pl.lit(end).cast(pl.Datetime("us", "UTC")),
    )
    where = "exchange = ? AND symbol = ? AND open_time >= ? AND open_time < ?"
    warehouse_for(settings, ep).replace("klines_1m", rows, where, (venue, symbol, first, end))


def outbox_lines(settings: Settings) -> list[dict[str, Any]]:
    out = []
    for seg in sorted(settings.outbox_dir.glob("*.jsonl")):
        out += [json.loads(line) for line in seg.read_text().splitlines() if line]
    return out


def closes(lines: list[dict[str, Any]], personality: str = "double") -> list[dt.datetime]:
    mine = [m for m in lines if m["personality"] == personality]
    return [dt.datetime.fromisoformat(m["close_time"]) for m in mine]


def wait_for(
    what: str, ok: Callable[[], bool], lane: FastLane | None = None, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert lane is None or not lane.failed, f"the fast lane failed waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def contiguous(ts: list[dt.datetime]) -> bool:
    return all(b - a == MIN for a, b in itertools.pairwise(ts))


@pytest.fixture
def venue(home: Path, replay_factory) -> Iterator[tuple[Any, Settings, Endpoint]]:
    """A replay exchange at 120x from T0, and a home whose replica holds 09:55 to 11:54."""
    ex = replay_factory(clock_start=T0, clock_speed=SPEED)
    settings = settings_for(home, ex)
    ep = replay_endpoint(settings)
    store(settings, ep, REPLICA_END - 2 * HOUR, REPLICA_END)
    yield ex, settings, ep


@pytest.fixture
def runner(home: Path, replay_factory) -> Iterator[tuple[VenueRunner, Settings, Endpoint]]:
    """A bybit runner on a replay clock at 1x (no stream: candles are handed in), its lane
    bootstrapped from a replica whose last minute opens at 11:54."""
    ex = replay_factory(clock_start=T0, clock_speed=1.0)
    settings = settings_for(home, ex)
    ep = replay_endpoint(settings)
    store(settings, ep, REPLICA_END - HOUR, REPLICA_END)
    wh = warehouse_for(settings, ep)
    r = VenueRunner(
        settings, "bybit", ["BTCUSDT"], client("bybit", settings, ep), wh, DoubleLane,
        FAST, threading.Event(),
    )  # fmt: skip
    r._bootstrap(r.symbols)
    yield r, settings, ep
    r.client.close()


def rest_candles(
    settings: Settings, ep: Endpoint, first: dt.datetime, n: int
) -> list[ClosedCandle]:
    c = client("bybit", settings, ep)
    try:
        return candles_of(c.fetch_klines("BTCUSDT", first, first + n * MIN))
    finally:
        c.close()


# -- the stream ---------------------------------------------------------------------------
def test_catches_up_over_rest_then_follows_the_stream_and_stops_cleanly(venue):
    """From the replica's last minute to the stream: every minute once, in order, journaled,
    each live batch with a latency record; a signal the pipeline published first is not sent
    again; stopping closes the stream and leaves no thread behind."""
    _, settings, ep = venue
    first = T0.replace(second=0) - 4 * MIN  # the first minute the replica lacks closes here
    pipeline_copy = {
        "exchange": "bybit", "symbol": "BTCUSDT", "personality": "double", "timeframe": "1m",
        "open_time": first + MIN, "close_time": first + 2 * MIN, "action": "BUY",
        "confidence": 0.25, "price": 1.0, "reasons": ["pipeline"], "quality": "ok",
    }  # fmt: skip
    assert publish(settings, [pipeline_copy], now=T0)
    before = set(threading.enumerate())
    lane = FastLane(settings, ep, DoubleLane, FAST).start()
    try:
        live = lambda: [r for r in latency.read(settings.home, "fast") if r["via"] == "ws"]  # noqa: E731
        wait_for("3 live batches", lambda: len(live()) >= 3, lane)
    finally:
        lane.stop()
    assert not lane.failed
    lines = outbox_lines(settings)
    got = sorted(closes(lines))
    assert got[0] == first and contiguous(got), got  # every minute once, the pipeline's too
    kept = [m for m in lines if dt.datetime.fromisoformat(m["close_time"]) == first + 2 * MIN]
    assert [(m["reasons"], m["origin"]) for m in kept] == [(["pipeline"], "pipeline")]
    assert {m["origin"] for m in lines if m not in kept} == {"fast"}
    fast = journal.read(settings.home, "bybit", first.date())
    assert [dt.datetime.fromisoformat(r["close_time"]) for r in fast] == got  # each computed
    recs = latency.read(settings.home, "fast")
    live = [r for r in recs if r["via"] == "ws"]
    assert all(r["confirm_at"] <= r["published_at"] for r in live)
    assert all(r["exchange"] == "bybit" and r["signals"] == 1 for r in live)
    left = lambda: [t for t in threading.enumerate() if t not in before and t.is_alive()]  # noqa: E731
    # websocket-client's reader may sit in poll() until pybit's ping_timeout (10 s) passes
    wait_for("the stream's threads to end", lambda: not left(), timeout=15.0)


def test_a_dropped_stream_is_reconnected_and_the_lost_minutes_filled(venue, caplog):
    """The WebSocket is cut mid-minute and kept down across two closes: the watchdog (70 s of
    exchange clock) reconnects, REST fills what the stream lost; nothing is missed and
    nothing is published twice."""
    ex, settings, ep = venue
    caplog.set_level(logging.INFO, logger="signalbox.fast")
    lane = FastLane(settings, ep, DoubleLane, FAST).start()
    try:
        ws = lambda: [r for r in latency.read(settings.home, "fast") if r["via"] == "ws"]  # noqa: E731
        wait_for("the stream", lambda: len(ws()) >= 1, lane)
        cut_at = ex.now()
        deadline = time.monotonic() + 150 / SPEED  # 150 s of exchange clock without a stream
        while time.monotonic() < deadline:
            ex.drop_streams()
            time.sleep(0.05)
        back = cut_at.timestamp() + 150  # a close after the cut's end, from the stream
        wait_for("the stream again", lambda: any(r["close"] > back for r in ws()), lane)
    finally:
        lane.stop()
    assert not lane.failed
    got = closes(outbox_lines(settings))
    assert contiguous(got) and len(got) == len(set(got)), got
    assert got[0] == T0.replace(second=0) - 4 * MIN
    filled = [r for r in latency.read(settings.home, "fast") if r["via"] == "rest"]
    assert any(r["close"] > cut_at.timestamp() for r in filled), filled
    assert lane.runners[0].reconnects >= 1
    assert "reconnect: no confirmed candle" in caplog.text
    assert journal.conflicts(settings.home, "bybit", T0.date()) == []


def test_each_venue_follows_its_own_stream(home: Path, replay_factory):
    """Bybit (pybit, confirm=true) and Hyperliquid (the SDK's candle channel, closed when the
    next minute starts) side by side: each venue's minutes once, in order, in its journal."""
    ex = replay_factory(clock_start=T0, clock_speed=SPEED)
    settings = settings_for(home, ex, "bybit:BTCUSDT,hyperliquid:BTC")
    ep = replay_endpoint(settings)
    store(settings, ep, REPLICA_END - HOUR, REPLICA_END)
    store(settings, ep, REPLICA_END - HOUR, REPLICA_END, "hyperliquid", "BTC")
    lane = FastLane(settings, ep, DoubleLane, FAST).start()

    def live(venue: str) -> int:
        recs = latency.read(settings.home, "fast")
        return sum(r["via"] == "ws" and r["exchange"] == venue for r in recs)

    try:
        both = lambda: live("bybit") >= 2 and live("hyperliquid") >= 2  # noqa: E731
        wait_for("both venues' streams", both, lane)
    finally:
        lane.stop()
    assert not lane.failed
    lines = outbox_lines(settings)
    for venue in ("bybit", "hyperliquid"):
        got = closes([m for m in lines if m["exchange"] == venue])
        assert got[0] == REPLICA_END + MIN and contiguous(got), (venue, got)
        fast = journal.read(settings.home, venue, T0.date())
        assert [dt.datetime.fromisoformat(r["close_time"]) for r in fast] == got


# -- candles handed in ----------------------------------------------------------------------
def test_a_gap_is_filled_over_rest_before_the_candle(runner):
    r, settings, ep = runner
    expected = r.lane.expected("BTCUSDT")
    assert expected == T0.replace(second=0) - 5 * MIN
    late = rest_candles(settings, ep, expected + 3 * MIN, 1)[0]
    r.handle(late, time.time())
    assert closes(outbox_lines(settings)) == [expected + k * MIN for k in range(1, 5)]
    assert [s for _, _, s in r.lane.fed] == ["gap", "used", "used", "used", "used"]
    vias = [x["via"] for x in latency.read(settings.home, "fast")]
    assert vias == ["rest", "ws"]


def test_duplicates_and_out_of_order_candles_are_ignored(runner):
    r, settings, ep = runner
    expected = r.lane.expected("BTCUSDT")
    c0, c1, c2 = rest_candles(settings, ep, expected, 3)
    for c in (c0, c0, c1, c0, c1, c2, c1):
        r.handle(c, time.time())
    got = closes(outbox_lines(settings))
    assert got == [c.open_time + MIN for c in (c0, c1, c2)]
    assert len(journal.read(settings.home, "bybit", T0.date())) == 3
    assert journal.conflicts(settings.home, "bybit", T0.date()) == []


def test_minutes_the_venue_has_no_candle_for_silence_the_symbol(home, replay_factory, caplog):
    """A REST fill that comes back without some minutes (a data file with a 3-minute hole,
    served by the replay): the pipeline records them as confirmed gaps, which the lane cannot
    know yet, so the symbol goes silent instead of computing on them."""
    caplog.set_level(logging.INFO, logger="signalbox.fast")
    jan1 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    path = home / "bybit_linear_ETHUSDT_1m_2024-01-01_2024-01-02.parquet"
    candles_file(path, gap=(700, 703))  # no candles opening 11:40, 11:41, 11:42 on Jan 1
    ex = replay_factory(data=path, clock_start="2024-01-01T12:00:30Z")
    settings = settings_for(home, ex, "bybit:ETHUSDT")
    ep = replay_endpoint(settings)
    store(settings, ep, jan1 + 600 * MIN, jan1 + 690 * MIN, symbol="ETHUSDT")  # to 11:29
    wh = warehouse_for(settings, ep)
    r = VenueRunner(
        settings, "bybit", ["ETHUSDT"], client("bybit", settings, ep), wh, DoubleLane,
        FAST, threading.Event(),
    )  # fmt: skip
    try:
        r._bootstrap(r.symbols)
        r._catch_up(r.symbols)
    finally:
        r.client.close()
    got = closes(outbox_lines(settings))
    assert got[0] == jan1 + 691 * MIN and got[-1] == jan1 + 700 * MIN  # 11:30 to 11:39 only
    assert contiguous(got) and "ETHUSDT" in r.lane.silent()
    assert "ETHUSDT silent: no candle at the venue for 11:40 to 11:43" in caplog.text


def test_a_revised_candle_silences_the_symbol_until_the_replica_moves_past_it(runner, caplog):
    r, settings, ep = runner
    caplog.set_level(logging.INFO, logger="signalbox.fast")
    expected = r.lane.expected("BTCUSDT")
    c0, c1 = rest_candles(settings, ep, expected, 2)
    r.handle(c0, time.time())
    revised = ClosedCandle(**{**c0.__dict__, "close": c0.close * 1.01})
    r.handle(revised, time.time())
    r.handle(c1, time.time())
    assert closes(outbox_lines(settings)) == [c0.open_time + MIN]  # nothing while silent
    assert "BTCUSDT silent because revised" in caplog.text
    r._rebootstrap()  # the replica still ends before the revised minute
    assert "BTCUSDT" in r.lane.silent()
    store(settings, ep, expected, c1.open_time + MIN)  # the pipeline stored the final data
    r._rebootstrap()
    assert r.lane.silent() == {}
    assert "BTCUSDT resumed from the replica" in caplog.text
    # caught up from the replica's end to the exchange's newest closed minute
    got = closes(outbox_lines(settings))
    assert got[1] == c1.open_time + 2 * MIN and contiguous(got[1:])
    assert got[-1] <= r.clock.now()


def test_the_runner_records_each_confirmed_minute_for_the_live_sensor(venue):
    """Each minute the stream confirms lands in `<home>/fastlane/newest.json`, which the live
    sensor reads instead of asking REST for every market."""
    _, settings, ep = venue
    lane = FastLane(settings, ep, DoubleLane, FAST).start()
    try:
        ws = lambda: [r for r in latency.read(settings.home, "fast") if r["via"] == "ws"]  # noqa: E731
        wait_for("2 live batches", lambda: len(ws()) >= 2, lane)
        last_close = dt.datetime.fromtimestamp(ws()[-1]["close"], dt.UTC)
    finally:
        lane.stop()
    rec = json.loads(newest.path(settings.home).read_text())
    recorded = dt.datetime.fromisoformat(rec["markets"]["bybit:BTCUSDT"])
    assert recorded >= last_close - MIN  # the open time of the newest confirmed candle
    assert set(rec["venues"]) == {"bybit"} and rec["venues"]["bybit"]["exchange_time"]
    reading = newest.read(settings.home, ["bybit:BTCUSDT"], last_close - MIN)
    assert reading.have == {"bybit:BTCUSDT": recorded} and reading.lacking == []

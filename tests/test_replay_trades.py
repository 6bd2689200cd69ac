"""The replay exchange's public trades: consistent with its candles, deterministic, served as
Bybit's `publicTrade.<SYMBOL>` topic to the real pybit client, cut by `drop_streams`."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from pipeline.orderflow.aggregate import minute_flow, trades_frame
from pipeline.replay import ReplayExchange, trades
from pipeline.replay.trades import minute_trades

MIN = 60_000
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
STEP = 0.001  # the synthetic market's qty step (volume decimals 3)


@pytest.fixture(scope="module")
def market():
    with ReplayExchange(seed=7, symbols=["BTCUSDT", "ETHUSDT"]) as ex:
        yield ex.market


@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT"])
def test_trades_add_up_to_their_candle(market, symbol) -> None:
    rows = market.day_rows(symbol, T0 // (1440 * MIN))[:120]  # two hours of minutes
    price_step = 10.0 ** -market.decimals(symbol)[0]
    for row in rows:
        t = minute_trades(market, symbol, int(row[0]))
        assert t is not None and len(t.times) >= 1
        o, h, lo, c, v = row[1:6]
        assert int(t.units.sum()) == round(v / STEP)  # exact, in qty steps
        assert lo <= t.prices.min() and t.prices.max() <= h
        assert np.allclose(t.prices / price_step, np.round(t.prices / price_step), atol=1e-6)
        assert (t.prices[0], t.prices[-1]) == (o, c) or len(t.times) == 1
        if len(t.times) >= 4:
            assert (t.prices.min(), t.prices.max()) == (lo, h)
        assert np.all(np.diff(t.times) >= 0)
        assert row[0] <= t.times[0] and t.times[-1] < row[0] + MIN


def test_same_seed_same_trades_and_a_revision_gets_new_ones(market) -> None:
    a = minute_trades(market, "BTCUSDT", T0)
    trades.synthesize.cache_clear()
    b = minute_trades(market, "BTCUSDT", T0)
    assert a is not None and b is not None and a is not b
    assert a.ids == b.ids and a.size == b.size and a.price == b.price
    assert np.array_equal(a.times, b.times) and np.array_equal(a.buy, b.buy)
    with ReplayExchange(seed=7, symbols=["BTCUSDT"], clock=None) as ex:
        ex.revise("BTCUSDT", T0, volume=1.5)
        r = minute_trades(ex.market, "BTCUSDT", T0)
        assert r is not None and int(r.units.sum()) == 1500
    with ReplayExchange(seed=8, symbols=["BTCUSDT"]) as other:
        c = minute_trades(other.market, "BTCUSDT", T0)
        assert c is not None and c.ids != a.ids


def _collect(ex: ReplayExchange, seconds_of_exchange: float, drop_after: float | None = None):
    """Trade messages a real pybit client receives while the exchange clock runs."""
    import pybit.unified_trading as ut

    got: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_trade(msg: dict[str, Any]) -> None:
        with lock:
            got.append(msg)

    ut.PUBLIC_WSS = ex.pybit_public_wss  # restored by the caller's monkeypatch
    ws = ut.WebSocket(testnet=False, channel_type="linear", retries=5, restart_on_error=True)
    try:
        ws.trade_stream(symbol="BTCUSDT", callback=on_trade)
        start = ex.clock.now_ms()
        dropped = False
        while ex.clock.now_ms() - start < seconds_of_exchange * 1000:
            if drop_after is not None and not dropped and ex.clock.now_ms() - start > drop_after:
                assert ex.drop_streams() >= 1
                dropped = True
            time.sleep(0.05)
    finally:
        ws.exit()
    return start, got


@pytest.mark.timeout(60)
def test_pybit_receives_trades_that_aggregate_to_the_candles(replay_factory, monkeypatch) -> None:
    import pybit.unified_trading as ut

    monkeypatch.setattr(ut, "PUBLIC_WSS", ut.PUBLIC_WSS)
    ex = replay_factory(clock_start="2024-01-01T00:00:50Z", clock_speed=60)
    start, got = _collect(ex, 150)  # 2.5 s of wall time
    assert got and {m["topic"] for m in got} == {"publicTrade.BTCUSDT"}
    assert all(m["type"] == "snapshot" and 1 <= len(m["data"]) <= 1024 for m in got)
    items = [t for m in got for t in m["data"]]
    stamps = [t["T"] for t in items]
    assert stamps == sorted(stamps) and len({t["i"] for t in items}) == len(items)
    assert min(stamps) > start  # nothing from before the subscription
    flow = minute_flow(trades_frame(items))
    whole = [T0 + MIN, T0 + 2 * MIN]  # minutes the subscription saw from open to close
    rows = ex.market.candles("BTCUSDT", "1", whole[0], whole[-1] + MIN, ex.clock.now_ms())
    by_minute = {r["open_time"].timestamp() * 1000: r for r in flow.iter_rows(named=True)}
    for row in rows:
        f = by_minute[row[0]]
        assert abs(f["taker_buy_volume"] + f["taker_sell_volume"] - row[5]) < STEP / 2
        assert row[3] <= f["price_low"] and f["price_high"] <= row[2]


@pytest.mark.timeout(60)
def test_a_dropped_stream_loses_trades_until_pybit_resubscribes(replay_factory, monkeypatch):
    import pybit.unified_trading as ut

    monkeypatch.setattr(ut, "PUBLIC_WSS", ut.PUBLIC_WSS)
    ex = replay_factory(clock_start="2024-01-01T00:00:50Z", clock_speed=60)
    _, got = _collect(ex, 240, drop_after=70)  # 4 s of wall time, cut at 1.2 s
    assert ex.stats()["ws_connections"] >= 2  # pybit came back and subscribed again
    items = [t for m in got for t in m["data"]]
    flow = minute_flow(trades_frame(items))
    rows = ex.market.candles("BTCUSDT", "1", T0, T0 + 5 * MIN, ex.clock.now_ms())
    volume = {int(r[0]): r[5] for r in rows}
    short = [
        r["open_time"]
        for r in flow.iter_rows(named=True)
        if r["taker_buy_volume"] + r["taker_sell_volume"]
        < volume[int(r["open_time"].timestamp() * 1000)] - STEP / 2
    ]
    assert short, "the cut should have lost trades of some minute"
    assert max(t["T"] for t in items) > T0 + 3 * MIN  # and trades came again after it

"""A paper bot fed one signal line and one closed bar at a time trades exactly as the backtest
over the same candles and signals (same kernel); its state survives a JSON round trip bit for
bit; the emergency stop halts it and says why; bad bot configuration is one line naming the key.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest

from pipeline.backtest.engine import run_backtest
from pipeline.bots.config import BotConfig
from pipeline.bots.state import BotState
from pipeline.bots.trader import Bar, Trader
from pipeline.candles.timeframes import to_us
from pipeline.config import ConfigError, load_settings
from pipeline.replay import synthetic

T0 = dt.datetime(2024, 3, 4, tzinfo=dt.UTC)
MARKET = "bybit:BTCUSDT"


def market(
    minutes: int, every: int = 17, seed: int = 3, t0: dt.datetime = T0
) -> tuple[pl.DataFrame, list[dict]]:
    ms = int(t0.timestamp() * 1000)
    raw = synthetic.candles("BTCUSDT", ms, ms + minutes * 60_000, seed=7)
    candles = pl.DataFrame(
        {
            "open_time": [t0 + dt.timedelta(minutes=i) for i in range(len(raw))],
            "open": raw[:, 1],
            "high": raw[:, 2],
            "low": raw[:, 3],
            "close": raw[:, 4],
        }
    )
    rng = np.random.default_rng(seed)
    sigs = []
    for k, minute in enumerate(range(5, minutes - 1, every)):
        close = t0 + dt.timedelta(minutes=minute)
        sigs.append(
            {
                "type": "signal",
                "seq": k + 1,
                "exchange": "bybit",
                "symbol": "BTCUSDT",
                "personality": "swing",
                "timeframe": "1m",
                "action": "BUY" if rng.random() < 0.5 else "SELL",
                "confidence": float(rng.uniform(0.3, 1.0)),
                "price": 0.0,
                "close_time": close.isoformat().replace("+00:00", "Z"),
                "quality": "ok",
            }
        )
    return candles, sigs


def replay(trader: Trader, state: BotState, candles: pl.DataFrame, sigs: list[dict]) -> list:
    """Each signal arrives when its bar closes, before the next bar does."""
    out, pending = [], list(sigs)
    for row in candles.iter_rows(named=True):
        t = to_us(row["open_time"])
        while pending and to_us(dt.datetime.fromisoformat(pending[0]["close_time"])) <= t:
            out += trader.on_signal(state, pending.pop(0))
        bar = Bar(MARKET, t, row["open"], row["high"], row["low"], row["close"])
        out += trader.on_bar(state, bar)
        state = BotState.from_json(json.loads(json.dumps(state.to_json())))  # as if restarted
    return out, state


@pytest.mark.parametrize(
    "params",
    [
        {"stop_loss_pct": 0.004, "take_profit_pct": 0.006},
        {"stop_loss_pct": 0.003, "trailing_stop_pct": 0.002, "leverage": 3, "slippage_bps": 4},
        {"sizing": "fraction", "stop_loss_pct": None, "on_opposite": "close"},
        {"stop_loss_pct": 0.005, "take_profit_r": 2, "breakeven_r": 1, "allow_short": False},
    ],
)
def test_a_bot_trades_as_the_backtest_does(params):
    candles, sigs = market(900)
    cfg = BotConfig(name="b", personality="swing", params=params, emergency_stop=None)
    p = cfg.backtest_params()
    trader = Trader(cfg, p, [MARKET])
    entries, _ = replay(trader, trader.new_state(), candles, sigs)
    frame = pl.DataFrame(
        [{**s, "close_time": dt.datetime.fromisoformat(s["close_time"])} for s in sigs]
    )
    bt = run_backtest(candles, frame.select("close_time", "action", "confidence"), p)
    exits = [e for e in entries if e["kind"] == "exit"]
    assert len(exits) == bt.trades.height > 3
    for e, t in zip(exits, bt.trades.iter_rows(named=True), strict=True):
        assert e["entry_time"] == t["entry_time"].isoformat().replace("+00:00", "Z")
        assert e["reason"] == t["exit_reason"]
        for a, b in (("entry_price", "entry_price"), ("price", "exit_price"), ("pnl", "pnl")):
            assert e[a] == pytest.approx(t[b], rel=1e-12, abs=1e-9)
    # equity at every close: the backtest's curve (positions still open are marked alike)
    marks = [e["equity"] for e in entries if e["kind"] == "equity"]
    np.testing.assert_allclose(marks, bt.equity, rtol=1e-12)
    fills = [e for e in entries if e["kind"] == "fill"]
    assert len(fills) == bt.counters["opened"]


def test_emergency_stop_halts_and_says_why():
    candles, sigs = market(600, every=7)
    cfg = BotConfig(
        name="risky",
        personality="swing",
        params={"sizing": "fraction", "position_cap": 1, "leverage": 20, "stop_loss_pct": None},
        emergency_stop=0.05,
    )
    trader = Trader(cfg, cfg.backtest_params(), [MARKET])
    entries, state = replay(trader, trader.new_state(), candles, sigs)
    halts = [e for e in entries if e["kind"] == "halt"]
    assert len(halts) == 1 and state.halted
    assert state.why is not None and state.why.startswith("emergency stop: equity")
    after = entries[entries.index(halts[0]) + 1 :]
    assert not [e for e in after if e["kind"] in ("fill", "exit")]
    assert {e["reason"] for e in after if e["kind"] == "skip"} <= {"halted"}
    assert state.positions() == {}
    assert state.equity <= state.peak * 0.95


def test_dca_buys_a_fixed_amount_on_buys_only():
    candles, sigs = market(300, every=11)
    cfg = BotConfig(name="acc", personality="swing", dca={"quote": 100})
    trader = Trader(cfg, cfg.backtest_params(), [MARKET])
    entries, state = replay(trader, trader.new_state(), candles, sigs)
    buys = [s for s in sigs if s["action"] == "BUY"]
    fills = [e for e in entries if e["kind"] == "fill"]
    assert len(fills) == len(buys) > 2
    assert {e["reason"] for e in entries if e["kind"] == "skip"} == {"dca_buys_only"}
    spent = sum(f["price"] * f["size"] + f["fees"] for f in fills)
    assert state.cash == pytest.approx(10_000 - spent, rel=1e-12)
    assert not [e for e in entries if e["kind"] == "exit"]


@pytest.mark.parametrize(
    ("bot", "needle"),
    [
        ({"name": "x", "personality": "swing", "params": {"stop_loss_pct": 3}}, "bots.0.params"),
        ({"name": "x", "personality": "swing", "risk": 1}, "bots.0.risk"),
        ({"name": "X Y", "personality": "swing"}, "bots.0.name"),
        ({"name": "x", "personality": "swing", "emergency_stop": 2}, "bots.0.emergency_stop"),
        ({"name": "x", "personality": "nope"}, "bots.0.personality"),
        ({"name": "x", "personality": "swing", "symbols": ["ETHUSDT"]}, "bots.0.symbols"),
    ],
)
def test_bad_bot_configuration_is_one_line_naming_the_key(tmp_path, bot, needle):
    cfg = tmp_path / "signalbox.yaml"
    cfg.write_text(json.dumps({"home": str(tmp_path / "h"), "bots": [bot]}))
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_the_state_round_trips_every_field():
    import dataclasses

    from pipeline.bots.state import Pending, Slot

    candles, sigs = market(120, every=5)
    cfg = BotConfig(name="b", personality="swing", params={"trailing_stop_pct": 0.002})
    trader = Trader(cfg, cfg.backtest_params(), [MARKET])
    _, state = replay(trader, trader.new_state(), candles, sigs)
    state.slots[MARKET].pending.append(Pending(99, 1, 1, 0.5, "1m"))
    rec = state.to_json()
    assert set(rec) == {f.name for f in dataclasses.fields(BotState)}
    assert set(rec["slots"][MARKET]) == {f.name for f in dataclasses.fields(Slot)}
    again = BotState.from_json(json.loads(json.dumps(rec)))
    assert json.dumps(again.to_json()) == json.dumps(rec)
    assert again.slots[MARKET].pending == state.slots[MARKET].pending

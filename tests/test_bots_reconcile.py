"""paper_vs_backtest's arithmetic: a bot that saw every signal and bar matches the backtest
trade for trade with no unexplained gap; one that was down misses trades, each explained."""

from __future__ import annotations

import datetime as dt
import time

import polars as pl

from pipeline.bots.config import BotConfig
from pipeline.bots.ingest import batch
from pipeline.bots.reconcile import reconcile
from pipeline.bots.store import BotStore
from pipeline.bots.trader import Bar, Trader
from pipeline.candles.timeframes import to_us
from pipeline.runtime.bots import Runner
from tests.test_bots_trader import MARKET, T0, market

CFG = BotConfig(
    name="rec",
    personality="swing",
    params={"stop_loss_pct": 0.004, "take_profit_pct": 0.006},
    emergency_stop=None,
)


def run_bot(tmp_path, candles, sigs, down: tuple[int, int] | None = None):
    """The bot over the candles, committing as `signalbox bots` does; `down`: minutes
    [a, b) in which it was not running (no bars, and those signals never reached it)."""
    trader = Trader(CFG, CFG.backtest_params(), [MARKET])
    store = BotStore(tmp_path, CFG.name)
    store.load()
    r = Runner(CFG, trader, store, trader.new_state())
    pending = list(sigs)
    for i, row in enumerate(candles.iter_rows(named=True)):
        t = to_us(row["open_time"])
        while pending and to_us(dt.datetime.fromisoformat(pending[0]["close_time"])) <= t:
            s = pending.pop(0)
            if not (down and down[0] <= i < down[1]):
                r.on_signal({**s, "_t": time.perf_counter()}, time.time())
        if down and down[0] <= i < down[1]:
            continue
        r.on_bar(Bar(MARKET, t, row["open"], row["high"], row["low"], row["close"]))
    store.close()
    b = batch(tmp_path, CFG.name, (0, 0))
    assert b is not None
    return b.trades, b.equity


def frames(sigs):
    return pl.DataFrame(
        [
            {
                "close_time": dt.datetime.fromisoformat(s["close_time"]),
                "action": s["action"],
                "confidence": s["confidence"],
                "quality": "ok",
                "timeframe": "1m",
            }
            for s in sigs
        ]
    )


def test_a_faultless_day_reconciles_with_no_unexplained_trade(tmp_path):
    candles, sigs = market(480, every=7)
    paper, equity = run_bot(tmp_path, candles, sigs)
    rec = reconcile("rec", T0.date(), candles, frames(sigs), paper, equity, CFG.backtest_params())
    assert rec.matched > 20
    assert rec.differences == []
    assert abs(rec.equity_gap) < 1e-6 and abs(rec.unexplained_gap) < 1e-6
    assert rec.curves is not None and rec.curves.height == 480
    assert rec.fees_paper > 0 and abs(rec.fees_paper - rec.fees_backtest) < 1e-9


def test_trades_missed_while_the_bot_was_down_are_explained(tmp_path):
    candles, sigs = market(480, every=7)
    paper, equity = run_bot(tmp_path, candles, sigs, down=(150, 230))
    rec = reconcile("rec", T0.date(), candles, frames(sigs), paper, equity, CFG.backtest_params())
    missed = [d for d in rec.differences if d["kind"] == "missed"]
    assert missed and {d["why"] for d in missed} == {"bot_down"}
    assert rec.unexplained_trades == 0
    assert rec.matched > 10

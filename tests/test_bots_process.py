"""`signalbox bots` as a real process: a real sidecar on a real socket, the replay exchange's
live stream for the bars (at 120x: a replay minute per half wall second), real files. Killed with
SIGKILL in the middle of the stream, the restarted bots act on every signal exactly once.
Also: a crash between the journal append and the state write is undone on load.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.bots.state import BotState
from pipeline.bots.store import BotStore, committed_entries, summary
from pipeline.config import load_settings
from pipeline.sidecar.outbox import publish
from tests.daemon import replay_env

pytest_plugins = ["tests.fx_sidecar", "tests.fx_replay"]
ROOT = Path(__file__).resolve().parent.parent
N = 24  # signals published
SPEED = 120.0  # the replay clock: a minute per half wall second
BOTS = [
    {"name": "swing", "personality": "swing", "params": {"stop_loss_pct": 0.01}},
    {"name": "acc", "personality": "swing", "dca": {"quote": 50}, "emergency_stop": None},
]


def entries(home: Path, name: str) -> list[dict[str, Any]]:
    return [e for _, e in committed_entries(home, name)]


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class BotsProc:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BotsProc:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.runtime.cli", "bots"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=out,
            )
        return self

    def kill(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(20)


@pytest.mark.slow
def test_sigkilled_bots_resume_without_duplicate_or_lost_actions(
    tmp_path, home, sidecar, replay_factory
):
    ex = replay_factory(clock_speed=SPEED)
    cfg = tmp_path / "signalbox.yaml"
    sc = {"heartbeat_s": 0.5, "signal_ttl_minutes": 60 * 24 * 30}
    cfg.write_text(yaml.safe_dump({"home": str(home), "sidecar": sc, "bots": BOTS}))
    env = {**replay_env(home, ex), "SIGNALBOX_CONFIG": str(cfg)}
    settings = load_settings(cfg, env=env)
    sidecar(cfg)
    bots = BotsProc(env, tmp_path / "bots.log").start()
    try:
        for b in BOTS:  # subscribed from the sidecar's current seq on
            wait_for(lambda b=b: summary(home, b["name"]).get("started"), 30, "the bots to start")
        published: list[int] = []
        for i in range(N):
            now = ex.clock.now().replace(second=0, microsecond=0)
            sig = {
                "exchange": "bybit",
                "symbol": "BTCUSDT",
                "personality": "swing",
                "timeframe": "1m",
                "action": "BUY" if i % 3 else "SELL",
                "confidence": 0.8,
                "price": 1.0,
                "open_time": now - dt.timedelta(minutes=1),
                "close_time": now,
                "reasons": [f"test {i}"],
                "quality": "ok",
            }
            published += publish(settings, [sig], now=now)
            if i == 8:
                wait_for(lambda: len(entries(home, "swing")) > 5, 20, "the first orders")
                assert bots.kill(signal.SIGKILL) == -signal.SIGKILL
                time.sleep(0.2)  # signals keep coming while the bots are down
            if i == 14:
                bots.start()
            time.sleep(60 / SPEED)  # a replay minute: one signal per bar
        assert len(published) == N
        last = published[-1]
        for b in BOTS:
            wait_for(
                lambda b=b: summary(home, b["name"]).get("last_seq") == last,
                30,
                f"bot {b['name']} to reach seq {last}",
            )
        wait_for(  # each order filled or dropped at its bar
            lambda: all(
                {e["seq"] for e in entries(home, b["name"]) if e["kind"] in ("fill", "skip")}
                >= set(published)
                for b in BOTS
            ),
            30,
            "every order's fill",
        )
    finally:
        bots.kill(signal.SIGTERM)
    log = (tmp_path / "bots.log").read_text()
    assert log.count("bot swing: swing on bybit:BTCUSDT") == 2  # started, killed, restarted
    for b in BOTS:
        got = entries(home, b["name"])
        assert [e["n"] for e in got] == list(range(len(got)))  # nothing journaled twice
        on_signal = [e for e in got if e["kind"] == "order" or e.get("reason") == "dca_buys_only"]
        assert sorted(e["seq"] for e in on_signal) == published  # each signal once, none lost
        outcome = [e["seq"] for e in got if e["kind"] in ("fill", "skip")]
        assert sorted(outcome) == published  # and each acted on once
    fills = [e for e in entries(home, "swing") if e["kind"] == "fill"]
    assert len(fills) >= 8
    acc = [e for e in entries(home, "acc") if e["kind"] == "fill"]
    # a BUY whose bar passed before the bot got it (a loaded machine at 120x) is dropped by
    # the backtest's own expiry rule, and journaled as such: filled or dropped, never lost
    dropped = [
        e for e in entries(home, "acc") if e["kind"] == "skip" and e["reason"] != "dca_buys_only"
    ]
    assert len(acc) + len(dropped) == sum(1 for i in range(N) if i % 3)
    bars = [e["time"] for e in entries(home, "swing") if e["kind"] == "equity"]
    assert len(bars) == len(set(bars))  # every bar processed once, across the kill


def test_an_event_cut_off_by_a_crash_is_undone_on_load(tmp_path):
    store = BotStore(tmp_path, "b")
    assert store.load() is None
    state = BotState(name="b", cash=1.0, peak=1.0, equity=1.0, slots={})
    state.last_seq = 7
    store.commit(state, [{"kind": "order", "seq": 7}], at=1.0)
    committed = store.journal_path.stat().st_size
    # killed after appending the next event's lines, before its state was written
    with store.journal_path.open("a") as f:
        f.write(json.dumps({"bot": "b", "n": 1, "kind": "order", "seq": 8}) + "\n")
    assert [e["seq"] for _, e in committed_entries(tmp_path, "b")] == [7]  # readers: committed
    store.close()
    again = BotStore(tmp_path, "b")
    state2 = again.load()
    assert state2 is not None and state2.last_seq == 7 and state2.n == 1
    assert os.path.getsize(store.journal_path) == committed  # the tail is gone: seq 8 is redone
    again.commit(state2, [{"kind": "order", "seq": 8}], at=2.0)
    assert [e["n"] for _, e in committed_entries(tmp_path, "b")] == [0, 1]
    again.close()


def test_a_group_commit_cut_off_by_a_crash_leaves_every_bot_at_its_last_pass(tmp_path):
    """`signalbox bots` records each event at once and commits many bots' states in one pass
    (`persist_all`): killed after a pass, with new events recorded and a state staged but not
    renamed, every bot reloads at that pass, its uncommitted journal lines cut off."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.bots.store import persist_all

    stores = [BotStore(tmp_path, f"b{i}") for i in range(3)]
    states = []
    for s in stores:
        assert s.load() is None
        states.append(BotState(name=s.name, cash=1.0, peak=1.0, equity=1.0, slots={}))
    with ThreadPoolExecutor(4) as pool:
        for seq in (1, 2):  # two lines, each recorded by every bot, then one pass
            for s, st in zip(stores, states, strict=True):
                st.last_seq = seq
                s.record(st, [{"kind": "order", "seq": seq}])
            pairs = zip(stores, states, strict=True)
            persist_all([(s, s.snapshot(st, float(seq))) for s, st in pairs], pool)
    committed = [s.journal_path.stat().st_size for s in stores]
    for s, st in zip(stores, states, strict=True):  # seq 3 recorded, its pass never ran
        st.last_seq = 3
        s.record(st, [{"kind": "order", "seq": 3}])
    stores[0]._stage(stores[0].snapshot(states[0], 3.0))  # killed between stage and rename
    for s, size in zip(stores, committed, strict=True):
        s.close()
        assert [e["seq"] for _, e in committed_entries(tmp_path, s.name)] == [1, 2]
        again = BotStore(tmp_path, s.name)
        st = again.load()
        assert st is not None and st.last_seq == 2 and st.n == 2 and st.updated_at == 2.0
        assert os.path.getsize(again.journal_path) == size  # seq 3 is redone, once
        again.close()


def test_emergency_stop_halts_the_bot_and_says_so(tmp_path, caplog):
    """The runner of `signalbox bots`: the halt is logged, and committed in the bot's state."""
    from pipeline.bots.config import BotConfig
    from pipeline.bots.trader import Bar, Trader
    from pipeline.runtime.bots import Runner

    cfg = BotConfig(
        name="risky",
        personality="swing",
        params={"sizing": "fraction", "position_cap": 1, "leverage": 10, "stop_loss_pct": None},
        emergency_stop=0.1,
    )
    trader = Trader(cfg, cfg.backtest_params(), ["bybit:BTCUSDT"])
    store = BotStore(tmp_path, "risky")
    store.load()
    r = Runner(cfg, trader, store, trader.new_state())
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    sig = {"seq": 1, "exchange": "bybit", "symbol": "BTCUSDT", "personality": "swing",
           "timeframe": "1m", "action": "BUY", "confidence": 1.0, "quality": "ok",
           "close_time": "2024-01-01T00:00:00Z", "_t": time.perf_counter()}  # fmt: skip
    r.on_signal(sig, time.time())
    minute = 60_000_000
    us = int(t0.timestamp()) * 1_000_000
    with caplog.at_level("INFO", logger="signalbox.bots"):
        r.on_bar(Bar("bybit:BTCUSDT", us, 100.0, 100.5, 99.5, 100.0))  # filled long, 10x
        r.on_bar(Bar("bybit:BTCUSDT", us + minute, 100.0, 100.0, 98.0, 98.5))  # -15 %
    assert any("bot risky HALTED: emergency stop: equity" in m for m in caplog.messages)
    state = summary(tmp_path, "risky")
    assert state["halted"] and state["why"].startswith("emergency stop")
    assert state["positions"] == {}
    kinds = [e["kind"] for e in entries(tmp_path, "risky")]
    assert kinds[-2:] == ["exit", "halt"]
    store.close()


def test_up_supervises_the_bots_only_when_some_are_configured(tmp_path):
    from pipeline.runtime.running import role
    from pipeline.runtime.supervisor import supervised

    with_bots = load_settings(env={"SIGNALBOX_HOME": str(tmp_path)})  # signalbox.yaml's bots
    assert with_bots.bots
    (bots,) = [c for c in supervised(with_bots, {}) if c.name == "bots"]
    assert role(" ".join(bots.args)) == "bots" and bots.log.name == "bots.log"
    cfg = tmp_path / "none.yaml"
    cfg.write_text(yaml.safe_dump({"home": str(tmp_path), "bots": []}))
    assert "bots" not in [c.name for c in supervised(load_settings(cfg, env={}), {})]

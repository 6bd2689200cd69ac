"""Restarts: the sidecar goes away and comes back; nothing is lost, nothing is seen twice."""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from pipeline.config import REPO_ROOT
from pipeline.sidecar.client import Client
from pipeline.sidecar.outbox import publish

pytest_plugins = ["tests.fx_sidecar"]


def test_restart_keeps_latest_history_and_seq(sidecar_cfg, sidecar, connect, signals):
    cfg, s = sidecar_cfg(history=30)
    p = sidecar(cfg)
    assert publish(s, signals(10, offset=20)) == list(range(1, 11))
    sub = connect(s.socket_path)
    sub.send({"op": "subscribe"})
    assert [m["seq"] for m in sub.signals(2)] == [9, 10]
    assert p.stop() == 0
    assert not s.socket_path.exists()
    # the pipeline keeps publishing while the sidecar is down, without noticing
    assert publish(s, signals(10, offset=10)) == list(range(11, 21))
    p.start()
    after = connect(s.socket_path)
    assert after.recv_type("hello")["seq"] == 20
    latest = after.signals(2)  # latest per key survived the restart
    assert [m["seq"] for m in latest] == [19, 20]
    replay = connect(s.socket_path)
    replay.send({"op": "subscribe", "since_seq": 10})  # what a subscriber missed meanwhile
    assert [m["seq"] for m in replay.signals(10)] == list(range(11, 21))
    # a hard crash: the stale socket is replaced, and seqs carry on from the outbox
    p.stop(signal.SIGKILL)
    assert s.socket_path.exists()
    assert publish(s, signals(4, offset=6)) == [21, 22, 23, 24]
    p.start()
    again = connect(s.socket_path)
    again.send({"op": "subscribe", "since_seq": 0})
    assert [m["seq"] for m in again.signals(24)] == list(range(1, 25))
    assert publish(s, signals(2, offset=4)) == [25, 26]
    assert [m["seq"] for m in again.signals(2)] == [25, 26]


def test_client_reconnects_and_resumes_without_gaps_or_duplicates(sidecar_cfg, sidecar, signals):
    cfg, s = sidecar_cfg()
    p = sidecar(cfg)
    got: queue.Queue[dict] = queue.Queue()
    hellos: queue.Queue[dict] = queue.Queue()
    # since_seq=0: everything from the start, however the connect and the publishes interleave
    client = Client(s.socket_path, since_seq=0, backoff_min_s=0.02, backoff_max_s=0.2)

    def run() -> None:
        for msg in client.messages():
            if msg["type"] in ("hello", "signal"):
                (hellos if msg["type"] == "hello" else got).put(msg)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    hellos.get(timeout=10)
    expected: list[int] = []
    slot = 0
    for round_ in range(3):
        for _ in range(5):
            expected += publish(s, signals(4, offset=slot))
            slot += 4
            time.sleep(0.02)
        p.stop(signal.SIGKILL if round_ == 1 else signal.SIGTERM)
        for _ in range(5):  # published while the sidecar is down
            expected += publish(s, signals(4, offset=slot))
            slot += 4
        p.start()
        hellos.get(timeout=10)  # reconnected (after some refused attempts)
    expected += publish(s, signals(4, offset=slot))
    assert expected == list(range(1, 125))
    seen = [got.get(timeout=10)["seq"] for _ in expected]
    assert seen == expected
    with pytest.raises(queue.Empty):  # and nothing twice
        got.get(timeout=0.5)
    assert client.connects == 4
    client.close()
    t.join(5)


def _tail(home, cfg, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SIGNALBOX_HOME": str(home), "SIGNALBOX_CONFIG": str(cfg)}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.runtime.cli", "tail", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_tail_prints_resumes_across_restarts_and_exits_0_on_ctrl_c(
    sidecar_cfg, sidecar, signals, home
):
    cfg, s = sidecar_cfg()
    publish(s, signals(6))
    tail = _tail(home, cfg, "--json", "--personality", "swing", "--since", "2", "--wait")
    assert tail.stdout is not None
    p = sidecar(cfg)  # tail started first: with --wait it retries until the sidecar is up
    lines = [json.loads(tail.stdout.readline()) for _ in range(2)]
    assert [(m["seq"], m["personality"]) for m in lines] == [(4, "swing"), (6, "swing")]
    p.stop()
    publish(s, signals(4, offset=6))
    p.start()
    lines = [json.loads(tail.stdout.readline()) for _ in range(2)]
    assert [m["seq"] for m in lines] == [8, 10]
    tail.send_signal(signal.SIGINT)
    out, err = tail.communicate(timeout=10)
    assert tail.returncode == 0
    assert out == b""
    assert b"reconnecting" in err and b"connected to" in err


def test_tail_human_format(sidecar_cfg, sidecar, signals, home):
    cfg, s = sidecar_cfg()
    sig = signals(1, personalities=("vote",), reasons=["rsi_14 < 30", "close > ema_50"])[0]
    publish(s, [sig])
    sidecar(cfg)
    tail = _tail(home, cfg)
    assert tail.stdout is not None
    line = tail.stdout.readline().decode()
    tail.send_signal(signal.SIGINT)
    tail.communicate(timeout=10)
    assert line.startswith("#1 ")
    for part in (
        "[replayed]",  # it came with the snapshot on connect
        "BTCUSDT",
        " 1m ",
        "vote",
        sig["action"],
        f"price={sig['price']}",
        "quality=ok",
        "origin=pipeline",  # a signal without `origin` came from the pipeline
        "rsi_14 < 30; close > ema_50",
    ):
        assert part in line
    assert tail.returncode == 0


def test_old_signals_are_history_and_replays_are_marked(sidecar_cfg, sidecar, connect, signals):
    cfg, s = sidecar_cfg(signal_ttl_minutes=60)
    then = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    # published three hours ago, as news back then: the latest swing signal, but old now
    assert publish(s, signals(1, personalities=("swing",), now=then), now=then) == [1]
    assert publish(s, signals(1, personalities=("scalping",))) == [2]  # a minute old
    p = sidecar(cfg)  # starts on an outbox holding both
    sub = connect(s.socket_path)  # the snapshot: the latest per key that is still news
    assert sub.recv_type("hello")["seq"] == 2
    [fresh] = sub.signals(1)
    assert (fresh["seq"], fresh["personality"], fresh["replayed"]) == (2, "scalping", True)
    assert publish(s, signals(1, offset=-1, personalities=("scalping",))) == [3]
    [live] = sub.signals(1)  # not seq 1: the old one is never sent as news
    assert (live["seq"], live["replayed"]) == (3, False)
    replay = connect(s.socket_path)
    replay.send({"op": "subscribe", "since_seq": 0})
    assert [(m["seq"], m["replayed"]) for m in replay.signals(3)] == [
        (1, True),
        (2, True),
        (3, True),
    ]
    assert publish(s, signals(1, offset=-2, personalities=("scalping",))) == [4]
    assert [(m["seq"], m["replayed"]) for m in replay.signals(1)] == [(4, False)]
    assert [(m["seq"], m["replayed"]) for m in sub.signals(1)] == [(4, False)]
    p.stop()
    p.start()  # history across a restart is replayed too
    again = connect(s.socket_path)
    again.send({"op": "subscribe", "since_seq": 2})
    assert [(m["seq"], m["replayed"]) for m in again.signals(2)] == [(3, True), (4, True)]

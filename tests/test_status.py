"""`signalbox status` on real homes: an empty one, one with a sidecar and subscribers, one
after a real replay backfill (lag of the last candle, the last signal, failed runs)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config import REPO_ROOT
from tests.daemon import replay_env

CLI = [sys.executable, "-m", "pipeline.runtime.cli"]
NOT_RUNNING = 1


def status(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    e = {**os.environ, "SIGNALBOX_HOME": str(home), **env}
    return subprocess.run(
        [*CLI, "status", *args], env=e, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def test_an_empty_home_is_not_running_with_nothing_stored(home):
    r = status(home)
    assert r.returncode == NOT_RUNNING, r.stderr
    first = r.stdout.splitlines()[0]
    assert first == f"not running (no `signalbox up` for {home}); nothing stored yet"
    assert "start it with `signalbox up`" in r.stdout
    assert sorted(p.name for p in home.iterdir()) == []  # status wrote nothing
    shown = json.loads(status(home, "--json").stdout)
    assert shown["running"] is False and shown["exit_code"] == NOT_RUNNING
    assert shown["candles"] == {"bybit:BTCUSDT": None} and shown["sidecar"] is None


def test_the_sidecar_answers_a_status_request_then_closes(sidecar_cfg, sidecar, connect):
    cfg, s = sidecar_cfg()
    p = sidecar(cfg)
    sub = connect(s.socket_path)
    sub.send({"op": "subscribe"})
    sub.recv_type("hello")
    ask = connect(s.socket_path)
    ask.send({"op": "status"})
    ask.recv_type("hello")
    msg = ask.recv_type("status")
    assert msg["pid"] == p.proc.pid and msg["subscribers"] == 1 and msg["seq"] == 0
    assert ask.recv() is None  # then EOF
    sub.send({"op": "subscribe"})  # the subscriber is unaffected
    assert sub.recv(heartbeats=True)["type"] == "heartbeat"


def test_status_counts_the_sidecars_subscribers(sidecar_cfg, sidecar, connect, home):
    cfg, s = sidecar_cfg()
    p = sidecar(cfg)
    subs = [connect(s.socket_path) for _ in range(2)]
    for sub in subs:
        sub.send({"op": "subscribe", "personalities": ["swing"]})
        sub.recv_type("hello")
    time.sleep(0.3)  # past the subscribe grace: both are subscribers
    r = status(home, "--json", SIGNALBOX_CONFIG=str(cfg))
    shown = json.loads(r.stdout)
    assert r.returncode == NOT_RUNNING  # a sidecar alone is not a running `up`
    assert shown["sidecar"]["pid"] == p.proc.pid and shown["sidecar"]["subscribers"] == 2
    subs[0].close()
    deadline = time.monotonic() + 10
    while True:
        r = status(home, SIGNALBOX_CONFIG=str(cfg))
        if "1 subscriber(s)" in r.stdout or time.monotonic() > deadline:
            break
    assert f"sidecar     pid {p.proc.pid}, 1 subscriber(s)" in r.stdout, r.stdout


def test_status_after_a_backfill_shows_lag_signal_and_failed_runs(tmp_path, home):
    from pipeline.replay import ReplayExchange

    with ReplayExchange(seed=7) as ex:
        env = replay_env(home, ex)
        args = ["backfill", "--start", "2024-01-01", "--end", "2024-01-01"]
        r = subprocess.run(
            [*CLI, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr[-3000:]
        before = dt.datetime.now(dt.UTC)
        r = status(home, "--json", **env)
    shown = json.loads(r.stdout)
    assert r.returncode == NOT_RUNNING, r.stderr
    assert shown["source"]["kind"] == "replay"
    btc = shown["candles"]["bybit:BTCUSDT"]
    assert btc["up_to"] == "2024-01-02T00:00:00+00:00"
    expected = (before - dt.datetime(2024, 1, 2, tzinfo=dt.UTC)).total_seconds()
    assert abs(btc["lag_s"] - expected) < 60  # seconds: the time between the two clocks read
    sig = shown["last_signal"]  # a day of 1m candles gives scalping signals (seed 7)
    assert sig is not None and "2024-01-01T00:00" < sig["close_time"] <= "2024-01-02T00:00"
    assert shown["failed_runs"] == []
    text = status(home, **env).stdout
    assert "bybit:BTCUSDT last 1m candle ends 2024-01-02T00:00" in text
    assert "no failed runs in the last hour" in text

    # a failed run, recorded through Dagster's own API, is counted
    from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        instance.add_run(
            DagsterRun(job_name="daily", run_id="f" * 32, status=DagsterRunStatus.FAILURE)
        )
    shown = json.loads(status(home, "--json", **env).stdout)
    assert [r["run_id"] for r in shown["failed_runs"]] == ["f" * 32]

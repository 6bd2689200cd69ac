"""`signalbox trades` as a process: it journals covered minutes from the replay's trade
stream, stops on SIGTERM with 0, and `up` supervises it like the fast lane."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT, load_settings
from pipeline.exchanges.sources import replay_endpoint
from pipeline.orderflow import journal
from pipeline.runtime.cli import build_parser
from pipeline.runtime.processes import ENDPOINT_ENV
from pipeline.runtime.running import role
from tests.daemon import replay_env


@pytest.mark.timeout(90)
def test_the_command_journals_covered_minutes_and_stops_on_sigterm(home: Path, replay_factory):
    ex = replay_factory(clock_start="2024-01-01T00:00:30Z", clock_speed=60)
    env = {**replay_env(home, ex), "SIGNALBOX_SYMBOLS": "bybit:BTCUSDT,hyperliquid:BTC"}
    ep = replay_endpoint(load_settings(env=env))
    env[ENDPOINT_ENV] = json.dumps(asdict(ep))
    log = home / "trades.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.runtime.cli", "trades"],
            env=env, cwd=REPO_ROOT, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while journal.read(home, "bybit", dt.date(2024, 1, 1)).height < 2:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "hyperliquid has no trade stream here: its markets have no order flow" in text
    assert "following 1 trade stream(s) of bybit" in text and "minute(s) journaled" in text


def test_up_supervises_it(home: Path):
    from pipeline.runtime import supervisor

    children = supervisor.supervised(load_settings(env={"SIGNALBOX_HOME": str(home)}), {})
    (trades,) = [c for c in children if c.name == "trades"]
    assert build_parser().parse_args(trades.args[3:]).func.__name__ == "cmd_trades"
    assert trades.log == home / "logs" / "trades.log"
    assert role(" ".join(trades.args)) == "trades"

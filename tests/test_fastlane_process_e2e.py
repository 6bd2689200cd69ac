"""End to end: the fast lane's process, the real sidecar process and a subscriber on its socket,
with the replay exchange at 60x. The engine is the test double (one BUY per minute)."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT
from pipeline.exchanges.sources import replay_endpoint
from pipeline.runtime.processes import ENDPOINT_ENV
from tests.daemon import replay_env
from tests.fx_sidecar import SidecarProc, Sub
from tests.test_fastlane_process import HOUR, MIN, REPLICA_END, T0, store
from tests.test_fastlane_process_cli import SCRIPT

pytestmark = pytest.mark.slow


def test_fast_lane_signals_reach_a_subscriber_live(
    tmp_path: Path, home: Path, replay_factory, sidecar_cfg
):
    ex = replay_factory(clock_start=T0, clock_speed=60.0)
    cfg, _ = sidecar_cfg()
    env = {**replay_env(home, ex), "SIGNALBOX_CONFIG": str(cfg)}
    from pipeline.config import load_settings

    settings = load_settings(cfg, env=env)
    ep = replay_endpoint(settings)
    store(settings, ep, REPLICA_END - HOUR, REPLICA_END)
    sidecar = SidecarProc(cfg, home, tmp_path / "sidecar.log").start()
    sub = Sub(settings.socket_path)
    sub.send({"op": "subscribe"})
    log = tmp_path / "fast.log"
    with log.open("wb") as out:
        fast = subprocess.Popen(
            [sys.executable, "-c", SCRIPT],
            env={**env, ENDPOINT_ENV: json.dumps(asdict(ep))},
            cwd=REPO_ROOT, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        got: list[dict] = []
        while len(got) < 8 or "(ws)" not in log.read_text():  # the REST catch-up's, then live
            got += sub.signals(1, timeout=30)
        assert fast.poll() is None, log.read_text()
    finally:
        fast.send_signal(signal.SIGTERM)
        code = fast.wait(20)
        sub.close()
        sidecar.stop()
    assert code == 0, log.read_text()
    closes = [dt.datetime.fromisoformat(m["close_time"]) for m in got]
    assert closes == [REPLICA_END + k * MIN for k in range(1, len(got) + 1)]  # each once, in order
    assert {(m["personality"], m["origin"]) for m in got} == {("double", "fast")}
    assert all(m["replayed"] is False for m in got)
    text = log.read_text()
    assert "caught up" in text, text

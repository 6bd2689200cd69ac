"""A real `signalbox up`, then `status` (running and healthy once the first live run is in:
its processes, fresh candles, the sidecar), a second `up` refused, then `stop`: nothing of
it is left."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT
from pipeline.runtime import pids
from tests.daemon import replay_env, write_config
from tests.test_up_e2e import _free_port

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "pipeline.runtime.cli"]


def test_up_then_status_then_stop(tmp_path: Path):
    ui, replay = _free_port(), _free_port()
    cfg = write_config(tmp_path, {"ui": {"port": ui}, "replay": {"port": replay}}, history_days=0)
    env = {**replay_env(tmp_path), "SIGNALBOX_CONFIG": str(cfg)}
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, "up"], env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*CLI, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )

    try:
        deadline = time.monotonic() + 120
        while "live: " not in log.read_text():  # up reports the first live run
            assert proc.poll() is None, f"`signalbox up` exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        r = cli("status", "--json")
        shown = json.loads(r.stdout)
        assert shown["running"] is True and shown["pid"] == proc.pid, r.stdout
        assert set(shown["processes"]) == {
            "webserver", "daemon", "sidecar", "fast", "trades", "replay"
        }  # fmt: skip
        assert shown["sidecar"]["pid"] == shown["processes"]["sidecar"]
        assert shown["source"]["kind"] == "replay"
        assert r.returncode == 0 and shown["problems"] == [], r.stdout  # healthy
        assert shown["candles"]["bybit:BTCUSDT"]["lag_s"] < 180  # within live.freshness_minutes

        assert "bybit: connected" in (tmp_path / "logs" / "fast.log").read_text()
        assert "trade stream(s) of bybit" in (tmp_path / "logs" / "trades.log").read_text()
        again = cli("up")
        assert again.returncode == 2 and f"(pid {proc.pid})" in again.stderr

        kids = pids.descendants(proc.pid)
        r = cli("stop")
        assert r.returncode == 0, r.stderr
        assert f"stopped `signalbox up` (pid {proc.pid})" in r.stderr
        for name in ("webserver", "daemon", "sidecar", "fast", "trades", "replay"):
            assert f"{name} (pid {shown['processes'][name]})" in r.stderr
        assert proc.wait(5) == 0
        assert "stopped." in log.read_text()
        left = [k for k in kids if pids.started_at(k) is not None]
        assert not left, f"left running: {left}"
        assert not (tmp_path / "up.pid").exists()
        r = cli("status")
        assert r.returncode == 1 and r.stdout.startswith("not running")
    finally:
        for pid in [*pids.descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()

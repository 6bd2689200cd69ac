"""`signalbox replay` serves in the foreground, prints its URLs first and stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from pipeline.replay.clock import to_ms

ROOT = Path(__file__).resolve().parent.parent


def start(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.runtime.cli", "replay", *args],
        cwd=ROOT,
        env={**os.environ, "SIGNALBOX_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_replay_command_prints_urls_serves_and_exits_0(home, sig):
    proc = start(
        home, "--port", "0", "--clock-start", "2024-01-01T23:57:00Z", "--clock-speed", "60"
    )
    try:
        assert proc.stdout is not None
        rest = proc.stdout.readline().split()
        ws = proc.stdout.readline().split()
        assert rest[0] == "REST" and rest[1].startswith("http://127.0.0.1:")
        assert not rest[1].endswith(":0")  # the real port, not the one asked for
        assert ws == ["WS", rest[1].replace("http://", "ws://") + "/v5/public/linear"]
        body = requests.get(f"{rest[1]}/v5/market/time", timeout=5).json()
        assert to_ms("2024-01-01T23:57:00Z") <= body["time"] < to_ms("2024-01-02T01:00:00Z")
    finally:
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


def test_bad_data_file_fails_with_a_message(home, tmp_path):
    proc = start(home, "--port", "0", "--data", str(tmp_path / "none.parquet"))
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "does not exist" in err and "none.parquet" in err


def test_bad_clock_start_fails_with_a_message(home):
    proc = start(home, "--port", "0", "--clock-start", "noon")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "ISO 8601" in err


@pytest.mark.timeout(60)
def test_the_ready_record_names_the_url_and_pid_once_serving(home, tmp_path):
    import json
    import time

    ready = tmp_path / "ready.json"
    proc = start(home, "--port", "0", "--ready", str(ready))
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        rec = json.loads(ready.read_text())
        assert rec["pid"] == proc.pid and not rec["rest_url"].endswith(":0")
        assert rec["ws_url"] == rec["rest_url"].replace("http://", "ws://") + "/v5/public/linear"
        assert rec["hyperliquid_ws_url"] == rec["rest_url"].replace("http://", "ws://") + "/ws"
        health = requests.get(f"{rec['rest_url']}/_replay/health", timeout=5).json()
        assert health["ok"] and "BTC" in health["coins"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)

"""`signalbox up` (what `make run` runs): everything comes up, candles land, Ctrl-C leaves
no process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT
from pipeline.runtime import pids
from tests.daemon import replay_env, write_config

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_serves_the_ui_ingests_live_and_stops_cleanly_on_ctrl_c(tmp_path: Path):
    ui, replay, reports = _free_port(), _free_port(), _free_port()
    cfg = write_config(
        tmp_path,
        {"ui": {"port": ui, "reports_port": reports}, "replay": {"port": replay}},
        history_days=0,
    )
    env = {**replay_env(tmp_path), "SIGNALBOX_CONFIG": str(cfg)}
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.runtime.cli", "up"],
            env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:

        def wait(text: str, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while text not in log.read_text():
                assert proc.poll() is None, f"`signalbox up` exited:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"no {text!r} in:\n{log.read_text()}"
                time.sleep(0.5)

        wait("Ctrl-C stops everything", 180)
        text = log.read_text()
        for where in (f"http://127.0.0.1:{ui}", "replay.replica.duckdb", "sidecar.sock", "replay"):
            assert where in text
        with urllib.request.urlopen(f"http://127.0.0.1:{ui}/server_info", timeout=10) as r:
            assert r.status == 200
        assert f"reports   http://127.0.0.1:{reports}/" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{reports}/", timeout=10) as r:
            assert r.status == 200  # the reports directory, served for the UI's links
        wait("live: ", 180)  # the sensor's first run committed candles, and up reports it
        assert (tmp_path / "sidecar.sock").exists()
        kids = pids.descendants(proc.pid)
        assert len(kids) >= 4  # replay, webserver, daemon, sidecar (and their own children)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(60) == 0
        assert "stopped." in log.read_text()
        deadline = time.monotonic() + 10
        while any(_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {k for k in kids if _alive(k)}
        assert not left, f"orphaned processes: {left}"
    finally:
        for pid in [*pids.descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def test_up_restarted_on_a_warm_home_backfills_nothing_again(tmp_path: Path):
    """The first start backfills the history as ONE `backfill` run; a restart sees the stored
    candles, says so, runs no backfill and goes live from the last stored candle."""
    import datetime as dt
    import itertools

    import dagster as dg

    ui, replay = _free_port(), _free_port()
    cfg = write_config(tmp_path, {"ui": {"port": ui}, "replay": {"port": replay}}, history_days=1)
    env = {**replay_env(tmp_path), "SIGNALBOX_CONFIG": str(cfg)}

    def session(name: str, until: str) -> str:
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.runtime.cli", "up"],
                env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 240
            while until not in log.read_text():
                assert proc.poll() is None, f"`signalbox up` exited:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"no {until!r} in:\n{log.read_text()}"
                time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 0
        finally:
            for pid in [*pids.descendants(proc.pid), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
        return log.read_text()

    first = session("first", "Ctrl-C stops everything")
    today = dt.datetime.now(dt.UTC).date()
    yesterday = today - dt.timedelta(days=1)
    assert f"cold home: backfilling {yesterday} → {today}: 2 days never stored" in first
    second = session("second", "live: ")  # the live sensor's run after the restart
    assert "warm home: last candle " in second
    assert "backfilling" not in second and "→ klines_1m" not in second, second
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        runs = instance.get_runs()
        mats = instance.fetch_materializations(dg.AssetKey("klines_1m"), limit=1000)
    backfills = [r for r in runs if r.job_name == "backfill"]
    assert len(backfills) == 1 and {r.job_name for r in runs} <= {"backfill", "live"}
    assert backfills[0].tags["dagster/asset_partition_range_start"] == str(yesterday)
    # every live run ingests minutes after what the backfill stored, none twice
    windows = sorted(
        (c["start"], c["end"])
        for r in runs
        if r.job_name == "live"
        for c in [r.run_config["ops"]["klines_1m"]["config"]]
    )
    assert windows and all(a[1] <= b[0] for a, b in itertools.pairwise(windows))
    (stored,) = {  # the same on each day the range run materialized
        m.asset_materialization.metadata["last_open_time"].value["bybit:BTCUSDT"]
        for m in mats.records
        if m.run_id == backfills[0].run_id
    }
    first_live = dt.datetime.fromisoformat(windows[0][0])
    assert first_live == dt.datetime.fromisoformat(stored) + dt.timedelta(minutes=1)

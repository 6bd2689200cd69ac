"""The fast lane as a process: its command, SIGTERM, a failing venue, and `up`'s view of it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT
from pipeline.exchanges.sources import replay_endpoint
from pipeline.runtime.cli import build_parser
from pipeline.runtime.fastlane import main
from pipeline.runtime.fastvenue import Timing
from pipeline.runtime.processes import ENDPOINT_ENV
from pipeline.runtime.running import role
from tests.daemon import replay_env
from tests.test_fastlane_process import T0, settings_for

# The real process with the test double for an engine (one BUY per minute: the process alone).
SCRIPT = """
import sys
from pipeline.config import load_settings
from pipeline.runtime.fastlane import main
from pipeline.runtime.fastvenue import Timing
from tests.fastlane_double import DoubleLane
sys.exit(main(load_settings(), DoubleLane, Timing(tick_s=0.5, rebootstrap_s=1.0)))
"""


def test_sigterm_closes_the_streams_and_exits_0(home: Path, replay_factory):
    ex = replay_factory(clock_start=T0, clock_speed=1.0)
    ep = replay_endpoint(settings_for(home, ex))
    env = {**replay_env(home, ex), ENDPOINT_ENV: json.dumps(asdict(ep))}
    log = home / "fast.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT], env=env, cwd=REPO_ROOT, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while "bybit: connected" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert "cannot read the replica yet" in log.read_text()  # no warehouse: silent
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "stopped (0 signal(s) published)" in text and "left:" not in text, text


class Broken:
    """A lane whose warehouse read fails in a way the process cannot handle (a bug)."""

    def __init__(self, settings, exchange, symbols) -> None:
        pass

    def bootstrap(self, wh, symbols=None):
        raise RuntimeError("engine bug")


def test_a_failing_venue_ends_the_process_with_1_so_up_restarts_it(
    home: Path, replay_factory, monkeypatch
):
    ex = replay_factory(clock_start=T0, clock_speed=1.0)
    settings = settings_for(home, ex)
    monkeypatch.setenv(ENDPOINT_ENV, json.dumps(asdict(replay_endpoint(settings))))
    assert main(settings, Broken, Timing(tick_s=0.2)) == 1


def test_up_supervises_it_and_status_and_stop_know_it(home: Path):
    from pipeline.config import load_settings
    from pipeline.runtime import status, supervisor

    children = supervisor.supervised(load_settings(env={"SIGNALBOX_HOME": str(home)}), {})
    (fast,) = [c for c in children if c.name == "fast"]
    assert build_parser().parse_args(fast.args[3:]).func.__name__ == "cmd_fast"
    assert fast.log == home / "logs" / "fast.log"
    known = {c.name for c in children if role(" ".join(c.args)) == c.name}
    assert known >= {"webserver", "daemon", "sidecar", "fast"}
    assert "fast" in status.EXPECTED  # missing under `up`: a problem `status` reports


def test_the_command_refuses_another_source_than_the_homes(home: Path, replay_factory):
    """`signalbox fast` handed an exchange that is not the home's source says so, no run."""
    ex = replay_factory(clock_start=T0, clock_speed=1.0)
    (home / "source.json").write_text(
        json.dumps({"kind": "live", "warehouse_id": "bybit", "label": "bybit api.bybit.com"})
    )
    ep = replay_endpoint(settings_for(home, ex))
    env = {**replay_env(home, ex), ENDPOINT_ENV: json.dumps(asdict(ep))}
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.runtime.cli", "fast"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "holds data from bybit api.bybit.com" in r.stderr
    assert "Traceback" not in r.stderr


def test_status_shows_the_fast_lanes_last_published_batch(home: Path):
    from pipeline.config import load_settings
    from pipeline.runtime import latency, status

    settings = load_settings(env={"SIGNALBOX_HOME": str(home)})
    assert "fast lane   nothing published yet" in status.render(status.collect(settings), settings)
    close = T0.replace(second=0).timestamp()
    for published, at in ((1, 0.040), (0, 0.020)):  # the last batch was all pipeline copies
        latency.record(
            home, stage="fast", exchange="bybit", via="ws", close=close, confirm_at=close + 0.01,
            publish_started_at=close + 0.015, published_at=close + at, signals=1,
            published=published,
        )  # fmt: skip
    st = status.collect(settings)
    assert st.fast is not None and st.fast["after_close_s"] == pytest.approx(0.040, abs=1e-6)
    text = status.render(st, settings)
    assert (
        "fast lane   last published 1 signal(s) of bybit for the close at 2024-03-01T12:00" in text
    )

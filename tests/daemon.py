"""Run a real `dagster-daemon` (sensors, queued runs) against a temporary state directory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.config import REPO_ROOT, load_settings
from pipeline.orchestration.instance import dagster_env
from pipeline.runtime.partitions import ensure_recorded, exchange_today
from pipeline.runtime.processes import spawn, stop
from warehouse import connect

BIN = Path(sys.executable).parent


def write_config(home: Path, top: dict | None = None, **live: object) -> Path:
    """The repo's config with some `live:` settings (and top-level keys) replaced, in `home`."""
    import yaml

    data = yaml.safe_load((REPO_ROOT / "signalbox.yaml").read_text())
    data.pop("bots", None)  # the example paper bots run only where a test asks (`top`)
    data["home"] = str(home)
    data["live"] = {**data["live"], **live}
    data.update(top or {})
    path = home / "signalbox.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def replay_env(home: Path, replay=None) -> dict[str, str]:
    """Environment for a signalbox process: this home, the replay exchange `replay` (a
    running ReplayExchange; None: the one the CLI starts itself)."""
    env = dict(os.environ, SIGNALBOX_HOME=str(home), SIGNALBOX_SOURCE="replay")
    if replay is not None:
        env.update(SIGNALBOX_BYBIT_URL=replay.rest_url, SIGNALBOX_BYBIT_WS=replay.ws_url)
    return env


class Daemon:
    """`dagster-daemon run` for one SIGNALBOX_HOME and one replay exchange."""

    def __init__(self, home: Path, replay, config: Path) -> None:
        env = {**replay_env(home, replay), "SIGNALBOX_CONFIG": str(config)}
        settings = load_settings(config, env=env)
        # What `signalbox up` does before starting Dagster: fix the home's first partition.
        ensure_recorded(settings, exchange_today(replay.rest_url), settings.live.history_days)
        self.env = dagster_env(settings, env)
        self.home = home
        self.log = home / "daemon.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        out = self.log.open("a")
        args = [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"]
        self.proc = spawn(args, env=self.env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        """SIGKILL the daemon and everything it started, as a crash would."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text().splitlines()[-n:]) if self.log.exists() else ""


def replica_rows(home: Path, sql: str) -> list[tuple]:
    path = home / "warehouse" / "replay.replica.duckdb"
    if not path.exists():
        return []
    with connect(path, read_only=True, wait_s=10) as con:
        return con.execute(sql).fetchall()


def wait_for(cond: Callable[[], bool], timeout: float, what: str, daemon: Daemon | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(1.0)
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what}\n" + (daemon.tail() if daemon else "")
    )

"""Child processes that never outlive us: the replay exchange, Dagster, the sidecar.

Every child gets its own process group (so Ctrl-C in the terminal reaches only us, and we stop
children in order) and, on Linux, a parent-death signal, so even a SIGKILLed supervisor leaves
no orphans behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pipeline.config import Settings
from pipeline.sources import Endpoint, reachable, replay_endpoint

_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    os.setpgrp()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def spawn(args: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    """Start a child in its own process group that dies with us."""
    return subprocess.Popen(args, env=env, preexec_fn=_child_setup, **kw)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM the child's group, then SIGKILL after `timeout`; returns its exit code."""
    if proc.poll() is not None:
        return proc.returncode
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


@dataclass
class ReplayProcess:
    proc: subprocess.Popen
    endpoint: Endpoint


def start_replay(
    settings: Settings, port: int | None = None, timeout: float = 30.0
) -> ReplayProcess:
    """Start `signalbox replay`, logging to `<home>/logs/replay.log`; wait until it answers."""
    port = settings.replay.port if port is None else port
    log = settings.home / "logs" / "replay.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    args = [sys.executable, "-m", "pipeline.cli", "replay", "--port", str(port)]
    with log.open("ab") as out:
        proc = spawn(args, stdout=out, stderr=out)
    deadline = time.monotonic() + timeout
    rest = ws = None
    while time.monotonic() < deadline and not (rest and ws):
        text = log.read_bytes()[offset:].decode(errors="replace")
        rest = rest or _first(r"(https?://\S+)", text)
        ws = ws or _first(r"(wss?://\S+)", text)
        if proc.poll() is not None:
            raise RuntimeError(
                f"replay exchange exited with code {proc.returncode}:\n{text[-2000:]}"
            )
        time.sleep(0.05)
    if not rest or not reachable(rest, 5.0):
        stop(proc)
        raise RuntimeError(f"replay exchange did not come up within {timeout:.0f} s (see {log})")
    base = replay_endpoint(settings)
    return ReplayProcess(proc, Endpoint("replay", rest, ws or "", base.warehouse_id, base.label))


def _first(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text)
    return m.group(1).rstrip("/") if m else None


@contextmanager
def exchange(settings: Settings, endpoint: Endpoint) -> Iterator[Endpoint]:
    """The endpoint, reachable: a replay exchange is started for the duration if none answers."""
    if endpoint.kind != "replay" or reachable(endpoint.rest_url, 2.0):
        yield endpoint
        return
    replay = start_replay(settings, port=0)
    try:
        yield replay.endpoint
    finally:
        stop(replay.proc)


def source_env(endpoint: Endpoint) -> dict[str, str]:
    """Environment that pins child processes to this exchange and its warehouse."""
    return {
        "SIGNALBOX_SOURCE": endpoint.kind,
        "SIGNALBOX_BYBIT_URL": endpoint.rest_url,
        "SIGNALBOX_BYBIT_WS": endpoint.ws_url,
    }

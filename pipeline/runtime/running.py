"""Which processes run a home (its `signalbox up` and that one's children), and `signalbox stop`.

`up` records its pid in `<home>/up.pid` (pipeline.runtime.pids.claim); its children are found by
walking /proc from there and named by their command lines.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from pipeline.config import Settings
from pipeline.runtime import pids

STOP_TIMEOUT_S = 60.0  # up stops each child with SIGTERM, then SIGKILL after 10 s
NOT_STOPPED = 1  # `signalbox stop`: something was still running after the SIGKILL


def up_pid(settings: Settings) -> int | None:
    """The pid of this home's running `signalbox up`, or None."""
    return pids.holder(settings.up_pid_file)


def role(cmdline: str) -> str | None:
    """What a child of `up` is, from its command line: webserver, daemon, sidecar, fast (the
    fast lane), trades (the trade collector), bots (the paper bots), replay."""
    args = cmdline.split()
    names = {Path(a).name for a in args[:2]}
    if "dagster-webserver" in names:
        return "webserver"
    if "dagster-daemon" in names:
        return "daemon"
    if "pipeline.runtime.cli" in args[:3]:
        for name in ("sidecar", "fast", "trades", "bots", "replay"):
            if name in args:
                return name
    return None


def processes(pid: int) -> dict[str, int]:
    """The named children of `up` (role -> pid); helpers they start are left out."""
    found: dict[str, int] = {}
    for child, cmd in sorted(pids.descendants(pid).items()):
        name = role(cmd)
        if name and name not in found:
            found[name] = child
    return found


def stop_main(settings: Settings, timeout: float = STOP_TIMEOUT_S) -> int:
    """`signalbox stop`: SIGTERM the home's `up` (it stops its children in order), wait until
    it and every process below it are gone, SIGKILL what is left after `timeout`."""
    pid = up_pid(settings)
    if pid is None:
        _say(f"nothing running for {settings.home} (no `signalbox up`)")
        return 0
    seen = time.time()
    below = pids.descendants(pid)
    named = processes(pid)
    _say(f"stopping `signalbox up` (pid {pid}) and its {len(below)} process(es)…")
    try:
        os.kill(pid, signal.SIGTERM)
    except PermissionError:
        _say(f"`signalbox up` (pid {pid}) belongs to another user; stop it as that user")
        return NOT_STOPPED
    except ProcessLookupError:
        pass  # it ended meanwhile; its children are still waited for
    left = _wait_gone([pid, *below], seen, timeout)
    killed = bool(left)
    if left:
        _say(f"still running after {timeout:.0f} s: pid(s) {', '.join(map(str, left))}; killing")
        for p in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        left = _wait_gone(left, seen, 10.0)
    if left:
        _say(f"could not stop pid(s) {', '.join(map(str, left))}; stop them by hand")
        return NOT_STOPPED
    what = ", ".join(f"{name} (pid {p})" for name, p in named.items()) or "no children"
    how = "killed" if killed else "stopped"
    _say(f"{how} `signalbox up` (pid {pid}): {what}; nothing of it is left running")
    return 0


def _wait_gone(todo: list[int], seen: float, timeout: float) -> list[int]:
    """Wait until none of `todo` (as seen running at `seen`) runs; those still running."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in todo if pids.alive(p, seen)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def _say(msg: str) -> None:
    print(f"signalbox stop: {msg}", file=sys.stderr, flush=True)

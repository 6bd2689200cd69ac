"""Is a process seen earlier still running? (A pid alone cannot say: pids are reused.)

A run records its pid and the time it was seen running. The process with that pid now is the
same one only if it started no later than that moment; one that started afterwards got a
recycled pid. Start times come from /proc (Linux); elsewhere only the pid is checked.
Pid files (`claim`, `holder`) use the same test, so one left by a killed process is stale.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from functools import lru_cache
from pathlib import Path

from pipeline import jsonfile

# /proc gives the start in clock ticks since boot and the boot time in whole seconds.
SLACK_S = 2.0


@lru_cache(maxsize=1)
def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def started_at(pid: int) -> float | None:
    """When process `pid` started (Unix time), or None if there is no such running process
    (a zombie is not running). Where /proc cannot tell, 0.0 for any existing pid."""
    if pid <= 0:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc, or a process /proc hides from us (hidepid)
        return _exists(pid)
    # The fields after the command name, which is in parentheses and may hold anything.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _exists(pid: int) -> float | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return 0.0


def alive(pid: int, seen_at: float) -> bool:
    """Is `pid` still the process that was running at `seen_at` (Unix time)?"""
    started = started_at(pid)
    return started is not None and started <= seen_at + SLACK_S


# -- pid files: which process runs a home's `signalbox up` -----------------------------------
def holder(path: Path) -> int | None:
    """The pid recorded in the pid file `path` if that process still runs, else None (no
    file, an unreadable one, or one left by a process that died without removing it)."""
    try:
        rec = json.loads(path.read_text())
        pid, seen = int(rec["pid"]), float(rec["started_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if alive(pid, seen) else None


def claim(path: Path) -> int | None:
    """Record this process in the pid file `path` (written atomically) unless a live process
    holds it: returns that process's pid, or None once claimed. The file is removed when this
    process exits (a killed one leaves it behind, and `holder` then sees it is stale)."""
    me = os.getpid()
    for _ in range(3):
        if jsonfile.create(path, {"pid": me, "started_at": time.time()}):
            atexit.register(release, path)
            return None
        other = holder(path)
        if other is not None and other != me:
            return other
        path.unlink(missing_ok=True)  # stale: its process is gone
    raise OSError(f"could not claim {path}")


def release(path: Path) -> None:
    """Remove the pid file `path` if it is this process's."""
    try:
        if int(json.loads(path.read_text())["pid"]) == os.getpid():
            path.unlink()
    except (OSError, ValueError, KeyError, TypeError):
        pass


def descendants(pid: int) -> dict[int, str]:
    """Every live process below `pid` (by /proc's parent links) -> its command line."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] not in ("Z", "X"):
                parent[int(d.name)] = int(fields[1])
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        for child in [c for c, pp in parent.items() if pp == p]:
            found[child] = command_line(child)
            todo.append(child)
    return found


def command_line(pid: int) -> str:
    """The process's arguments joined by spaces ('' when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)

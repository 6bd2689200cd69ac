"""Is a process seen earlier still running? (A pid alone cannot say: pids are reused.)

A run records its pid and the time it was seen running. The process with that pid now is the
same one only if it started no later than that moment; one that started afterwards got a
recycled pid. Start times come from /proc (Linux); elsewhere only the pid is checked.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

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

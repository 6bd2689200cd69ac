"""Short-lived DuckDB connections that wait politely for another process's lock.

DuckDB lets one process at a time hold a file (readers included), so every caller opens,
works and closes. A conflicting lock is retried with exponential backoff and jitter for a
bounded time; after that the error says which process holds the file and how to proceed.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

LOCK_WAIT_S = float(os.environ.get("SIGNALBOX_LOCK_WAIT_S", "120"))
_PID_RE = re.compile(r"\(PID (\d+)\)")


class WarehouseBusy(RuntimeError):
    """Another process held the DuckDB file for longer than we were willing to wait."""


def lock_holder(message: str) -> str:
    """Describe the process named in DuckDB's lock error, e.g. 'PID 42 (duckdb /x.duckdb)'."""
    m = _PID_RE.search(message)
    if not m:
        return "another process"
    pid = m.group(1)
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        cmd = ""
    return f"PID {pid}" + (f" ({cmd[:160]})" if cmd else "")


def is_lock_error(err: BaseException) -> bool:
    text = str(err)
    return "Could not set lock" in text or "Conflicting lock" in text


@contextmanager
def connect(
    path: Path, read_only: bool = False, wait_s: float | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open `path`, retrying lock conflicts for up to `wait_s` seconds; always closes."""
    import duckdb

    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    delay = 0.02
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as err:
            if not is_lock_error(err):
                raise
            if time.monotonic() >= deadline:
                raise WarehouseBusy(
                    f"warehouse file {path} is locked by {lock_holder(str(err))} and stayed "
                    f"locked for {wait_s:.0f} s. DuckDB admits one process per file: close that "
                    "program (or query the read replica instead, e.g. `signalbox sql`)."
                ) from None
            time.sleep(min(delay, max(deadline - time.monotonic(), 0)) * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 1.0)
    try:
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()

"""Short-lived DuckDB connections that wait politely for another process's lock.

DuckDB lets one process at a time hold a file (readers included), so every caller opens,
works and closes. A conflicting lock is retried (tenacity) with exponential backoff and
jitter for a bounded time; after that the error says which process holds the file and how
to proceed.

A `sealed` connection is what people's SQL runs on: read-only, and unable to reach any
other file (no ATTACH, COPY TO, EXPORT, read_csv of arbitrary paths, INSTALL/LOAD), with
its configuration locked so no statement can lift that again.
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


# Set when a sealed connection opens, before any statement runs; then the configuration is
# locked (lock_configuration) so SET/RESET/PRAGMA cannot undo them.
SEALED_CONFIG: dict[str, bool | str] = {
    "enable_external_access": False,  # no file but the one opened, no network
    "allow_community_extensions": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_persistent_secrets": False,  # CREATE PERSISTENT SECRET would write ~/.duckdb
    "temp_directory": "",  # no spill files, so not even a temp directory is writable
    "python_enable_replacements": False,  # SQL sees the warehouse, not Python variables
}


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
    path: Path, read_only: bool = False, wait_s: float | None = None, sealed: bool = False
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open `path`, retrying lock conflicts for up to `wait_s` seconds; always closes.

    `sealed` (read-only only): the connection can read `path` and nothing else, for good.
    """
    if sealed and not read_only:
        raise ValueError("a sealed connection is read-only: pass read_only=True")
    config = dict(SEALED_CONFIG) if sealed else {}
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    con = _open_waiting(path, read_only, config, wait_s)
    try:
        con.execute("SET TimeZone = 'UTC'")  # needs ICU loaded, so not part of `config`
        if sealed:
            con.execute("SET lock_configuration = true")
        yield con
    finally:
        con.close()


def _open_waiting(
    path: Path, read_only: bool, config: dict[str, bool | str], wait_s: float
) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, retrying lock conflicts (only those) with exponential backoff from
    20 ms to 1 s, each wait jittered by x0.5-1.5 and cut to the time left, for `wait_s`."""
    import duckdb
    import tenacity

    deadline = time.monotonic() + wait_s
    backoff = tenacity.wait_exponential(multiplier=0.02, max=1.0)

    def wait(state: tenacity.RetryCallState) -> float:
        left = max(deadline - time.monotonic(), 0)
        return min(backoff(state), left) * random.uniform(0.5, 1.5)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(
            lambda e: isinstance(e, duckdb.IOException) and is_lock_error(e)
        ),
        stop=lambda _: time.monotonic() >= deadline,
        wait=wait,
    )
    try:
        return retrying(duckdb.connect, str(path), read_only=read_only, config=config)
    except tenacity.RetryError as err:
        raise WarehouseBusy(
            f"warehouse file {path} is locked by {lock_holder(str(err.last_attempt.exception()))}"
            f" and stayed locked for {wait_s:.0f} s. DuckDB admits one process per file: close"
            " that program (or query the read replica instead, e.g. `signalbox sql`)."
        ) from None

"""Small JSON records in the home (source.json, partitions.json, up.pid), written atomically:
a reader sees the whole old record or the whole new one, never half a file; and JSON-lines
journals, appended to a whole batch at a time."""

from __future__ import annotations

import json
import os
from pathlib import Path


class Unreadable(ValueError):
    """A record that cannot be read, is not JSON, or lacks a key; the message says which."""


def read(path: Path, keys: set[str]) -> dict | None:
    """The record at `path` (a JSON object with at least `keys`), or None when there is none."""
    try:
        rec = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise Unreadable(f"{path} is unreadable ({str(err)[:80]})") from None
    if not isinstance(rec, dict) or not keys <= rec.keys():
        raise Unreadable(f"{path} is unreadable (not a JSON object with {', '.join(sorted(keys))})")
    return rec


def _staged(path: Path, rec: dict, durable: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        f.write(json.dumps(rec, indent=None if durable else 1))
        if durable:
            f.flush()
            os.fsync(f.fileno())
    return tmp


def create(path: Path, rec: dict) -> bool:
    """Write `rec` to `path` unless it exists (then nothing changes): False if it existed.
    Linking is atomic and refuses an existing name, so two commands never overwrite each other."""
    tmp = _staged(path, rec)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def replace(path: Path, rec: dict, durable: bool = False) -> None:
    """Write `rec` to `path`, replacing what was there; `durable`: fsynced before the rename
    (a paper bot's state), so not even a machine crash leaves a torn record."""
    os.replace(_staged(path, rec, durable), path)


def fsync_dir(path: Path) -> None:
    """Put a directory's creates and renames on disk (a replaced file's new name survives a
    machine crash only once its folder is fsynced)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_lines(batches: dict[Path, list[bytes]]) -> None:
    """Append each file's lines in one O_APPEND write (a reader never sees half a batch from
    a writer that was not killed mid-write), creating the file and its folder (private)."""
    for p, lines in batches.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"".join(lines))
        finally:
            os.close(fd)

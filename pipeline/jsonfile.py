"""Small JSON records in the home (source.json, partitions.json, up.pid), written atomically:
a reader sees the whole old record or the whole new one, never half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path


def _staged(path: Path, rec: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec, indent=1))
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


def replace(path: Path, rec: dict) -> None:
    """Write `rec` to `path`, replacing what was there."""
    os.replace(_staged(path, rec), path)

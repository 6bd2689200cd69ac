"""Where a live minute's time goes: one JSON line per live run in `<home>/logs/latency.jsonl`.

Each line follows one candle from its close on the exchange clock through the sensor's
request, the run's start, the warehouse commit and (once signals exist) the hand-off to the
sidecar. The fast lane writes one `"stage": "fast"` line per published batch: exchange, `via`
("ws": a confirmed candle from the stream; "rest": minutes filled over REST), `close` (the
candle's close, Unix s on the exchange clock), `confirm_at` (when the stream delivered it,
null for "rest"), `publish_started_at`, `published_at`, `signals` computed and `published`
(new to the outbox). `make bench` reads it; people can too (`tail -f`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MAX_BYTES = 5_000_000


def log_path(home: Path) -> Path:
    return home / "logs" / "latency.jsonl"


def record(home: Path, **fields: Any) -> None:
    """Append one line (O_APPEND, one write: safe with concurrent writers); rotate when big."""
    path = log_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(fields, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        if os.fstat(fd).st_size > MAX_BYTES:
            os.replace(path, path.with_suffix(".jsonl.1"))
    finally:
        os.close(fd)


def read(home: Path, stage: str | None = None) -> list[dict[str, Any]]:
    """Every record, or only one stage's ("ingest" from the klines asset, "signals", "fast")."""
    path = log_path(home)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn last line from a killed writer
        if stage is None or rec.get("stage", "ingest") == stage:
            out.append(rec)
    return out

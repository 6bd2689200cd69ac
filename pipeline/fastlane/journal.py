"""What the fast lane computed, kept per venue and daily partition so the `signals` asset's
parity check can compare it with the pipeline's rows.

`<home>/fastlane/<exchange>/<YYYY-MM-DD>.jsonl`, the day being the partition that owns the
bar (`owner_day(close_time)`); one JSON object per line with the signal row's fields:
exchange, symbol, personality, timeframe, open_time, close_time (ISO 8601 UTC), action,
confidence, price, reasons (list of strings), quality. Append-only: a restarted fast lane may
write a key again; `read` keeps the last line per key, and `conflicts` names keys written
twice with different content (a fast lane that changed its mind is itself a divergence).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline import jsonfile
from pipeline.candles.timeframes import owner_day

FIELDS = (
    "exchange", "symbol", "personality", "timeframe", "open_time", "close_time",
    "action", "confidence", "price", "reasons", "quality",
)  # fmt: skip
KEY = ("exchange", "symbol", "personality", "timeframe", "close_time")


def _iso(v: Any) -> Any:
    return v.astimezone(dt.UTC).isoformat() if isinstance(v, dt.datetime) else v


def path(home: Path, exchange: str, day: dt.date) -> Path:
    return home / "fastlane" / exchange / f"{day.isoformat()}.jsonl"


def record(row: dict[str, Any]) -> dict[str, Any]:
    """The journal's form of one signal row (times as ISO strings, reasons as a list)."""
    out = {k: _iso(row[k]) for k in FIELDS}
    out["confidence"], out["price"] = float(out["confidence"]), float(out["price"])
    out["reasons"] = [str(r) for r in out["reasons"]]
    return out


def append(home: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append signal rows, each to its venue's and day's file, in one write per file."""
    by_file: dict[Path, list[bytes]] = {}
    for row in rows:
        rec = record(row)
        close = dt.datetime.fromisoformat(rec["close_time"])
        by_file.setdefault(path(home, rec["exchange"], owner_day(close)), []).append(
            (json.dumps(rec, separators=(",", ":")) + "\n").encode()
        )
    jsonfile.append_lines(by_file)


def _lines(home: Path, exchange: str, day: dt.date) -> list[dict[str, Any]]:
    try:
        text = path(home, exchange, day).read_text()
    except FileNotFoundError:
        return []
    # a torn last line (a fast lane killed mid-write) has no newline: not a record
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


def read(home: Path, exchange: str, day: dt.date) -> list[dict[str, Any]]:
    """The day's fast-lane signals of one venue, the last line per key, in close-time order."""
    last = {tuple(r[k] for k in KEY): r for r in _lines(home, exchange, day)}
    return sorted(last.values(), key=lambda r: (r["close_time"], *(r[k] for k in KEY)))


def conflicts(home: Path, exchange: str, day: dt.date) -> list[tuple[dict, dict]]:
    """Pairs of lines for the same key with different content."""
    seen: dict[tuple, dict] = {}
    out = []
    for r in _lines(home, exchange, day):
        k = tuple(r[f] for f in KEY)
        if k in seen and seen[k] != r:
            out.append((seen[k], r))
        seen[k] = r
    return out

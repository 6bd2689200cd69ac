"""Progress of a long step as structured records, which `signalbox backfill` and `up` draw as bars.

An asset reports through `Reporter`: each report is a JSON line `{"step", "done", "total",
"unit", "note"}` (plus what the step adds, e.g. ingest's `markets`: minutes fetched per
market) appended to the run's progress file (`append`, the one writer), which the
command that started the run follows (`Follower`) while it runs; the same report is also a
log line for the Dagster UI (`line`). Reports are throttled to one a second (plus the last
one), so a step that takes a moment says it once; live runs report nothing (they are
milliseconds, every minute, and each log line is an event in Dagster's storage).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path


def line(done: int, total: int, unit: str, note: str = "") -> str:
    pct = 100 * done / max(total, 1)
    return f"progress {done}/{total} {unit} ({pct:.0f}%)" + (f" {note}" if note else "")


def append(path: Path, record: dict) -> None:
    """Add one record to a progress file (one JSON object a line; appends are atomic)."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, separators=(",", ":")) + "\n")


class Follower:
    """The records appended to a progress file since the last call (`follow()`)."""

    def __init__(self, path: Path) -> None:
        self.path, self._offset, self._partial = path, 0, b""

    def __call__(self) -> list[dict]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        return [json.loads(x) for x in complete if x.strip()]


class Reporter:
    """`reporter(done, note)` (or `reporter(done, note, total)` when the total changes)
    reports progress through `say` (a log line) and `record` (a structured record) when a
    second has passed since the last report, and always for the last unit; nothing at all
    when not `enabled`."""

    def __init__(
        self,
        say: Callable[[str], object],
        unit: str,
        total: int,
        *,
        enabled: bool = True,
        every_s: float = 1.0,
        step: str = "",
        record: Callable[[dict], object] | None = None,
    ) -> None:
        self.say, self.unit, self.total, self.enabled = say, unit, total, enabled
        self.every_s, self.step, self.record = every_s, step, record
        self._last = time.monotonic()

    def __call__(
        self, done: int, note: str = "", total: int | None = None, **detail: object
    ) -> None:
        if not self.enabled:
            return
        self.total = self.total if total is None else total
        now = time.monotonic()
        if done >= self.total or now - self._last >= self.every_s:
            self._last = now
            if self.record is not None:  # before the log line: a reader of the log finds it
                rec = {"step": self.step, "done": done, "total": self.total, "unit": self.unit}
                self.record({**rec, "note": note, **detail})
            self.say(line(done, self.total, self.unit, note))

"""Progress of a long step as log lines, which `signalbox backfill` and `up` show as a bar.

An asset logs `progress 3/17 timeframes (18%) 1h` through `Reporter`; pipeline/backfill.render
parses the same format (`LINE`). Lines are throttled to one a second (plus the last one), so a
step that takes a moment logs a single line; live runs log none (they are milliseconds, every
minute, and each log line is an event in Dagster's storage).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

LINE = re.compile(r"progress (\d+)/(\d+) (\S+) \((\d+)%\)(?: (.*))?$")


def line(done: int, total: int, unit: str, note: str = "") -> str:
    pct = 100 * done / max(total, 1)
    return f"progress {done}/{total} {unit} ({pct:.0f}%)" + (f" {note}" if note else "")


class Reporter:
    """`reporter(done, note)` (or `reporter(done, note, total)` when the total changes) logs a
    progress line through `say` when a second has passed since the last one, and always for
    the last unit; nothing at all when not `enabled`."""

    def __init__(
        self,
        say: Callable[[str], object],
        unit: str,
        total: int,
        *,
        enabled: bool = True,
        every_s: float = 1.0,
    ) -> None:
        self.say, self.unit, self.total, self.enabled = say, unit, total, enabled
        self.every_s = every_s
        self._last = time.monotonic()

    def __call__(self, done: int, note: str = "", total: int | None = None) -> None:
        if not self.enabled:
            return
        self.total = self.total if total is None else total
        now = time.monotonic()
        if done >= self.total or now - self._last >= self.every_s:
            self._last = now
            self.say(line(done, self.total, self.unit, note))

"""Timeframe names and the bucket grid they live on.

Fixed-length buckets are anchored at the Unix epoch (so 37m and 148m line up the same way on
every machine and in every partition), weeks start Monday 00:00 UTC, months are calendar months.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MINUTE_MS = 60_000
DAY_MS = 1440 * MINUTE_MS
# 1970-01-01 was a Thursday; the first Monday is 1970-01-05.
WEEK_ANCHOR_MS = 4 * DAY_MS

_UNITS = {"m": 1, "h": 60, "d": 1440, "w": 10080}
_TF_RE = re.compile(r"^([1-9][0-9]*)(m|h|d|w|M)$")


@dataclass(frozen=True)
class Timeframe:
    """A parsed timeframe such as 37m, 4h, 1w or 1M."""

    name: str
    kind: Literal["fixed", "month"]
    minutes: int  # bucket length for fixed kinds; nominal (30 days x n) for months
    months: int = 0
    anchor_ms: int = 0

    @property
    def ms(self) -> int:
        return self.minutes * MINUTE_MS


def parse_timeframe(name: str) -> Timeframe:
    """Parse `<n><unit>` with unit m, h, d, w or M (calendar month)."""
    m = _TF_RE.match(str(name))
    if not m:
        raise ValueError(
            f"timeframe {name!r} is not valid: use a whole number and a unit, "
            "m (minutes), h (hours), d (days), w (weeks) or M (months), e.g. 37m, 4h, 1d, 1w, 1M"
        )
    n, unit = int(m.group(1)), m.group(2)
    if unit == "M":
        return Timeframe(name, "month", 30 * 1440 * n, months=n)
    minutes = n * _UNITS[unit]
    anchor = WEEK_ANCHOR_MS if unit == "w" else 0
    return Timeframe(name, "fixed", minutes, anchor_ms=anchor)

"""Planning the live path: which minutes to ingest next, in which runs.

Plain Python so the rules can be tested exactly; the `live_candles` sensor feeds it what it
learned from the exchange and from Dagster, and turns the plan into run requests.

The warehouse is the truth: when no live run is in flight, the next range starts right after
the last candle actually written (as recorded on the asset's materializations), so a failed
or lost run is simply planned again. While runs are in flight, planning continues from the
cursor (the last candle handed off) so nothing is requested twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

MINUTE = dt.timedelta(minutes=1)
DAY = dt.timedelta(days=1)
LIVE_LAG = 3 * MINUTE  # behind by at most this much is live; more is catching up


@dataclass(frozen=True)
class Chunk:
    """Ingest [start, end) into the partition of `start`'s day."""

    start: dt.datetime
    end: dt.datetime

    @property
    def partition(self) -> str:
        return self.start.date().isoformat()

    @property
    def minutes(self) -> int:
        return int((self.end - self.start) / MINUTE)

    @property
    def label(self) -> str:
        """The candles by open time, for people: `03:41`, `03:41–03:52` (the day is the
        partition's)."""
        last = self.end - MINUTE
        return f"{self.start:%H:%M}" if last == self.start else f"{self.start:%H:%M}–{last:%H:%M}"

    def run_key(self, attempt: int = 0) -> str:
        return f"live:{self.start:%Y%m%dT%H%M}:{self.end:%Y%m%dT%H%M}:{attempt}"


def plan(
    newest_closed: dt.datetime,
    resume_from: dt.datetime,
    chunk_minutes: int = 1440,
    max_chunks: int = 4,
) -> list[Chunk]:
    """Chunks covering [resume_from, newest_closed + 1m), split at day boundaries.

    `newest_closed` is the open_time of the newest closed candle the exchange reported;
    `resume_from` the open_time of the first candle not yet handed off.
    """
    end_all = newest_closed + MINUTE
    chunks: list[Chunk] = []
    a = resume_from
    while a < end_all and len(chunks) < max_chunks:
        day_end = dt.datetime.combine(a.date(), dt.time(), tzinfo=dt.UTC) + DAY
        b = min(end_all, day_end, a + chunk_minutes * MINUTE)
        chunks.append(Chunk(a, b))
        a = b
    return chunks


def behind(newest_closed: dt.datetime, resume_from: dt.datetime) -> dt.timedelta:
    """How far the warehouse is behind the exchange."""
    return max(newest_closed + MINUTE - resume_from, dt.timedelta(0))


def describe(delta: dt.timedelta) -> str:
    mins = int(delta / MINUTE)
    d, rem = divmod(mins, 1440)
    h, m = divmod(rem, 60)
    return " ".join(f"{v}{u}" for v, u in ((d, "d"), (h, "h"), (m, "m")) if v) or "0m"

"""The three market-context tables as the room handles them: key time column, the grid the
venue keeps, and when a row becomes known (warehouse/migrations/0009_market_context.sql)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

MINUTE = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class Table:
    """`name`'s rows are keyed by (exchange, symbol, `time`); the venue keeps `time` on a
    `step` grid (funding: Bybit's usual 8 hours; a market's own interval, as its exchange
    states it, is pipeline/context/legs.py's and is passed as `step` where it matters); a row
    is known at `time + known_after` (spot: its close_time)."""

    name: str
    time: str
    step: dt.timedelta
    known_after: dt.timedelta

    def floor(self, t: dt.datetime, step: dt.timedelta | None = None) -> dt.datetime:
        """The grid time (of `step`, default the table's) at or before `t` (UTC)."""
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        step = step or self.step
        return epoch + (t - epoch) // step * step

    def last_due(
        self, end: dt.datetime, closed_by: dt.datetime, step: dt.timedelta | None = None
    ) -> dt.datetime:
        """The newest grid time before `end` whose row is known by `closed_by`."""
        last = min(end - dt.timedelta(microseconds=1), closed_by - self.known_after)
        return self.floor(last, step)


FUNDING = Table("funding_rates", "funding_time", dt.timedelta(hours=8), dt.timedelta(0))
OPEN_INTEREST = Table("open_interest_5m", "time", 5 * MINUTE, 5 * MINUTE)
SPOT = Table("spot_klines_1m", "open_time", MINUTE, MINUTE)
TABLES = (SPOT, FUNDING, OPEN_INTEREST)
BY_NAME = {t.name: t for t in TABLES}

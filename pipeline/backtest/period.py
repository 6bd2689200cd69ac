"""A backtest's period from what people type: --start/--end, --days N or freqtrade's --timerange.

Days are UTC and inclusive (`--end` is the last day backtested). `--timerange` follows freqtrade:
`YYYYMMDD-YYYYMMDD` runs from 00:00 of the first date up to 00:00 of the second (so its end
date is not included), and either side may be left open (`20240101-`, `-20240201`).
Without any of them the period is the configured rolling window (`backtest.window_days`)
ending today, as the daily report's.
"""

from __future__ import annotations

import datetime as dt
import re

from pipeline.backtest.params import ParamError
from pipeline.yamlfile import quote

_TIMERANGE = re.compile(r"^(\d{8})?-(\d{8})?$")


def _day(text: str, what: str) -> dt.date:
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise ParamError(f"--timerange: {what} {text!r} is not a date YYYYMMDD") from None


def parse_timerange(text: str) -> tuple[dt.date | None, dt.date | None]:
    """(first day, last day inclusive) of a freqtrade timerange; None for an open side."""
    m = _TIMERANGE.match(text.strip())
    if not m or not (m[1] or m[2]):
        raise ParamError(
            f"--timerange {quote(text)} is not YYYYMMDD-YYYYMMDD (either side may be open, "
            "e.g. 20240101- or -20240201; the end date is excluded, as in freqtrade)"
        )
    first = _day(m[1], "start") if m[1] else None
    stop = _day(m[2], "end") if m[2] else None
    if first and stop and stop <= first:
        raise ParamError(
            f"--timerange {text}: the end {stop} must come after the start {first} "
            "(the end date is excluded, as in freqtrade)"
        )
    return first, (stop - dt.timedelta(days=1)) if stop else None


def resolve_period(
    *,
    today: dt.date,
    default_days: int,
    start: dt.date | None = None,
    end: dt.date | None = None,
    days: int | None = None,
    timerange: str | None = None,
    first_day: dt.date | None = None,
) -> tuple[dt.date, dt.date]:
    """(first, last) day of the period, inclusive. `first_day` stands in for an open start
    of --timerange (the first stored day); conflicting or malformed input raises ParamError."""
    if timerange is not None:
        given = [n for n, v in (("--start", start), ("--end", end), ("--days", days)) if v]
        if given:
            raise ParamError(
                f"--timerange cannot be combined with {', '.join(given)}: give either "
                "--timerange or --start/--end/--days"
            )
        start, end = parse_timerange(timerange)
        if start is None:
            start = first_day or (end or today) - dt.timedelta(days=default_days - 1)
    if days is not None:
        if days < 1:
            raise ParamError(f"--days {days}: give a number of days >= 1")
        if start is not None and end is not None:
            raise ParamError(
                f"--days {days} with both --start {start} and --end {end}: give two of the three"
            )
        if start is not None:
            end = start + dt.timedelta(days=days - 1)
        else:
            end = end or today
            start = end - dt.timedelta(days=days - 1)
    end = end or today
    start = start or end - dt.timedelta(days=default_days - 1)
    if end < start:
        raise ParamError(f"the end {end} is before the start {start}; give the last day, inclusive")
    if end > today:
        raise ParamError(f"the end {end} is in the future (today is {today} UTC)")
    return start, end


def period_bounds(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start 00:00, the day after end 00:00) in UTC: the window a run covers."""
    lo = dt.datetime.combine(start, dt.time(), dt.UTC)
    return lo, lo + dt.timedelta(days=(end - start).days + 1)

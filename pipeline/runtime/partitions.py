"""The first daily partition of a home: configured, or derived once and recorded.

A home that only ever holds recent history should not show years of "missing" partitions in
the Dagster UI. With `start_date: null` (the default) the first partition is derived on the
home's first start: the exchange's day minus the history it backfills (`live.history_days`,
or `up --history-days`), or the first day of a backfill if that is earlier. It is recorded in
`<home>/partitions.json` so partition keys stay the same across restarts and in every Dagster
process of the home (webserver, daemon, runs all build their partitions from it). An explicit
`start_date` always wins.

Only commands that start Dagster processes record (`up`, `backfill`, before those start);
Dagster processes merely read. With no record (a bare `dagster dev` on a new home) the
partitions start `live.history_days` before today (UTC), and the process says so.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from pipeline import jsonfile
from pipeline.config import ConfigError, Settings

RECORD = "partitions.json"


@dataclass(frozen=True)
class FirstPartition:
    """The first partition and where it came from (for messages)."""

    day: dt.date
    origin: str  # "configured" | "recorded" | "fallback"
    why: str


def record_path(settings: Settings) -> Path:
    return settings.home / RECORD


def _read(settings: Settings) -> dict | None:
    path = record_path(settings)
    try:
        rec = jsonfile.read(path, {"start_date"})
        if rec is not None:
            dt.date.fromisoformat(rec["start_date"])
    except (TypeError, ValueError) as err:  # jsonfile.Unreadable is a ValueError
        why = err if isinstance(err, jsonfile.Unreadable) else f"{path} is unreadable ({err})"
        raise ConfigError(
            f"{why}; it records this home's first daily partition. Restore it, delete it to "
            "derive it again, or set start_date in signalbox.yaml"
        ) from None
    return rec


def first_partition(settings: Settings, today: dt.date | None = None) -> FirstPartition:
    """The home's first daily partition; never writes."""
    if settings.start_date is not None:
        return FirstPartition(settings.start_date, "configured", "start_date in the configuration")
    rec = _read(settings)
    if rec is not None:
        day = dt.date.fromisoformat(rec["start_date"])
        return FirstPartition(day, "recorded", f"recorded in {record_path(settings)}")
    today = today or dt.datetime.now(dt.UTC).date()
    day = today - dt.timedelta(days=settings.live.history_days)
    why = (
        f"no record in {record_path(settings)} yet (`signalbox up` or `backfill` writes it): "
        f"today minus live.history_days ({settings.live.history_days})"
    )
    return FirstPartition(day, "fallback", why)


def exchange_today(rest_url: str) -> dt.date:
    """The exchange's current UTC day (a replay exchange may run in the past); the wall
    clock's if it does not answer."""
    from pipeline.exchanges.bybit import BybitClient

    try:
        with BybitClient(rest_url, timeout_s=5.0, max_retries=2) as client:
            return client.server_time().date()
    except Exception:  # any failure: the exchange is verified later, by the command itself
        return dt.datetime.now(dt.UTC).date()


def ensure_recorded(
    settings: Settings, today: dt.date, history_days: int, earliest: dt.date | None = None
) -> FirstPartition:
    """Record the first partition if it is derived and not recorded yet: `today` minus
    `history_days`, or `earliest` (the first day a backfill asks for) if that is earlier.
    Called before any Dagster process of the home starts; later calls change nothing."""
    current = first_partition(settings, today)
    if current.origin != "fallback":
        return current
    day = today - dt.timedelta(days=history_days)
    why = f"the home's first start on {today} minus {history_days} day(s) of history"
    if earliest is not None and earliest < day:
        day, why = earliest, f"the first day of the home's first backfill ({today})"
    rec = {
        "start_date": day.isoformat(),
        "derived_from": why,
        "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    jsonfile.create(record_path(settings), rec)  # never replaces another command's record
    return first_partition(settings, today)

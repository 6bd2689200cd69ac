"""Repair and housekeeping sensors: gap repair and purging old live-sensor runs (the daily
re-ingest is a schedule, sensors/schedules.py)."""

import datetime as dt
from typing import TYPE_CHECKING

import dagster as dg

from pipeline.orchestration import tags
from pipeline.orchestration.resources import SettingsResource, WarehouseResource
from sensors.live import live_job_sensor

if TYPE_CHECKING:
    from pipeline.markets import Market
    from warehouse import Warehouse

REPAIR_GRACE = dt.timedelta(minutes=3)  # the newest minutes belong to the live path


def unexplained_gaps(wh: "Warehouse", markets: list["Market"], days: int) -> dict[str, int]:
    """Per recent day, minutes missing from the read replica that are not known exchange gaps.

    "Recent" is measured back from the newest candle in the warehouse (the exchange's clock,
    not ours), and only inside the data: a day after the newest candle is the live path's job,
    a day before the oldest one was never asked for.
    """
    from pipeline.runtime.catchup import missing_minutes_by_day
    from warehouse import connect

    if not wh.replica_path.exists():
        return {}
    with connect(wh.replica_path, read_only=True, wait_s=2) as con:
        lo, hi = con.execute("SELECT min(open_time), max(open_time) FROM klines_1m").fetchall()[0]
        if hi is None:
            return {}
        end = hi - REPAIR_GRACE + dt.timedelta(minutes=1)
        start = max(
            lo, dt.datetime.combine(hi.date() - dt.timedelta(days=days - 1), dt.time(), dt.UTC)
        )
        missing = missing_minutes_by_day(con, markets, start, end)
    return {day.isoformat(): n for day, n in missing.items()}


@live_job_sensor(
    300,
    "Every 5 minutes, look for minutes missing in recent partitions (reading the "
    "replica) and request a full re-ingest of each day that has them.",
)
def kline_gap_repair(
    context: dg.SensorEvaluationContext, settings: SettingsResource, warehouse: WarehouseResource
):
    now = dt.datetime.now(dt.UTC)
    s = settings.get()
    try:
        gaps = unexplained_gaps(warehouse.get(), s.markets, s.live.gap_scan_days)
    except Exception as err:  # replica busy or missing: the next scan will see it
        return dg.SkipReason(f"could not scan the replica: {err}")
    if not gaps:
        return dg.SkipReason("no gaps in recent partitions")
    hour = now.strftime("%Y%m%dT%H")
    return [
        dg.RunRequest(
            run_key=f"gap-repair:{day}:{hour}",
            partition_key=day,
            tags={tags.MODE: tags.REPAIR, tags.MISSING: str(n)},
        )
        for day, n in sorted(gaps.items())
    ]


@dg.sensor(
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Hourly, delete live runs older than live.run_retention_days so run storage "
    "stays bounded (1,440 live runs a day). Backfill, repair and report runs are kept.",
)
def purge_live_runs(context: dg.SensorEvaluationContext, settings: SettingsResource):
    keep = dt.timedelta(days=settings.get().live.run_retention_days)
    cutoff = dt.datetime.now(dt.UTC) - keep
    purged = purge_before(context.instance, cutoff)
    return dg.SkipReason(f"purged {purged} live run(s) created before {cutoff:%Y-%m-%d %H:%M} UTC")


def purge_before(instance: dg.DagsterInstance, cutoff: dt.datetime, batch: int = 500) -> int:
    """Delete finished live-sensor runs created before `cutoff` (and those an older version
    tagged `signalbox/live`); returns how many."""
    return sum(
        _purge(instance, cutoff, batch, marker)
        for marker in ({tags.SENSOR: tags.LIVE_SENSOR}, dict([tags.LEGACY_LIVE]))
    )


def _purge(instance: dg.DagsterInstance, cutoff: dt.datetime, batch: int, marker: dict) -> int:
    purged = 0
    while True:
        records = instance.get_run_records(
            dg.RunsFilter(
                tags=marker,
                created_before=cutoff,
                statuses=[
                    dg.DagsterRunStatus.SUCCESS,
                    dg.DagsterRunStatus.FAILURE,
                    dg.DagsterRunStatus.CANCELED,
                ],
            ),
            limit=batch,
        )
        for rec in records:
            instance.delete_run(rec.dagster_run.run_id)
        purged += len(records)
        if len(records) < batch:
            return purged

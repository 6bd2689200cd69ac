"""Schedules, in the order they run after midnight UTC: repair, quality, backtests; and
order flow every hour."""

import datetime as dt

import dagster as dg

from assets.backtests import PERSONALITIES
from pipeline.orchestration import tags
from pipeline.orchestration.jobs import backtest_job, live_job, quality_job


def _daily(job: dg.JobDefinition, cron: str, description: str):
    """A schedule of `job` that runs on by itself at `cron` (UTC)."""
    return dg.schedule(
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=description,
    )


def _yesterday(context: dg.ScheduleEvaluationContext) -> dt.date:
    return (context.scheduled_execution_time.astimezone(dt.UTC) - dt.timedelta(days=1)).date()


@_daily(
    live_job,
    "5 0 * * *",
    "Shortly after midnight UTC, re-ingest yesterday in full from REST (closing any "
    "minute the live path missed) and recompute its timeframes, indicators and signals.",
)
def daily_repair(context: dg.ScheduleEvaluationContext):
    day = _yesterday(context)
    return dg.RunRequest(
        run_key=f"repair:{day}", partition_key=day.isoformat(), tags={tags.MODE: tags.REPAIR}
    )


@_daily(
    quality_job,
    "20 0 * * *",
    "Daily, after the repair re-ingested it: the slow checks over yesterday.",
)
def quality_schedule(context: dg.ScheduleEvaluationContext):
    day = _yesterday(context)
    return dg.RunRequest(run_key=f"quality:{day}", partition_key=day.isoformat())


@_daily(
    backtest_job,
    "40 0 * * *",
    "Daily, after the repair and quality runs: one report per personality.",
)
def daily_backtests(context: dg.ScheduleEvaluationContext):
    day = context.scheduled_execution_time.date().isoformat()
    return [
        dg.RunRequest(run_key=f"backtest:{p}:{day}", partition_key=p)
        for p in PERSONALITIES.get_partition_keys()
    ]


SCHEDULES = [daily_repair, quality_schedule, daily_backtests]

"""Schedules, in the order they run after midnight UTC: repair, quality, backtests, the paper
bots' reconciliation; and order flow every hour."""

import datetime as dt

import dagster as dg

from assets.backtests import PERSONALITIES
from assets.common import DAILY
from pipeline.orchestration import tags
from pipeline.orchestration.jobs import (
    backtest_job,
    live_job,
    paper_reconcile_job,
    quality_job,
)
from pipeline.orchestration.resources import SettingsResource


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


IN_FLIGHT = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
)


@_daily(
    paper_reconcile_job,
    "45 * * * *",
    "Yesterday's paper trades against the backtest, every bot, once: at the first hourly "
    "tick (from 00:45) at which no live or repair run of that day is in flight and every bot "
    "has processed the day's last bar; the run ingests the journals before reconciling. At "
    "23:45 it runs anyway: a bot still behind was down, and that is what the report says.",
)
def paper_reconcile(context: dg.ScheduleEvaluationContext, settings: SettingsResource):
    from pipeline.bots.reconcile import closed_through

    s = settings.get()
    if not s.bots:
        return dg.SkipReason("no paper bots are configured (`bots:` in signalbox.yaml)")
    day = _yesterday(context)
    first = DAILY.start.date()
    if day < first:
        return dg.SkipReason(f"{day} is before the home's first day partition ({first})")
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
    busy = context.instance.get_run_ids(
        dg.RunsFilter(
            job_name=live_job.name, tags={"dagster/partition": day.isoformat()}, statuses=IN_FLIGHT
        )
    )
    if busy:
        return dg.SkipReason(
            f"a live or repair run of {day} is in flight ({', '.join(busy)}): its signals and "
            "candles may still change; reconciling at a later tick"
        )
    behind = {}
    for b in s.bots:
        try:
            upto = closed_through(s.home, b.name)
        except ValueError as err:  # a damaged state file: says which and why
            return dg.SkipReason(f"cannot read bot {b.name}'s state: {err}")
        if upto is not None and upto < end:
            behind[b.name] = upto
    last_tick = context.scheduled_execution_time.astimezone(dt.UTC).hour == 23
    if behind and not last_tick:
        names = ", ".join(f"{n} (through {t:%Y-%m-%d %H:%M})" for n, t in behind.items())
        return dg.SkipReason(
            f"not every bot has processed {day}'s last bar: {names}; waiting for them "
            "(the 23:45 tick reconciles anyway, their missing bars explained as bot_down)"
        )
    tags = {"signalbox/bots_behind": ",".join(sorted(behind))} if behind else {}
    return dg.RunRequest(run_key=f"paper-reconcile:{day}", partition_key=day.isoformat(), tags=tags)


SCHEDULES = [daily_repair, quality_schedule, daily_backtests, paper_reconcile]

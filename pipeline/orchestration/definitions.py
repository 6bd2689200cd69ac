"""The one Dagster `Definitions` object (code location `pipeline.orchestration.definitions`).

Runs execute in-process: the live path is a handful of millisecond steps, and a process per
step would cost seconds. The executor is Dagster's in-process one, watching the DuckDB pool
for runs whose process died (sensors/reaper.py). Asset modules stay thin; the work is in
pipeline/ and warehouse/.
"""

import datetime as dt

import dagster as dg

from assets import backtests, klines, signals, timeframes
from assets.common import DAILY
from sensors import live, reaper, repair

quality_job = dg.define_asset_job(
    "quality",
    selection=live.SLOW_CHECKS,
    partitions_def=DAILY,
    description="The slow checks (great-expectations, warm-up against full history) for a day: "
    "slow to import, so daily, not per minute. Per day, so the UI keeps each day's verdict "
    "while live runs rewrite today.",
)

backfill_job = dg.define_asset_job(
    "backfill",
    selection=dg.AssetSelection.groups("ingest", "timeframes", "signals"),
    partitions_def=DAILY,
    description="A range of days as ONE run: 1m candles, every timeframe, indicators and signals, "
    "with every check (the great-expectations suite included). Launched by `signalbox backfill` "
    "and by `signalbox up` catching up what a restarted home is missing.",
)


@dg.schedule(
    job=quality_job,
    cron_schedule="20 0 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily, after the repair re-ingested it: the slow checks over yesterday.",
)
def quality_schedule(context: dg.ScheduleEvaluationContext):
    day = (context.scheduled_execution_time.astimezone(dt.UTC) - dt.timedelta(days=1)).date()
    return dg.RunRequest(run_key=f"quality:{day}", partition_key=day.isoformat())


defs = dg.Definitions(
    assets=[
        klines.klines_1m,
        timeframes.candles,
        timeframes.indicators,
        signals.signals,
        backtests.backtest_report,
    ],
    asset_checks=[klines.klines_expectations, timeframes.indicators_warmup],
    jobs=[live.live_job, backfill_job, quality_job, backtests.backtest_job],
    sensors=[
        live.live_candles,
        repair.kline_gap_repair,
        repair.purge_live_runs,
        reaper.reap_dead_runs,
    ],
    schedules=[repair.daily_repair, quality_schedule, backtests.daily_backtests],
    executor=reaper.watched_in_process_executor,
)

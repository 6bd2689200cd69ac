"""Every job: what a kind of run materializes (the UI lists them by these names)."""

import dagster as dg

from assets import backtests, klines, paper, timeframes
from assets.common import DAILY

DAILY_GROUPS = ("ingest", "timeframes", "signals")

# Slow checks (great-expectations, warm-up against full history) run on the daily quality
# schedule and in backfills, never in the minute-by-minute job.
SLOW_CHECKS = dg.AssetSelection.checks(klines.klines_expectations, timeframes.indicators_warmup)

live_job = dg.define_asset_job(
    "live",
    # order flow too: the minute's trades reach the signals of the run that computes them
    selection=dg.AssetSelection.groups(*DAILY_GROUPS, "orderflow") - SLOW_CHECKS,
    partitions_def=DAILY,
    description="Ingest new minutes into a day's partition, then update its timeframes, "
    "indicators, order flow (from the trade collector's journal) and signals. Launched by the "
    "live sensor and the gap and daily repairs.",
)

backfill_job = dg.define_asset_job(
    "backfill",
    selection=dg.AssetSelection.groups(*DAILY_GROUPS),
    partitions_def=DAILY,
    description="A range of days as ONE run: 1m candles, every timeframe, indicators and signals, "
    "with every check (the great-expectations suite included). Launched by `signalbox backfill` "
    "and by `signalbox up` catching up what a restarted home is missing.",
)

quality_job = dg.define_asset_job(
    "quality",
    selection=SLOW_CHECKS,
    partitions_def=DAILY,
    description="The slow checks (great-expectations, warm-up against full history) for a day: "
    "slow to import, so daily, not per minute. Per day, so the UI keeps each day's verdict "
    "while live runs rewrite today.",
)

backtest_job = dg.define_asset_job(
    "backtest_reports",
    selection=dg.AssetSelection.assets(backtests.backtest_report),
    partitions_def=backtests.PERSONALITIES,
    description="Refresh every personality's backtest report over the rolling window.",
)

paper_reconcile_job = dg.define_asset_job(
    "paper_reconcile",
    selection=dg.AssetSelection.assets(paper.paper_trades, paper.paper_vs_backtest),
    partitions_def=DAILY,
    description="A day's paper trades reconciled with the backtest, every bot: first the bots' "
    "journals ingested (paper_trades, in the same run, so what the bots committed is in the "
    "warehouse), then paper_vs_backtest for the day (by the paper_reconcile schedule).",
)

JOBS = [live_job, backfill_job, quality_job, backtest_job, paper_reconcile_job]

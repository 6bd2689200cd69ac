"""The one Dagster `Definitions` object (code location `pipeline.orchestration.definitions`).

Runs execute in-process: the live path is a handful of millisecond steps, and a process per
step would cost seconds. The executor is Dagster's in-process one, watching the DuckDB pool
for runs whose process died (pipeline/orchestration/reaper.py). Settings, the exchange and the
warehouse are resources (pipeline/orchestration/resources.py), loaded when a run or a tick
first asks for them. Asset modules stay thin; the work is in pipeline/ and warehouse/.
"""

import dagster as dg

from assets import backtests, context, klines, orderflow, paper, signals, timeframes
from pipeline.orchestration.jobs import JOBS
from pipeline.orchestration.reaper import watched_in_process_executor
from pipeline.orchestration.resources import resources
from sensors import live, reaper, repair
from sensors import paper as paper_sensors
from sensors.schedules import SCHEDULES

defs = dg.Definitions(
    assets=[
        klines.klines_1m,
        context.market_context,
        timeframes.candles,
        timeframes.indicators,
        signals.signals,
        backtests.backtest_report,
        orderflow.order_flow,
        paper.paper_trades,
        paper.paper_vs_backtest,
    ],
    asset_checks=[klines.klines_expectations, timeframes.indicators_warmup],
    jobs=JOBS,
    sensors=[
        live.live_candles,
        repair.kline_gap_repair,
        repair.purge_live_runs,
        reaper.reap_dead_runs,
        paper_sensors.paper_journals,
    ],
    schedules=SCHEDULES,
    resources=resources(),
    executor=watched_in_process_executor,
)

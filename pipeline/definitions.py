"""The one Dagster `Definitions` object (code location `pipeline.definitions`).

Runs execute in-process: the live path is a handful of millisecond steps, and a process per
step would cost seconds. Asset modules stay thin; the work is in pipeline/ and warehouse/.
"""

from __future__ import annotations

import dagster as dg

from assets import klines

defs = dg.Definitions(
    assets=[klines.bybit_klines_1m],
    asset_checks=[klines.klines_expectations],
    executor=dg.in_process_executor,
)

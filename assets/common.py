"""What every asset module shares: partitions, the DuckDB pool, owners, check specs and
results, metadata as the UI shows it (and `md_table`, re-exported from
pipeline.quality.checks).

Assets get settings, the exchange and the warehouse as resources
(pipeline/orchestration/resources.py). Only the definitions' shape (the first daily
partition, the personalities, the freshness window) is read from the configuration when the
code location loads (`SHAPE`): Dagster needs it then, before any run.
"""

from __future__ import annotations

import datetime as dt
import random
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg

from pipeline.config import load_settings
from pipeline.orchestration.instance import POOL
from pipeline.orchestration.reaper import WATCH_EVERY_S, PoolWatch
from pipeline.quality.checks import CheckOutcome, Markdown, for_display
from pipeline.quality.checks import md_table as md_table  # re-exported for the asset modules

# BackfillPolicy is "beta" in Dagster 1.13; single-run backfills are what we rely on.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


SHAPE = load_settings()  # the configuration the definitions' shape comes from (see above)


def _first_partition() -> str:
    """The home's first daily partition (pipeline/runtime/partitions.py), read, never written: the
    webserver, the daemon and every run build the same partitions from it."""
    from pipeline.runtime.partitions import first_partition

    first = first_partition(SHAPE)
    if first.origin == "fallback":
        print(f"signalbox: daily partitions start {first.day}: {first.why}", file=sys.stderr)
    return first.day.isoformat()


DAILY = dg.DailyPartitionsDefinition(start_date=_first_partition(), end_offset=1, timezone="UTC")
SINGLE_RUN = dg.BackfillPolicy.single_run()
OWNERS = ["team:signalbox"]  # shown in the UI's catalog; who answers for these assets


def check_specs(asset: str, checks: dict[str, str]) -> list[dg.AssetCheckSpec]:
    """The blocking checks an asset evaluates in its own step, by name → what each proves."""
    return [
        dg.AssetCheckSpec(name, asset=asset, blocking=True, description=text)
        for name, text in checks.items()
    ]


def table_spec(table: str, description: str, **spec: Any) -> dg.AssetSpec:
    """One warehouse table of a multi-asset step (as `daily_table` is for a step of its own);
    `spec` adds to that (group_name, deps, ...)."""
    return dg.AssetSpec(
        table,
        owners=OWNERS,
        kinds={"duckdb", "polars"},
        metadata={"table": table},
        description=description,
        **spec,
    )


def daily_table(table: str, checks: dict[str, str], **asset: Any) -> Any:
    """`dg.asset` for a daily partitioned, single-run backfilled asset writing warehouse table
    `table` and evaluating `checks` in its own step; `asset` adds to or overrides that."""
    return dg.asset(
        **{
            "partitions_def": DAILY,
            "backfill_policy": SINGLE_RUN,
            "pool": "duckdb",
            "owners": OWNERS,
            "check_specs": check_specs(table, checks),
            "metadata": {"table": table},
            **asset,
        }
    )


def display(meta: dict) -> dict:
    """Metadata as the UI shows it: floats rounded (pipeline.quality.checks.for_display, also inside
    JSON values), `Markdown` text as markdown."""
    out = {}
    for key, value in meta.items():
        if isinstance(value, Markdown):
            value = dg.MetadataValue.md(value)
        elif isinstance(value, dg.JsonMetadataValue):
            value = dg.MetadataValue.json(for_display(value.data))
        elif isinstance(value, dg.FloatMetadataValue) and value.value is not None:
            value = dg.MetadataValue.float(for_display(value.value))
        elif not isinstance(value, dg.MetadataValue):
            value = for_display(value)
        out[key] = value
    return out


def window(context: dg.AssetExecutionContext) -> tuple[dt.datetime, dt.datetime]:
    """The run's partition range as [start, end) in UTC."""
    tw = context.partition_time_window
    return tw.start.astimezone(dt.UTC), tw.end.astimezone(dt.UTC)


KLINES = "klines_1m"  # the ingest asset, whose op config holds a live run's minutes


def parse_time(ts: str | None) -> dt.datetime | None:
    """An ISO 8601 time from a run config (naive = UTC), None when not given."""
    if not ts:
        return None
    v = dt.datetime.fromisoformat(ts)
    return v if v.tzinfo else v.replace(tzinfo=dt.UTC)


def handed(context: dg.AssetExecutionContext) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The minutes a run was launched for: the klines op's `start` and `end` (the live
    sensor's, a catch-up's), each None when not given."""
    minutes = (context.run.run_config or {}).get("ops", {}).get(KLINES, {}).get("config", {})
    return parse_time(minutes.get("start")), parse_time(minutes.get("end"))


def live_start(context: dg.AssetExecutionContext) -> dt.datetime | None:
    """The first minute a mode=live run ingests (the klines op's `start`, inside the partition):
    its candles, indicators and signals rebuild only what minutes from there change
    (pipeline/candles/tail.py). None for every other run: the whole partition."""
    from pipeline.orchestration import tags

    if not tags.is_live(context.run.tags):
        return None
    start, _ = handed(context)
    if start is None:
        return None
    p_start, p_end = window(context)
    start = max(start, p_start)  # as the klines asset clamps it
    return start if start < p_end else None


def check_result(
    name: str,
    outcome: CheckOutcome,
    asset: str | None = None,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
) -> dg.AssetCheckResult:
    """A check's result; a failed ERROR blocks what is downstream in the run, a WARN shows."""
    return dg.AssetCheckResult(
        check_name=name,
        passed=outcome.passed,
        asset_key=asset,
        metadata=display({"result": outcome.description, **outcome.metadata}),
        description=outcome.description,
        severity=severity,
    )


def for_each_partition(
    context: dg.AssetCheckExecutionContext, result: dg.AssetCheckResult
) -> dg.AssetCheckResult:
    """A partitioned check's result, recorded for every partition its run covers.

    Dagster records a check's result against the run's partition, and only when the run has a
    single one; a backfill's single run over a range would leave every day of it "Not
    evaluated". So the result is logged for each day of the range, against the day's latest
    materialization (what the UI compares it with), and returned for the run itself.
    """
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData as Target,
    )

    if context.has_partition_key or not context.has_partition_key_range:
        return result
    (spec,) = context.check_specs
    for key in context.partition_keys:
        found = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=spec.asset_key, asset_partitions=[key]), limit=1
        ).records
        target = (
            Target(
                run_id=found[0].run_id, storage_id=found[0].storage_id, timestamp=found[0].timestamp
            )
            if found
            else None
        )
        context.op_execution_context.log_event(
            dg.AssetCheckEvaluation(
                asset_key=spec.asset_key,
                check_name=spec.name,
                passed=result.passed,
                metadata=result.metadata,
                severity=result.severity,
                description=result.description,
                partition=key,
                target_materialization_data=target,
            )
        )
    return result


@contextmanager
def pool_slot(context: dg.AssetExecutionContext, wait_s: float = 3600.0) -> Iterator[None]:
    """Hold a slot of the shared DuckDB pool for just this block (not the whole step).

    Steps that spend time off the warehouse (talking to the exchange) claim the slot only
    around their writes, so a slow exchange never blocks the other writers. While waiting it
    says whom it waits for, and frees the pool from runs whose process is gone.
    """
    storage = context.instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        yield
        return
    if POOL not in storage.get_concurrency_keys():
        storage.initialize_concurrency_limit_to_default(POOL)
    run_id = context.run_id
    step = str(context.op_execution_context.node_handle) + ":write"
    watch = PoolWatch(context.instance, run_id, context.log.info, steps={step})
    deadline = time.monotonic() + wait_s
    delay, checked = 0.05, 0.0
    while not storage.claim_concurrency_slot(POOL, run_id, step).is_claimed:
        now = time.monotonic()
        if now > deadline:
            why = watch.last or "no other run holds it"
            raise RuntimeError(f"waited {wait_s:.0f} s for a slot in the {POOL!r} pool ({why})")
        if delay >= 0.5 and now - checked >= WATCH_EVERY_S:
            watch.check()
            checked = now
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 2.0)
    try:
        yield
    finally:
        storage.free_concurrency_slot_for_step(run_id, step)

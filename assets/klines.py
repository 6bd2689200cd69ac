"""`klines_1m`: raw 1-minute candles of every venue per daily partition, with its blocking
checks."""

import datetime as dt
import time

import dagster as dg

from assets.common import (
    DAILY,
    SHAPE,
    check_result,
    daily_table,
    display,
    for_each_partition,
    md_table,
    parse_time,
    pool_slot,
)
from assets.common import window as partition_window
from pipeline.markets import by_venue
from pipeline.orchestration import tags
from pipeline.orchestration.resources import (
    ExchangeResource,
    ProgressResource,
    SettingsResource,
    WarehouseResource,
)
from pipeline.runtime.latency import record as record_latency

ASSET = "klines_1m"
CHECKS = {
    "no_duplicates": "At most one row per (exchange, symbol, open_time) in the day.",
    "ohlc_sane": "low <= open, close <= high; volume >= 0; prices positive and finite "
    "(exact: they are the exchange's own numbers).",
    "complete_minutes": "Every minute of the day up to the exchange's last closed one is stored "
    "for every market, or confirmed absent at the exchange; names every UTC day with a gap.",
    "nothing_from_future": "No stored candle closes after the exchange's clock at ingest time "
    "(no forming candle).",
}


class KlinesConfig(dg.Config):
    """Optional narrowing of a run to a minute range (the live sensor ingests new minutes only)."""

    start: str | None = None  # ISO 8601 UTC, inclusive
    end: str | None = None  # ISO 8601 UTC, exclusive


@daily_table(
    ASSET,
    CHECKS,
    name=ASSET,
    pool=None,  # claimed only while writing
    group_name="ingest",
    kinds={"duckdb", "polars", *by_venue(SHAPE.markets)},  # the venues show as kinds in the UI
    description=(
        "Closed 1-minute candles from every configured venue (or the replay exchange's faces), "
        "all configured markets per UTC day, keyed by (exchange, symbol, open_time). "
        "Re-materializing a partition replaces exactly its rows."
    ),
    freshness_policy=dg.FreshnessPolicy.time_window(
        fail_window=dt.timedelta(minutes=SHAPE.live.freshness_minutes)
    ),
    metadata={
        "table": "klines_1m",
        "pool": "duckdb (claimed only while writing)",
        "markets": ", ".join(map(str, SHAPE.markets)),
    },
)
def klines_1m(
    context: dg.AssetExecutionContext,
    config: KlinesConfig,
    settings: SettingsResource,
    exchange: ExchangeResource,
    warehouse: WarehouseResource,
    progress: ProgressResource,
):
    from pipeline.exchanges.ingest import ingest
    from pipeline.quality.checks import kline_checks

    started_at = time.time()
    s, ep, wh = settings.get(), exchange.source(), warehouse.get()
    p_start, p_end = partition_window(context)
    # The slowest venue's clock says which minutes are closed everywhere (one clock in replay).
    exchange_now = min(exchange.client(v).server_time() for v in by_venue(s.markets))
    closed_by = exchange_now.replace(second=0, microsecond=0)
    start = max(p_start, parse_time(config.start) or p_start)
    end = min(p_end, parse_time(config.end) or p_end, closed_by)
    ident = f"{start:%Y-%m-%d %H:%M}→{end:%Y-%m-%d %H:%M}"
    names = ", ".join(map(str, s.markets))
    context.log.info(f"ingesting {names} {ident} from {ep.label} ({ep.rest_url})")

    live = tags.from_sensor(context.run.tags)  # minutes, every minute: no progress
    report = progress.reporter(context, "minutes", 0, enabled=not live, every_s=0)

    def progress(done: int, total: int, note: str, **markets: object) -> None:
        report(done, note, total, **markets)  # markets: minutes fetched per market

    summary = None
    if start < end:
        summary = ingest(
            s,
            ep,
            start,
            end,
            closed_by=closed_by,
            progress=progress,
            write_guard=lambda: pool_slot(context),
        )
        committed_at = time.time()

    check_end = max(end, p_start)  # what this run is answerable for
    # A live run checks the minutes it wrote (earlier runs checked theirs; the day as a whole
    # is checked by every other run and the daily quality schedule).
    lo = start if tags.is_live(context.run.tags) and summary else p_start
    with pool_slot(context):
        frame = wh.query(
            "SELECT exchange, symbol, open_time, close_time, open, high, low, close, volume FROM "
            "klines_1m WHERE open_time >= ? AND open_time < ?",
            [lo, p_end],
        )
        gaps = wh.query(
            "SELECT exchange, symbol, open_time FROM kline_gaps"
            " WHERE open_time >= ? AND open_time < ?",
            [lo, check_end],
        )
        per_market = wh.query(  # the day's rows per market, counted where they are
            "SELECT concat(exchange, ':', symbol) AS market, count(*) AS rows,"
            " min(open_time) AS first, max(open_time) AS last FROM klines_1m"
            " WHERE open_time >= ? AND open_time < ? GROUP BY ALL ORDER BY market",
            [p_start, p_end],
        )
    outcomes = kline_checks(frame, s.markets, lo, check_end, exchange_now, gaps)
    meta = {
        "source": ep.label,
        "exchange_time": exchange_now.isoformat(),
        "rows_written": summary.rows if summary else 0,
        "ingested_range": ident,
        "partition_rows": int(per_market["rows"].sum()) if per_market.height else 0,
        "rows_checked": frame.height,
        "gaps_found": outcomes["complete_minutes"].metadata.get("missing", 0),
        "per_market": dg.MetadataValue.md(md_table(per_market)),
        "last_open_time": dg.MetadataValue.json(  # by market: the live sensor reads it
            {r["market"]: r["last"].isoformat() for r in per_market.iter_rows(named=True)}
        ),
    }
    if summary:
        meta["exchange_gaps_found"] = summary.gaps
        if live:  # record where the minute's time went
            meta["latency_s"] = round(committed_at - end.timestamp(), 3)
            run = context.instance.get_run_record_by_id(context.run_id)  # created on request
            record_latency(
                s.home,
                run_id=context.run_id,
                stage="ingest",
                close=end.timestamp(),
                committed_at=committed_at,
                requested_at=run.create_timestamp.timestamp() if run else float("nan"),
                asset_started_at=started_at,
                minutes=summary.rows,
                checks_passed=all(o.passed for o in outcomes.values()),
            )
    return dg.MaterializeResult(
        metadata=display(meta),
        check_results=[check_result(name, outcomes[name], ASSET) for name in CHECKS],
    )


@dg.asset_check(
    asset=ASSET,
    name="expectations_suite",
    blocking=False,
    pool="duckdb",
    partitions_def=DAILY,
    description=(
        "great-expectations suite over the day's candles: daily for yesterday on the quality "
        "schedule, and for every day of a backfill. Heavy to import, so it never runs in the "
        "minute-by-minute live job. Its result is per day, so a live run writing today's "
        "minutes does not hide the last verdict."
    ),
)
def klines_expectations(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    from pipeline.quality.expectations import validate_klines

    start, end = partition_window(context.op_execution_context)
    frame = warehouse.get().query(
        "SELECT * FROM klines_1m WHERE open_time >= ? AND open_time < ?", [start, end]
    )
    outcome = validate_klines(frame)
    result = check_result("expectations_suite", outcome, ASSET)
    context.log.info(outcome.description)
    return for_each_partition(
        context,
        dg.AssetCheckResult(
            passed=result.passed,
            metadata={**result.metadata, "window": f"[{start.isoformat()}, {end.isoformat()})"},
            description=result.description,
            severity=dg.AssetCheckSeverity.WARN,
        ),
    )

"""`order_flow_1m`: each day's order flow per minute, ingested from the trade collector's
journal (`signalbox trades`, pipeline/orderflow/journal.py), checked against the 1m candles;
`order_flow_bars`: the same on every timeframe (pipeline/orderflow/derived.py)."""

import datetime as dt

import dagster as dg

from assets.common import check_result, daily_table, display, md_table, pool_slot
from assets.common import window as partition_window
from pipeline.orchestration.resources import SettingsResource, WarehouseResource
from pipeline.orderflow.checks import CHECKS
from pipeline.orderflow.derived import CHECKS as BAR_CHECKS

ASSET = "order_flow_1m"


@daily_table(
    ASSET,
    CHECKS,
    name=ASSET,
    pool=None,  # claimed only while reading candles and writing
    group_name="orderflow",  # not in the live job: a lost trade must not fail a live run
    kinds={"duckdb", "polars"},
    deps=["klines_1m"],
    description=(
        "Taker buy/sell volume and turnover, trade count, VWAP and the price range of every "
        "minute the trade collector watched whole (its coverage), per (exchange, symbol, "
        "open_time). A minute without a row has no order flow (NULL, never zero). Checked "
        "against the day's 1m candles; a minute that disagrees is stored flagged, never fixed."
    ),
)
def order_flow_1m(
    context: dg.AssetExecutionContext, settings: SettingsResource, warehouse: WarehouseResource
):
    import polars as pl

    from pipeline.markets import by_venue
    from pipeline.orderflow import journal
    from pipeline.orderflow.checks import annotate, coverage, flow_checks
    from warehouse import Replacement

    s, wh = settings.get(), warehouse.get()
    start, end = partition_window(context)
    venues = by_venue(s.markets)
    markets = sorted(f"{v}:{sym}" for v, syms in venues.items() for sym in syms)
    days = [start.date() + dt.timedelta(days=i) for i in range((end - start).days)]
    parts = [journal.read(s.home, v, d) for v in venues for d in days]
    market = pl.concat_str("exchange", pl.lit(":"), "symbol")
    flow = pl.concat(parts).filter(market.is_in(markets))  # configured markets only
    with pool_slot(context):
        klines = wh.query(
            "SELECT exchange, symbol, open_time, low, high, volume FROM klines_1m"
            " WHERE open_time >= ? AND open_time < ?",
            [start, end],
        )
        frame = annotate(flow, klines, dt.datetime.now(dt.UTC))
        written = wh.replace_many(
            [
                Replacement(
                    ASSET,
                    frame.filter(pl.col("exchange") == v),
                    "exchange = ? AND open_time >= ? AND open_time < ?",
                    (v, start, end),
                )
                for v in venues
            ]
        )
    outcomes = flow_checks(frame)
    cov = coverage(frame, markets)
    context.log.info(
        f"order flow {start:%Y-%m-%d}→{end:%Y-%m-%d}: {frame.height} covered minute(s) of "
        f"{len(markets)} market(s)"
    )
    meta = {
        "rows_written": written,
        "covered_minutes": frame.height,
        "coverage": dg.MetadataValue.md(md_table(cov)),
        "uncovered_markets": ", ".join(cov.filter(pl.col("covered") == 0)["market"]) or "none",
        "flagged_minutes": int(frame.filter(pl.col("volume_matches").not_()).height),
        "journal": str(journal.path(s.home, "<exchange>", start.date()).parent.parent),
    }
    return dg.MaterializeResult(
        metadata=display(meta),
        check_results=[check_result(name, outcomes[name], ASSET) for name in CHECKS],
    )


BARS = "order_flow_bars"


@daily_table(
    BARS,
    BAR_CHECKS,
    name=BARS,
    pool=None,  # claimed only while reading and writing
    group_name="orderflow",
    kinds={"duckdb", "polars"},
    deps=[ASSET],
    description=(
        "Order flow on every timeframe's bars: taker buy/sell volume, delta, buy ratio, "
        "the CVD anchored at 00:00 UTC and the rolling 24h CVD, from order_flow_1m's covered "
        "minutes that matched their candle. A bar not covered whole has NULL values (never zero)."
    ),
)
def order_flow_bars(
    context: dg.AssetExecutionContext, settings: SettingsResource, warehouse: WarehouseResource
):
    import polars as pl

    from pipeline.candles.timeframes import owned_where, partition_input_window
    from pipeline.markets import by_venue
    from pipeline.orderflow.derived import bar_checks, bars
    from warehouse import Replacement

    s, wh = settings.get(), warehouse.get()
    start, end = partition_window(context)
    days = [start.date() + dt.timedelta(days=i) for i in range((end - start).days)]
    venues = list(by_venue(s.markets))
    frames = []
    with pool_slot(context):
        first, _ = partition_input_window(days[0], s.timeframes)
        first = min(first, start - dt.timedelta(days=1))  # cvd_24h reads the day before
        flow = wh.query(
            "SELECT exchange, symbol, open_time, taker_buy_volume, taker_sell_volume,"
            " volume_matches FROM order_flow_1m WHERE open_time >= ? AND open_time < ?",
            [first, end],
        )
        items = []
        for day in days:
            frame = bars(flow, list(s.timeframes), day)
            frames.append(frame)
            for v in venues:
                where, params = owned_where(day, v)
                mine = frame.filter(pl.col("exchange") == v)
                items.append(Replacement(BARS, mine, where, tuple(params)))
        written = wh.replace_many(items)
    frame = pl.concat(frames)
    outcomes = bar_checks(frame)
    whole = frame.filter(pl.col("covered_minutes") == pl.col("expected_minutes"))
    per_tf = (
        frame.group_by("timeframe")
        .agg(bars=pl.len(), whole=(pl.col("delta").is_not_null()).sum())
        .sort("timeframe")
    )
    meta = {
        "rows_written": written,
        "whole_bars": whole.height,
        "per_timeframe": dg.MetadataValue.md(md_table(per_tf)),
    }
    return dg.MaterializeResult(
        metadata=display(meta),
        check_results=[check_result(name, outcomes[name], BARS) for name in BAR_CHECKS],
    )

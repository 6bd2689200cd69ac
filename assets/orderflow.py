"""`order_flow_1m`: each day's order flow per minute, ingested from the trade collector's
journal (`signalbox trades`, pipeline/orderflow/journal.py), checked against the 1m candles;
`order_flow_bars`: the same on every timeframe (pipeline/orderflow/derived.py)."""

import datetime as dt

import dagster as dg

from assets.common import check_result, daily_table, display, live_start, md_table, pool_slot
from assets.common import window as partition_window
from pipeline.orchestration.resources import SettingsResource, WarehouseResource
from pipeline.orderflow.checks import CHECKS, WARN_ONLY
from pipeline.orderflow.derived import CHECKS as BAR_CHECKS

ASSET = "order_flow_1m"
MARK_WAIT_S = 6.0  # a running collector journals a quiet minute 5 s after its end at most


def _written(items: list) -> int:
    """Rows a write puts in its table (the journal cursor's row is bookkeeping, not counted)."""
    from pipeline.orderflow.live import CURSOR

    return sum(it.frame.height for it in items if it.table != CURSOR)


def _results(outcomes: dict, names: dict, asset: str) -> list[dg.AssetCheckResult]:
    warn, error = dg.AssetCheckSeverity.WARN, dg.AssetCheckSeverity.ERROR
    return [check_result(n, outcomes[n], asset, warn if n in WARN_ONLY else error) for n in names]


@daily_table(
    ASSET,
    CHECKS,
    name=ASSET,
    pool=None,  # claimed only while reading candles and writing
    group_name="orderflow",
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
    from pipeline.orderflow.live import cursor_row
    from warehouse import Replacement

    s, wh = settings.get(), warehouse.get()
    start, end = partition_window(context)
    venues = by_venue(s.markets)
    markets = sorted(f"{v}:{sym}" for v, syms in venues.items() for sym in syms)
    now = dt.datetime.now(dt.UTC)
    if live_start(context) is not None:  # mode=live: what the collector journaled since
        return _live_ingest(context, s, wh, list(venues), markets, start.date(), now)
    days = [start.date() + dt.timedelta(days=i) for i in range((end - start).days)]
    read = {(v, d): journal.read_from(s.home, v, d, 0) for v in venues for d in days}
    market = pl.concat_str("exchange", pl.lit(":"), "symbol")
    flow = pl.concat([f for f, _ in read.values()]).filter(market.is_in(markets))
    with pool_slot(context):
        klines = wh.query(
            "SELECT exchange, symbol, open_time, low, high, volume FROM klines_1m"
            " WHERE open_time >= ? AND open_time < ?",
            [start, end],
        )
        frame = annotate(flow, klines, now)
        d0 = {d: dt.datetime.combine(d, dt.time(), dt.UTC) for d in days}
        items = (
            [
                Replacement(
                    ASSET,
                    frame.filter(pl.col("exchange") == v),
                    "exchange = ? AND open_time >= ? AND open_time < ?",
                    (v, start, end),
                )
                for v in venues
            ]
            # the cursor moves past what was read; the day's bars are all stale
            + [cursor_row(v, d, e, d0[d], now) for (v, d), (_, e) in read.items()]
        )
        wh.replace_many(items)
        written = _written(items)
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
        metadata=display(meta), check_results=_results(outcomes, CHECKS, ASSET)
    )


def _live_ingest(context, s, wh, venues, markets, day, now) -> dg.MaterializeResult:
    """A live run: wait (bounded) for the collector to journal the newest candle's minute,
    then ingest only the journal lines after each venue's cursor; check what was written."""
    import polars as pl

    from pipeline.orderflow import live
    from pipeline.orderflow.checks import flow_checks

    waited = {}
    for v in venues:
        newest = wh.query(
            "SELECT max(open_time) AS t FROM klines_1m WHERE exchange = ? AND open_time >= ?"
            " AND open_time < ?",
            [v, dt.datetime.combine(day, dt.time(), dt.UTC), now],
        )["t"][0]
        if newest is not None:
            through = newest + dt.timedelta(minutes=1)
            waited[v] = live.wait_for_mark(s.home, v, through, MARK_WAIT_S)
    with pool_slot(context):
        ingests = [live.ingest(wh, s.home, v, day, markets, now) for v in venues]
        items = [it for i in ingests for it in i.items]
        wh.replace_many(items)
        written = _written(items)
    new = pl.concat([i.new for i in ingests], how="vertical_relaxed")
    late = {v: w for v, w in waited.items() if w == "timeout"}
    if late:
        context.log.warning(
            f"order flow: the trade collector had not journaled through the newest candle "
            f"after {MARK_WAIT_S:.0f} s ({', '.join(late)}); those minutes come in a later run"
        )
    meta = {"rows_written": written, "new_minutes": new.height, "collector": waited or "no candle"}
    return dg.MaterializeResult(
        metadata=display(meta), check_results=_results(flow_checks(new), CHECKS, ASSET)
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
    from pipeline.orderflow import live
    from pipeline.orderflow.derived import bar_checks, bars
    from warehouse import Replacement

    s, wh = settings.get(), warehouse.get()
    start, end = partition_window(context)
    days = [start.date() + dt.timedelta(days=i) for i in range((end - start).days)]
    venues = list(by_venue(s.markets))
    now = dt.datetime.now(dt.UTC)
    frames = []
    with pool_slot(context):
        if live_start(context) is not None:  # mode=live: the buckets the new minutes changed
            tails = [live.tail_bars(wh, v, days[0], list(s.timeframes), now) for v in venues]
            items = [it for _, part in tails for it in part]
            wh.replace_many(items)
            frames = [f for f, _ in tails if f.height]
        else:
            first, _ = partition_input_window(days[0], s.timeframes)
            first = min(first, start - dt.timedelta(days=1))  # cvd_24h reads the day before
            flow = wh.query(
                f"SELECT {live.FLOW_COLUMNS_READ} FROM order_flow_1m"
                " WHERE open_time >= ? AND open_time < ?",
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
                    offset, stale = live.cursor(wh, v, day)
                    if stale is not None:  # rebuilt whole: nothing of the day is stale now
                        items.append(live.cursor_row(v, day, offset, None, now))
            wh.replace_many(items)
        written = _written(items)
    frame = pl.concat(frames) if frames else bars(_no_flow(), list(s.timeframes), days[0])
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
        metadata=display(meta), check_results=_results(outcomes, BAR_CHECKS, BARS)
    )


def _no_flow():
    import polars as pl

    return pl.DataFrame(
        schema={"exchange": pl.String, "symbol": pl.String,
                "open_time": pl.Datetime("us", "UTC"), "taker_buy_volume": pl.Float64,
                "taker_sell_volume": pl.Float64, "volume_matches": pl.Boolean}
    )  # fmt: skip

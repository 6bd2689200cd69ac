"""`order_flow_1m`: each day's order flow per minute, ingested from the trade collector's
journal (`signalbox trades`, pipeline/orderflow/journal.py), checked against the 1m candles;
`order_flow_bars`: the same on every timeframe (pipeline/orderflow/derived.py).

ONE step (`order_flow`) for both: a live run's new minutes and the bars they change are
written in one transaction (pipeline/orderflow/live.py) for one step's overhead instead of
two. The bars wait for the minutes' blocking checks as a step of their own would: when the
new minutes fail one, the bars are not built (the step fails; the next run rebuilds them).
Either table can still be materialized alone from the UI (`can_subset`)."""

import datetime as dt
from collections.abc import Iterator

import dagster as dg

from assets.common import (
    DAILY,
    KLINES,
    SINGLE_RUN,
    check_result,
    check_specs,
    display,
    handed,
    live_start,
    md_table,
    pool_slot,
    table_spec,
)
from assets.common import window as partition_window
from pipeline.orchestration.resources import SettingsResource, WarehouseResource
from pipeline.orderflow.checks import CHECKS, WARN_ONLY
from pipeline.orderflow.derived import CHECKS as BAR_CHECKS

ASSET = "order_flow_1m"
BARS = "order_flow_bars"
MARK_WAIT_S = 6.0  # a running collector journals a quiet minute 5 s after its end at most


def _spec(name: str, dep: str, text: str) -> dg.AssetSpec:
    # skippable: the bars are left out when the minutes fail a blocking check
    return table_spec(name, text, deps=[dep], group_name="orderflow", skippable=True)


SPECS = [
    _spec(
        ASSET,
        KLINES,
        "Taker buy/sell volume and turnover, trade count, VWAP and the price range of every "
        "minute the trade collector watched whole (its coverage), per (exchange, symbol, "
        "open_time). A minute without a row has no order flow (NULL, never zero). Checked "
        "against the day's 1m candles; a minute that disagrees is stored flagged, never fixed.",
    ),
    _spec(
        BARS,
        ASSET,
        "Order flow on every timeframe's bars: taker buy/sell volume, delta, buy ratio, the CVD "
        "anchored at 00:00 UTC and the rolling 24h CVD, from order_flow_1m's covered minutes "
        "that matched their candle. A bar not covered whole has NULL values (never zero).",
    ),
]


def _written(items: list, table: str) -> int:
    """Rows a write puts in `table` (the journal cursor's row is bookkeeping, not counted)."""
    return sum(it.frame.height for it in items if it.table == table)


def _results(outcomes: dict, names: dict, asset: str) -> list[dg.AssetCheckResult]:
    warn, error = dg.AssetCheckSeverity.WARN, dg.AssetCheckSeverity.ERROR
    return [check_result(n, outcomes[n], asset, warn if n in WARN_ONLY else error) for n in names]


def _blocks(outcomes: dict) -> bool:
    """Whether the minutes failed a check that blocks what is downstream of them (the bars)."""
    return any(not outcomes[n].passed for n in CHECKS if n not in WARN_ONLY)


@dg.multi_asset(
    name="order_flow",
    specs=SPECS,
    check_specs=check_specs(ASSET, CHECKS) + check_specs(BARS, BAR_CHECKS),
    partitions_def=DAILY,
    backfill_policy=SINGLE_RUN,
    pool=None,  # claimed only while reading candles and writing
    can_subset=True,
)
def order_flow(
    context: dg.AssetExecutionContext, settings: SettingsResource, warehouse: WarehouseResource
) -> Iterator[dg.MaterializeResult]:
    from pipeline.markets import by_venue

    s, wh = settings.get(), warehouse.get()
    start, _ = partition_window(context)
    venues = by_venue(s.markets)
    markets = sorted(f"{v}:{sym}" for v, syms in venues.items() for sym in syms)
    selected = {k.to_user_string() for k in context.selected_asset_keys}
    now = dt.datetime.now(dt.UTC)
    if live_start(context) is not None:  # mode=live: what the collector journaled since
        yield from _live(context, s, wh, selected, list(venues), markets, start.date(), now)
        return
    blocked = False
    if ASSET in selected:
        result, outcomes = _whole_minutes(context, s, wh, list(venues), markets, now)
        blocked = _blocks(outcomes)
        yield result
    if BARS in selected and not blocked:
        yield _whole_bars(context, s, wh, list(venues), now)


def _whole_minutes(context, s, wh, venues, markets, now) -> tuple[dg.MaterializeResult, dict]:
    """The partition's days from their journals, whole (the days' bars are all stale after):
    the materialization and its checks' outcomes."""
    import polars as pl

    from pipeline.orderflow import journal
    from pipeline.orderflow.checks import annotate, coverage, flow_checks
    from pipeline.orderflow.live import cursor_row
    from warehouse import Replacement

    start, end = partition_window(context)
    days = [start.date() + dt.timedelta(days=i) for i in range((end - start).days)]
    read = {(v, d): journal.read_from(s.home, v, d, 0) for v in venues for d in days}
    market = pl.concat_str("exchange", pl.lit(":"), "symbol")
    flow = pl.concat([f for f, _ in read.values()]).filter(market.is_in(markets))
    with pool_slot(context), wh.session() as w:
        klines = w.query(
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
        w.replace_many(items)
    outcomes = flow_checks(frame)
    cov = coverage(frame, markets)
    context.log.info(
        f"order flow {start:%Y-%m-%d}→{end:%Y-%m-%d}: {frame.height} covered minute(s) of "
        f"{len(markets)} market(s)"
    )
    meta = {
        "rows_written": _written(items, ASSET),
        "covered_minutes": frame.height,
        "coverage": dg.MetadataValue.md(md_table(cov)),
        "uncovered_markets": ", ".join(cov.filter(pl.col("covered") == 0)["market"]) or "none",
        "flagged_minutes": int(frame.filter(pl.col("volume_matches").not_()).height),
        "journal": str(journal.path(s.home, "<exchange>", start.date()).parent.parent),
    }
    result = dg.MaterializeResult(
        asset_key=ASSET, metadata=display(meta), check_results=_results(outcomes, CHECKS, ASSET)
    )
    return result, outcomes


def _through(context, wh, venue: str, day: dt.date, now: dt.datetime) -> dt.datetime | None:
    """The end of the newest minute of the run: the klines op's `end` the live run was
    launched with; without one, after the newest candle stored (None: there is none)."""
    _, end = handed(context)
    d0 = dt.datetime.combine(day, dt.time(), dt.UTC)
    if end is not None:
        return min(end, d0 + dt.timedelta(days=1))
    newest = wh.query(
        "SELECT max(open_time) AS t FROM klines_1m WHERE exchange = ? AND open_time >= ?"
        " AND open_time < ?",
        [venue, d0, now],
    )["t"][0]
    return None if newest is None else newest + dt.timedelta(minutes=1)


def _live(context, s, wh, selected, venues, markets, day, now) -> Iterator[dg.MaterializeResult]:
    """A live run: wait (bounded) for the collector to journal the run's newest minute, then
    ingest only the journal lines after each venue's cursor and rebuild the buckets they
    change, in one transaction; check what was written."""
    import polars as pl

    from pipeline.orderflow import live
    from pipeline.orderflow.checks import flow_checks

    minutes, bars = ASSET in selected, BARS in selected
    waited = {}
    for v in venues if minutes else []:
        through = _through(context, wh, v, day, now)
        if through is not None:
            waited[v] = live.wait_for_mark(s.home, v, through, MARK_WAIT_S)
    tfs = list(s.timeframes) if bars else None
    with pool_slot(context), wh.session() as w:
        steps = [live.advance(w, s.home, v, day, markets, tfs, now, ingest=minutes) for v in venues]
        new = pl.concat([st.new for st in steps], how="vertical_relaxed")
        outcomes = flow_checks(new)
        blocked = minutes and _blocks(outcomes)
        items = [it for st in steps for it in (st.minutes_only() if blocked else st.items)]
        w.replace_many(items)
    if minutes:
        late = {v: x for v, x in waited.items() if x == "timeout"}
        if late:
            context.log.warning(
                f"order flow: the trade collector had not journaled through the newest candle "
                f"after {MARK_WAIT_S:.0f} s ({', '.join(late)}); those minutes come in a later run"
            )
        meta = {
            "rows_written": _written(items, ASSET),
            "new_minutes": new.height,
            "collector": waited or "no candle",
        }
        yield dg.MaterializeResult(
            asset_key=ASSET,
            metadata=display(meta),
            check_results=_results(outcomes, CHECKS, ASSET),
        )
    if bars and not blocked:
        frames = [st.bars for st in steps if st.bars is not None and st.bars.height]
        yield _bars_result(frames, list(s.timeframes), day, _written(items, BARS))


def _whole_bars(context, s, wh, venues, now) -> dg.MaterializeResult:
    """Every bar the partition's days own, from their minutes (and the day before's)."""
    import polars as pl

    from pipeline.candles.timeframes import owned_where, partition_input_window
    from pipeline.orderflow import live
    from pipeline.orderflow.derived import bars
    from warehouse import Replacement

    start, end = partition_window(context)
    days = [start.date() + dt.timedelta(days=i) for i in range((end - start).days)]
    frames = []
    with pool_slot(context), wh.session() as w:
        first, _ = partition_input_window(days[0], s.timeframes)
        first = min(first, start - dt.timedelta(days=1))  # cvd_24h reads the day before
        flow = w.query(
            f"SELECT {live.FLOW_COLUMNS_READ} FROM order_flow_1m"
            " WHERE open_time >= ? AND open_time < ? ORDER BY exchange, symbol, open_time",
            [first, end],  # sorted as bars() sorts: polars re-sorting sorted rows is cheap
        )
        items = []
        for day in days:
            frame = bars(flow, list(s.timeframes), day)
            frames.append(frame)
            for v in venues:
                where, params = owned_where(day, v)
                mine = frame.filter(pl.col("exchange") == v)
                items.append(Replacement(BARS, mine, where, tuple(params)))
                offset, stale = live.cursor(w, v, day)
                if stale is not None:  # rebuilt whole: nothing of the day is stale now
                    items.append(live.cursor_row(v, day, offset, None, now))
        w.replace_many(items)
    return _bars_result(frames, list(s.timeframes), days[0], _written(items, BARS))


def _bars_result(frames: list, timeframes: list[str], day: dt.date, written: int):
    """The bars' materialization: what was written, checked."""
    import polars as pl

    from pipeline.orderflow.derived import bar_checks, bars

    frame = pl.concat(frames) if frames else bars(_no_flow(), timeframes, day)
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
        asset_key=BARS,
        metadata=display(meta),
        check_results=_results(outcomes, BAR_CHECKS, BARS),
    )


def _no_flow():
    import polars as pl

    return pl.DataFrame(
        schema={"exchange": pl.String, "symbol": pl.String,
                "open_time": pl.Datetime("us", "UTC"), "taker_buy_volume": pl.Float64,
                "taker_sell_volume": pl.Float64, "volume_matches": pl.Boolean}
    )  # fmt: skip

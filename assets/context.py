"""`funding_rates`, `open_interest_5m`, `spot_klines_1m`: the market context beside the 1m
candles (issue 16), per UTC day, from ONE step (pipeline/context/ingest.py).

In the `ingest` group, so the backfill job fills them and the live job keeps them current:
a live-sensor run ingests the spot candles of the very minutes it ingests of the perpetual
(its klines op config), so a signal at a bar's close can see that minute's spot close;
funding and open interest are asked only when a value is due.

Blocking checks, except in the live sensor's runs: there a failed check (or an exchange that
fails the context's requests) is recorded as a WARNING and the run goes on, because failing
it would re-run the candle ingestion up to five times a minute and keep failing while the
exchange keeps sending the same rows. The day is checked again, blocking, by every other run
of the partition: the daily repair shortly after midnight, a gap repair, a backfill.
`coverage` states how much of the day is there and is only ever a warning.
"""

import datetime as dt

import dagster as dg

from assets.common import (
    DAILY,
    SINGLE_RUN,
    check_result,
    check_specs,
    display,
    handed,
    md_table,
    parse_time,
    pool_slot,
    table_spec,
)
from assets.common import window as partition_window
from pipeline.context.checks import CHECKS, WARN_ONLY
from pipeline.orchestration import tags
from pipeline.orchestration.resources import (
    ExchangeResource,
    SettingsResource,
    WarehouseResource,
)

DESCRIPTIONS = {
    "funding_rates": "Funding rate history (/v5/market/funding/history) settled in the day, "
    "on each market's funding grid (the interval its exchange states: 8 h for most Bybit "
    "perpetuals, 1, 2 or 4 h for some); known_at = funding_time.",
    "open_interest_5m": "Open interest every 5 minutes (/v5/market/open-interest, "
    "intervalTime=5min) in base coin; known_at = time + 5 min.",
    "spot_klines_1m": "Closed 1-minute spot candles (category=spot) of each perpetual's base "
    "asset, keyed by the perpetual's symbol and in its units (1000PEPEUSDT: PEPEUSDT's "
    "prices x 1000): the spot leg of the spot-perp basis. The pair and multiplier of each "
    "market are in the `spot_legs` metadata.",
}
SPECS = [table_spec(name, text, group_name="ingest") for name, text in DESCRIPTIONS.items()]


@dg.multi_asset(
    name="market_context",
    specs=SPECS,
    check_specs=[spec for name, checks in CHECKS.items() for spec in check_specs(name, checks)],
    partitions_def=DAILY,
    backfill_policy=SINGLE_RUN,
    pool=None,  # claimed only while reading and writing
    can_subset=True,  # one table from the UI; a live run leaves out what was not due
)
def market_context(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    exchange: ExchangeResource,
    warehouse: WarehouseResource,
):
    from pipeline.context.checks import context_checks
    from pipeline.context.ingest import fetch_context, newest_in
    from pipeline.context.tables import SPOT, TABLES
    from pipeline.markets import by_venue

    s, ep, wh = settings.get(), exchange.source(), warehouse.get()
    p_start, p_end = partition_window(context)
    ops = (context.run.run_config or {}).get("ops", {})
    first, last_minute = handed(context)
    follow = tags.from_sensor(context.run.tags)
    # The live sensor hands its runs the close of the newest candle (the signals' clock): a
    # request less per minute. Any other run asks the slowest venue, as klines_1m does.
    clock = parse_time(ops.get("signals", {}).get("config", {}).get("exchange_now"))
    exchange_now = clock if follow and clock else None
    exchange_now = exchange_now or min(
        exchange.client(v).server_time() for v in by_venue(s.markets)
    )
    closed_by = exchange_now.replace(second=0, microsecond=0)
    start = max(p_start, first or p_start)
    end = max(start, min(p_end, last_minute or p_end, closed_by))
    last, legs = _previous(context, p_start, p_end) if follow else (None, None)
    selected = {k.to_user_string() for k in context.selected_asset_keys}
    tables = tuple(t for t in TABLES if t.name in selected)
    summary, items = fetch_context(
        wh, s, ep, start, end, closed_by=closed_by, day=p_start, follow=follow, newest=last,
        read_guard=lambda: pool_slot(context), tables=tables, legs=legs,
    )  # fmt: skip
    for key, why in {**summary.unsupported, **summary.failed}.items():
        context.log.warning(f"market context {key}: {why}")
    markets = [str(m) for m in s.markets]
    with pool_slot(context), wh.session() as w:  # one connection: the write, then the day
        if items:
            w.replace_many(items)
        stored = {
            t.name: w.query(
                f"SELECT * FROM {t.name} WHERE {t.time} >= ? AND {t.time} < ?", [p_start, p_end]
            )
            for t in TABLES
        }
        perp = w.query(
            "SELECT exchange, symbol, open_time, close FROM klines_1m"
            " WHERE open_time >= ? AND open_time < ? AND close_time <= ?",
            [p_start, p_end, closed_by],
        )
    venues = by_venue(s.markets)
    newest = {v: newest_in(stored, v, syms, summary.legs.get(v)) for v, syms in venues.items()}
    for table in tables:
        if follow and summary.fetched.get(table.name) == "not due":
            continue  # nothing changed: no materialization, no check events (a live run's cost)
        frame = stored[table.name]
        outcomes = context_checks(
            frame, table, exchange_now, markets, p_start, perp if table is SPOT else None, p_end,
            summary.intervals(),
        )  # fmt: skip
        warn, error = dg.AssetCheckSeverity.WARN, dg.AssetCheckSeverity.ERROR
        results = [
            check_result(name, outcome, table.name, warn if follow or name in WARN_ONLY else error)
            for name, outcome in outcomes.items()
        ]
        mine = [k for k in {**summary.unsupported, **summary.failed} if k.endswith(table.name)]
        meta = {
            "rows_written": summary.rows.get(table.name, 0),
            "fetched": summary.fetched.get(table.name, "nothing"),
            "partition_rows": frame.height,
            "exchange_time": exchange_now.isoformat(),
            "source": ep.label,
            "checks_block": "no (live-sensor run: warnings)" if follow else "yes",
        }
        if table is SPOT:  # where the next live run of the day goes on from, with what legs
            meta["newest"] = dg.MetadataValue.json(
                {v: {k: t and t.isoformat() for k, t in n.items()} for v, n in newest.items()}
            )
            meta["spot_legs"] = dg.MetadataValue.json(
                {v: {s: g.as_json() for s, g in d.items()} for v, d in summary.legs.items()}
            )
        if mine:
            meta["not_supplied"] = dg.MetadataValue.md(
                md_table(_reasons(mine, summary.unsupported, summary.failed))
            )
        yield dg.MaterializeResult(
            asset_key=table.name, metadata=display(meta), check_results=results
        )


def _previous(
    context: dg.AssetExecutionContext, p_start: dt.datetime, p_end: dt.datetime
) -> tuple[dict | None, dict | None]:
    """What the day's previous run found stored (its `newest` metadata), or None (then the
    warehouse is read): also when a time lies outside the day (a backfill over several days
    records the range's newest on each of them); and the legs it used (`spot_legs`, None:
    the instruments are listed again)."""
    from pipeline.context.ingest import DUE
    from pipeline.context.legs import Leg

    found = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("spot_klines_1m"), asset_partitions=[context.partition_key]
        ),
        limit=1,
    ).records
    mat = found[0].asset_materialization if found else None
    value = mat.metadata.get("newest") if mat else None
    stated = mat.metadata.get("spot_legs") if mat else None
    legs = stated and {
        v: {s: Leg.from_json(g) for s, g in d.items()} for v, d in stated.value.items()
    }
    if value is None:
        return None, legs
    newest = {
        v: {k: t and dt.datetime.fromisoformat(t) for k, t in tables.items()}
        for v, tables in value.value.items()
    }
    times = [t for n in newest.values() for k, t in n.items() if t is not None and k != DUE]
    return (newest if all(p_start <= t < p_end for t in times) else None), legs


def _reasons(keys: list[str], unsupported: dict[str, str], failed: dict[str, str]):
    import polars as pl

    return pl.DataFrame(
        {
            "venue:table": keys,
            "why": [
                f"unsupported: {unsupported[k]}" if k in unsupported else f"failed: {failed[k]}"
                for k in keys
            ],
        }
    )

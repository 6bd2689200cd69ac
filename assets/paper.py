"""`paper_trades`: the paper bots' journals (pipeline/bots) ingested into the warehouse.

The bots never open the warehouse (DuckDB has one writer: the pipeline); they journal to
files in the home, and this asset, requested by the `paper_journals` sensor whenever a
journal grew, writes what is new into `paper_trades` and `paper_equity` together with the
ingest cursor, in one transaction (pipeline/bots/ingest.py). The UI shows each bot's equity,
open positions, trades and fees in the metadata; two blocking checks prove the rows are the
journals, whole.

`paper_vs_backtest`: per bot and UTC day, every market of the bot backtested over the same
candles and signals and matched trade for trade (pipeline/bots/reconcile.py), an HTML report
per bot and day (pipeline/bots/report.py) linked from the metadata. The `paper_reconcile`
schedule runs it for yesterday with `paper_trades` first in the same run.
"""

import datetime as dt

import dagster as dg

from assets.common import (
    DAILY,
    OWNERS,
    check_result,
    check_specs,
    display,
    md_table,
    pool_slot,
    window,
)
from pipeline.orchestration.resources import SettingsResource, WarehouseResource

CHECKS = {
    "journal_complete": "Every bot's ingested journal entries are numbered 0..n-1 with none "
    "missing or doubled (rows of paper_trades + paper_equity = the ingest cursor).",
    "fills_have_orders": "Every fill and exit refers to an order the bot recorded when its "
    "signal line arrived.",
}


@dg.asset(
    pool="duckdb",
    group_name="paper",
    owners=OWNERS,
    kinds={"duckdb"},
    description="The paper bots' orders, fills, exits and equity, from their journals.",
    check_specs=check_specs("paper_trades", CHECKS),
    metadata={"tables": "paper_trades, paper_equity"},
)
def paper_trades(
    context: dg.AssetExecutionContext, settings: SettingsResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    import datetime as dt

    import polars as pl

    from pipeline.bots.ingest import batch
    from pipeline.bots.store import summary
    from pipeline.quality.checks import CheckOutcome
    from warehouse import Replacement

    s, wh = settings.get(), warehouse.get()
    with pool_slot(context), wh.session() as w:
        cursors = {
            r[0]: (int(r[1]), int(r[2]))
            for r in w.query("SELECT bot, bytes, n FROM paper_ingest").iter_rows()
        }
        items, ingested = [], {}
        for bot in s.bots:
            b = batch(s.home, bot.name, cursors.get(bot.name, (0, 0)))
            if b is None:
                continue
            if b.restart:
                where, params = "bot = ?", (b.bot,)
            else:
                where, params = "bot = ? AND n >= ?", (b.bot, b.start[1])
            cursor = pl.DataFrame(
                {"bot": [b.bot], "bytes": [b.end[0]], "n": [b.end[1]]},
            ).with_columns(ingested_at=pl.lit(dt.datetime.now(dt.UTC)))
            items += [
                Replacement("paper_trades", b.trades, where, params),
                Replacement("paper_equity", b.equity, where, params),
                Replacement("paper_ingest", cursor, "bot = ?", (b.bot,)),
            ]
            ingested[b.bot] = b.trades.height + b.equity.height
        w.replace_many(items)
        counts = w.query(
            "WITH r AS (SELECT bot, n FROM paper_trades UNION ALL SELECT bot, n FROM paper_equity)"
            " SELECT i.bot, i.n, count(r.n) AS rows, coalesce(max(r.n), -1) + 1 AS top"
            " FROM paper_ingest i LEFT JOIN r USING (bot) GROUP BY ALL"
        )
        orphans = w.query(
            "SELECT f.bot, f.n, f.kind, f.seq FROM paper_trades f WHERE f.kind IN ('fill', 'exit')"
            " AND NOT EXISTS (SELECT 1 FROM paper_trades o WHERE o.bot = f.bot"
            " AND o.kind = 'order' AND o.seq = f.seq)"
        )
        totals = w.query(
            "SELECT bot, count(*) FILTER (kind = 'fill') AS fills,"
            " count(*) FILTER (kind = 'exit') AS exits, sum(pnl) AS realised_pnl,"
            " sum(fees) FILTER (kind = 'fill') AS entry_fees FROM paper_trades GROUP BY bot"
        )
    bad = counts.filter((pl.col("rows") != pl.col("n")) | (pl.col("top") != pl.col("n")))
    complete = CheckOutcome(
        bad.is_empty(),
        "every journal entry ingested once"
        if bad.is_empty()
        else f"{bad.height} bot(s) with missing or doubled journal entries",
        {"bots": md_table(counts)},
    )
    linked = CheckOutcome(
        orphans.is_empty(),
        "every fill and exit has its order"
        if orphans.is_empty()
        else f"{orphans.height} fill(s)/exit(s) without an order",
        {"orphans": md_table(orphans.head(20))},
    )
    bots = pl.DataFrame(
        [
            {
                "bot": b["name"],
                "equity": b.get("equity"),
                "open": ", ".join(f"{m} {p['side']}" for m, p in (b.get("positions") or {}).items())
                or "flat",
                "halted": b.get("why") or "",
                "heartbeat_age_s": b.get("heartbeat_age_s"),
            }
            for b in (summary(s.home, bot.name) for bot in s.bots)
        ],
        infer_schema_length=None,
    )
    meta = {
        "rows_ingested": sum(ingested.values()),
        "bots": md_table(bots) if s.bots else md_table(None),
        "totals": md_table(totals),
    }
    return dg.MaterializeResult(
        metadata=display(meta),
        check_results=[
            check_result("journal_complete", complete, "paper_trades"),
            check_result("fills_have_orders", linked, "paper_trades"),
        ],
    )


DCA_NOTE = "not reconciled: a DCA bot accumulates, and the backtest engine has no accumulation mode"
RECONCILE_CHECKS = {
    "reconciled": "Every bot's trades that day match the backtest's one to one or each "
    "difference is explained, and the unexplained equity gap is within the bot's "
    "reconcile_tolerance (where the shared account can be reproduced: see the bot's note).",
}


@dg.asset(
    partitions_def=DAILY,
    deps=[paper_trades, dg.AssetDep("signals", partition_mapping=dg.AllPartitionMapping())],
    pool="duckdb",
    group_name="paper",
    owners=OWNERS,
    kinds={"duckdb", "numba"},
    description="Per bot and UTC day: the backtest over the same candles and signals on each "
    "of its markets, trades matched one to one, every difference explained where it can be, "
    "the equity gap; an HTML report per bot.",
    check_specs=check_specs("paper_vs_backtest", RECONCILE_CHECKS),
)
def paper_vs_backtest(
    context: dg.AssetExecutionContext, settings: SettingsResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    import base64

    import polars as pl

    from pipeline.backtest.params import ParamError
    from pipeline.bots.config import bot_markets
    from pipeline.bots.reconcile import reconcile
    from pipeline.bots.report import figures, report_path, write_paper_report
    from pipeline.quality.checks import CheckOutcome, Markdown

    s, wh = settings.get(), warehouse.get()
    start, end = window(context)
    day = start.date().isoformat()
    rows, diffs, plots, failing = [], [], [], []
    links: dict[str, dg.MetadataValue] = {}
    with wh.session() as w:
        for bot in s.bots:
            if bot.dca is not None:
                rows.append({"bot": bot.name, "verdict": DCA_NOTE})
                continue
            paper = w.query(
                "SELECT * FROM paper_trades WHERE bot = ? AND time < ?", [bot.name, end]
            )
            equity = w.query(
                "SELECT * FROM paper_equity WHERE bot = ? AND time <= ?", [bot.name, end]
            )
            if equity.is_empty() or equity["time"].max() <= start:
                rows.append({"bot": bot.name, "verdict": "no paper equity that day"})
                continue
            first = equity["time"].min() - dt.timedelta(minutes=1)
            closed = equity["time"].max() >= end
            markets = {
                m: _market_inputs(w, m, bot, first, end) for m in bot_markets(bot, s.markets)
            }
            params = bot.backtest_params(s.backtest.params)
            try:
                rec = reconcile(bot.name, start.date(), markets, paper, equity, params)
            except ParamError as err:
                failing.append(bot.name)
                rows.append({"bot": bot.name, "verdict": f"cannot backtest: {err}"})
                continue
            fig = figures(rec, bot.reconcile_tolerance)
            if not closed:
                fig["verdict"] += (
                    f" (the bot's ingested journal ends at {equity['time'].max():%H:%M}, before "
                    "the day's end: what it did later is not in yet)"
                )
            if rec.failure(bot.reconcile_tolerance):
                failing.append(bot.name)
            rows.append({"bot": bot.name, **fig, "note": rec.equity_note or ""})
            diffs += [{"bot": bot.name, **d} for d in rec.differences]
            paths = write_paper_report(
                rec,
                report_path(s.reports_dir, bot.name, day),
                bot.reconcile_tolerance,
                params,
                bot.personality,
            )
            links[f"{bot.name}_report"] = dg.MetadataValue.url(s.report_url(paths["html"]))
            links[f"{bot.name}_report_path"] = dg.MetadataValue.path(str(paths["html"]))
            if "equity" in paths:
                data = base64.b64encode(paths["equity"].read_bytes()).decode()
                plots.append(f"![{bot.name}](data:image/png;base64,{data})")
    table = md_table(pl.DataFrame(rows, infer_schema_length=None) if rows else None)
    outcome = CheckOutcome(
        not failing,
        "every bot reconciles with the backtest"
        if not failing
        else f"not reconciled (see each bot's verdict): {', '.join(failing)}",
        {"bots": table},
    )
    meta = {
        "bots": table,
        "differences": md_table(
            pl.DataFrame(diffs, infer_schema_length=None).head(50) if diffs else None
        ),
        "equity_curves": Markdown("\n\n".join(plots) or "(none)"),
    }
    return dg.MaterializeResult(
        metadata={**display(meta), **links},
        check_results=[check_result("reconciled", outcome, "paper_vs_backtest")],
    )


def _market_inputs(w, market: str, bot, first: dt.datetime, end: dt.datetime) -> tuple:
    """One market's 1m candles and the bot's signals on it, from its first bar to `end`."""
    import polars as pl

    exchange, _, symbol = market.partition(":")
    candles = w.query(
        "SELECT open_time, open, high, low, close FROM klines_1m WHERE exchange = ?"
        " AND symbol = ? AND open_time >= ? AND open_time < ? ORDER BY open_time",
        [exchange, symbol, first, end],
    )
    signals = w.query(
        "SELECT close_time, action, confidence, quality, timeframe FROM signals"
        " WHERE exchange = ? AND symbol = ? AND personality = ? AND close_time >= ?"
        " AND close_time < ? ORDER BY close_time",
        [exchange, symbol, bot.personality, first, end],
    )
    if bot.timeframes:
        signals = signals.filter(pl.col("timeframe").is_in(bot.timeframes))
    return candles, signals

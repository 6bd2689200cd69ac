"""One paper bot's day against its backtest as a self-contained HTML page (and its chart),
written beside the backtest reports and served by the same reports server.

The page is the backtest report's (pipeline/backtest/report.py: page, tables, formatting,
chart embedding): the verdict against the tolerance, the equity figures, both equity curves,
every trade of the day with what differs and why.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.backtest.params import BacktestParams
    from pipeline.bots.reconcile import Reconciliation


def report_path(reports_dir: Path, bot: str, day: str) -> Path:
    """<reports>/paper/paper_<bot>_<day>/report.html, beside the backtests' reports."""
    from pipeline.backtest.report import report_dir

    return report_dir(reports_dir, f"paper:{bot}:{day}") / "report.html"


def curves_chart(rec: Reconciliation) -> bytes:
    """Both equity curves of the day (the bot's has gaps where it was down), the bot's drawn
    last so it shows where the two are equal."""
    from pipeline.backtest.plots import curves_png

    c = rec.curves
    assert c is not None and c.height
    names = [n for n in c.columns if n not in ("time", "paper")] + ["paper"]
    series = {name: c[name].cast(float).to_numpy() for name in names}
    title = f"{rec.bot}: paper vs backtest equity, {rec.day}"
    return curves_png(c["time"].dt.epoch("us").to_numpy(), series, title)


def figures(rec: Reconciliation, tolerance: float) -> dict[str, Any]:
    """The day's figures, as the asset's metadata and the page show them."""
    return {
        "verdict": rec.failure(tolerance) or "reconciled",
        "markets": ", ".join(rec.markets),
        "matched": rec.matched,
        "differences": len(rec.differences),
        "unexplained_trades": rec.unexplained_trades,
        "paper_equity": rec.paper_equity,
        "backtest_equity": rec.backtest_equity,
        "equity_gap": rec.equity_gap,
        "explained_pnl": None if rec.equity_gap is None else rec.explained_pnl,
        "unexplained_gap": rec.unexplained_gap,
        "tolerance": tolerance,
        "fees_paper": rec.fees_paper,
        "fees_backtest": rec.fees_backtest,
    }


def write_paper_report(
    rec: Reconciliation, path: Path, tolerance: float, params: BacktestParams, personality: str
) -> dict[str, Path]:
    """Write the page to `path` and its chart beside it (equity.png); {name: path}."""
    import polars as pl

    from pipeline.backtest.report import fmt, img_html, page_html, table_html

    path.parent.mkdir(parents=True, exist_ok=True)
    out = {"html": path}
    body = [
        f"<p class='muted'>{html.escape(personality)} signals on "
        f"{html.escape(', '.join(rec.markets))}, UTC day {rec.day}; the backtest runs the "
        f"same candles and signals from the bot's first bar with its parameters (taker fee "
        f"{params.taker:.4%}, slippage {params.slippage_bps:g} bp, sizing "
        f"{html.escape(params.sizing)}).</p>",
        "<h2>Verdict</h2>",
        "<table>"
        + "".join(
            f"<tr><td>{html.escape(k.replace('_', ' '))}</td><td>{html.escape(fmt(v))}</td></tr>"
            for k, v in figures(rec, tolerance).items()
        )
        + "</table>",
    ]
    if rec.equity_note:
        body.append(f"<p id='equity-note'>{html.escape(rec.equity_note)}</p>")
    if rec.curves is not None and rec.curves.height:
        chart = curves_chart(rec)
        out["equity"] = path.with_name("equity.png")
        out["equity"].write_bytes(chart)
        body += [
            "<h2>Equity curves</h2>",
            img_html("equity", chart, "paper and backtest equity curves"),
        ]
    trades = pl.DataFrame(rec.trades, infer_schema_length=None)
    body += [
        f"<h2>Trades ({rec.matched} matched, {len(rec.differences)} different)</h2>",
        table_html(trades.with_row_index("no", offset=1)) if rec.trades else "<p>none</p>",
    ]
    path.write_text(page_html(f"Paper bot {rec.bot} vs backtest, {rec.day}", body), "utf-8")
    return out

"""A self-contained HTML report per run, its summary (JSON beside it), and that summary as a
markdown table for the Dagster UI and as a text table for the terminal.

The HTML embeds its charts as PNG data URIs and has no scripts or external links, so it can be
mailed, attached to an asset's metadata or opened from disk anywhere and look the same. Its
tables fit a 1280 px wide window: long tables wrap their headers, never the page.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.backtest import metrics

if TYPE_CHECKING:
    import polars as pl

    from pipeline.backtest.result import BacktestResult

MAX_TRADE_ROWS = 500
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")

# (section, [(metric key, label, unit)]) — the order people read a report in.
SECTIONS: list[tuple[str, list[tuple[str, str, str]]]] = [
    (
        "Window",
        [
            ("start", "Start", ""),
            ("end", "End", ""),
            ("duration_days", "Duration", "days"),
            ("complete_candles_pct", "Complete candles", "%"),
            ("missing_minutes", "Missing minutes", ""),
            ("signals", "Signals", ""),
            ("degraded_signals", "Degraded signals", ""),
            ("signals_expired", "Expired signals", ""),
        ],
    ),
    (
        "Returns",
        [
            ("starting_equity", "Starting equity", ""),
            ("final_equity", "Final equity", ""),
            ("total_return_pct", "Total return", "%"),
            ("cagr_pct", "CAGR", "%"),
            ("buy_hold_return_pct", "Buy & hold return", "%"),
            ("return_ann_pct", "Return (ann.)", "%"),
            ("volatility_ann_pct", "Volatility (ann.)", "%"),
        ],
    ),
    (
        "Risk",
        [
            ("sharpe", "Sharpe", ""),
            ("sortino", "Sortino", ""),
            ("calmar", "Calmar", ""),
            ("max_drawdown_pct", "Max drawdown", "%"),
            ("max_drawdown_duration_days", "Max drawdown duration", "days"),
            ("avg_drawdown_pct", "Avg drawdown", "%"),
            ("max_time_underwater_days", "Max time underwater", "days"),
            ("exposure_pct", "Exposure time", "%"),
            ("liquidations", "Liquidations", ""),
        ],
    ),
    (
        "Trades",
        [
            ("trades", "Trades", ""),
            ("trades_long", "Long", ""),
            ("trades_short", "Short", ""),
            ("win_rate_pct", "Win rate", "%"),
            ("win_rate_long_pct", "Win rate long", "%"),
            ("win_rate_short_pct", "Win rate short", "%"),
            ("profit_factor", "Profit factor", ""),
            ("expectancy", "Expectancy (P&L per trade)", ""),
            ("expectancy_pct", "Avg trade return", "%"),
            ("sqn", "SQN", ""),
            ("avg_win", "Avg win", ""),
            ("avg_loss", "Avg loss", ""),
            ("avg_win_loss_ratio", "Avg win / avg loss", ""),
            ("best_trade_pct", "Best trade", "%"),
            ("worst_trade_pct", "Worst trade", "%"),
            ("avg_trade_duration_minutes", "Avg trade duration", "min"),
            ("max_consecutive_wins", "Max consecutive wins", ""),
            ("max_consecutive_losses", "Max consecutive losses", ""),
            ("both_touched", "Bars touching stop and target (stop assumed)", ""),
        ],
    ),
    ("Costs", [("fees_paid", "Fees paid", ""), ("slippage_paid", "Slippage paid", "")]),
]

SUMMARY_KEYS = (
    "total_return_pct",
    "buy_hold_return_pct",
    "cagr_pct",
    "sharpe",
    "sortino",
    "calmar",
    "max_drawdown_pct",
    "trades",
    "win_rate_pct",
    "profit_factor",
    "expectancy",
    "fees_paid",
    "both_touched",
    "complete_candles_pct",
    "degraded_signals",
)

# Headline figures of the terminal summary (freqtrade's order: trades, results, risk, costs).
TEXT_KEYS = (
    "trades",
    "win_rate_pct",
    "total_return_pct",
    "buy_hold_return_pct",
    "final_equity",
    "max_drawdown_pct",
    "sharpe",
    "sortino",
    "calmar",
    "profit_factor",
    "expectancy",
    "fees_paid",
    "complete_candles_pct",
    "signals",
)
ANNUALISED = {"sharpe", "sortino", "calmar"}

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:16px;
color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:6px 0;max-width:100%}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f4f4f4;font-weight:600}td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}.grid table{flex:0 0 auto}
.wide td{white-space:nowrap}.wide th{white-space:normal}
img{max-width:100%;border:1px solid #eee;display:block;margin:8px 0}
.muted{color:#777;font-size:12px}
"""


def fmt(v: Any, unit: str = "") -> str:
    """Human formatting: thousands separators, 2-4 decimals, no 'None'."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M")
    if isinstance(v, float) and not math.isfinite(v):
        return "–"
    if isinstance(v, int):
        s = f"{v:,}"
    elif isinstance(v, float):
        s = f"{v:,.2f}" if abs(v) >= 1 or v == 0 or unit == "%" else f"{v:.4g}"
    elif isinstance(v, str) and _ISO.match(v):
        return fmt(dt.datetime.fromisoformat(v))
    else:
        s = str(v)
    return f"{s} {unit}".strip() if unit and unit != "%" else s + ("%" if unit == "%" else "")


def report_dir(reports_dir: Path, run_id: str) -> Path:
    """Where a run's report goes: <reports>/<personality>/<run id, ':' -> '_'>."""
    return reports_dir / run_id.split(":", 1)[0] / run_id.replace(":", "_")


def rounded(v: Any) -> Any:
    """A number for display (Dagster metadata): 2 decimals from 1 up, else 4 significant
    digits; NaN and infinities become None; anything else as it is."""
    if isinstance(v, bool) or not isinstance(v, float):
        return v
    if not math.isfinite(v):
        return None
    return round(v, 2) if abs(v) >= 1 else float(f"{v:.4g}")


def table_html(frame: pl.DataFrame, limit: int | None = None) -> str:
    rows = frame.rows() if limit is None else frame.head(limit).rows()
    # Headers wrap at underscores (e.g. "entry_price" -> "entry price") so wide tables fit.
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in r) + "</tr>" for r in rows
    )
    return f"<table class='wide'><tr>{head}</tr>{body}</table>"


def title(res: BacktestResult, timeframes: Sequence[str] | None = None) -> str:
    """E.g. "Backtest swing on BTCUSDT (15m, 1h)": the personality's timeframes, else the
    signals' (none for a run without signals and timeframes)."""
    tfs = ", ".join(timeframes) if timeframes else res.timeframe
    return f"Backtest {res.personality} on {res.symbol}" + (f" ({tfs})" if tfs != "-" else "")


def img_html(name: str, data: bytes, alt: str) -> str:
    """A chart embedded as a PNG data URI (the render tests find it by class `chart`)."""
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    return f'<img id="{name}" class="chart" alt="{html.escape(alt)}" src="{uri}">'


def report_html(
    res: BacktestResult,
    charts: dict[str, bytes],
    walk_forward: pl.DataFrame | None = None,
    timeframes: Sequence[str] | None = None,
) -> str:
    """The report page as one string."""
    m = res.metrics
    parts = [
        f"<p class='muted'>{html.escape(fmt(m.get('start')))} to "
        f"{html.escape(fmt(m.get('end')))} UTC, 1m fills at the next bar's open, "
        f"taker fee {res.params.taker:.4%}, maker fee {res.params.maker:.4%}, slippage "
        f"{res.params.slippage_bps:g} bp.</p>",
        "<h2>Charts</h2>",
        img_html("equity", charts["equity"], "equity curve against buy-and-hold"),
        img_html("drawdown", charts["drawdown"], "drawdown (underwater) curve"),
        img_html("candles", charts["candles"], "candlesticks with entries and exits"),
        "<h2>Metrics</h2><div class='grid'>",
    ]
    for section, items in SECTIONS:
        rows = "".join(
            f"<tr><td>{html.escape(label)}</td><td>{html.escape(fmt(m.get(key), unit))}</td></tr>"
            for key, label, unit in items
        )
        parts.append(f"<table><tr><th colspan='2'>{section}</th></tr>{rows}</table>")
    parts.append("</div>")
    tables = metrics.tables(res)
    for name, heading in (
        ("by_exit_reason", "By exit reason"),
        ("by_month", "By month"),
        ("by_confidence", "By confidence bucket"),
    ):
        parts += [f"<h2>{heading}</h2>", table_html(tables[name])]
    if walk_forward is not None and walk_forward.height:
        parts += ["<h2>Walk-forward (out-of-sample folds)</h2>", table_html(walk_forward)]
    # the trade columns up to its confidence; the rest are diagnostics (bars, stop, target)
    trades = res.trades[:, : res.trades.get_column_index("confidence") + 1]
    shown = min(trades.height, MAX_TRADE_ROWS)
    parts += [
        f"<h2>Trades ({trades.height}"
        + (f", first {shown} shown" if shown < trades.height else "")
        + ")</h2>",
        table_html(trades.with_row_index("no", offset=1), MAX_TRADE_ROWS),
        "<h2>Parameters</h2>",
        "<table>"
        + "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(fmt(v))}</td></tr>"
            for k, v in res.params.to_dict().items()
        )
        + "</table>",
    ]
    return page_html(title(res, timeframes), parts)


def page_html(head: str, body: list[str]) -> str:
    """A self-contained page titled `head` (title and h1) around the `body` parts."""
    return "\n".join(
        [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<title>{html.escape(head)}</title><style>{CSS}</style></head><body>",
            f"<h1>{html.escape(head)}</h1>",
            *body,
            "</body></html>",
        ]
    )


def write_report(
    res: BacktestResult,
    out_dir: str | Path,
    *,
    period: tuple[dt.datetime, dt.datetime] | None = None,
    walk_forward: pl.DataFrame | None = None,
    timeframes: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write equity.png, drawdown.png, candles.png, report.html and summary.json (what the
    terminal and the Dagster UI show, see `summary`) into `out_dir`.

    `period` picks the candlestick chart's span (default: two days up to the last exit);
    `timeframes` (the personality's) name the report. Returns {name: path}.
    """
    from pipeline.backtest import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    charts = {
        "equity": plots.equity_png(res),
        "drawdown": plots.drawdown_png(res),
        "candles": plots.candles_png(res, period),
    }
    paths: dict[str, Path] = {}
    for name, data in charts.items():
        paths[name] = out / f"{name}.png"
        paths[name].write_bytes(data)
    paths["html"] = out / "report.html"
    paths["html"].write_text(report_html(res, charts, walk_forward, timeframes), encoding="utf-8")
    paths["summary"] = out / "summary.json"
    paths["summary"].write_text(
        json.dumps(summary(res, timeframes, paths["html"]), indent=1), encoding="utf-8"
    )
    return paths


def summary(
    res: BacktestResult, timeframes: Sequence[str] | None = None, html_path: Path | None = None
) -> dict[str, Any]:
    """What a run shows outside its report: title, metrics, trades by exit reason, the
    report's path (JSON-able; the CLI reads it back from summary.json)."""
    return {
        "title": title(res, timeframes),
        "personality": res.personality,
        "symbol": res.symbol,
        "timeframes": list(timeframes or [res.timeframe]),
        "metrics": res.metrics,
        "by_exit_reason": metrics.tables(res)["by_exit_reason"].drop("both_touched").to_dicts(),
        "report": str(html_path) if html_path else None,
    }


def _labels() -> tuple[dict[str, str], dict[str, str]]:
    units = {k: u for _, items in SECTIONS for k, _, u in items}
    labels = {k: lbl for _, items in SECTIONS for k, lbl, _ in items}
    labels.update({k: f"{labels[k]} (ann. 365 d)" for k in ANNUALISED})
    return labels, units


def _span(m: dict[str, Any]) -> str:
    days = m.get("duration_days")
    n = f" ({days:g} days)" if isinstance(days, float | int) else ""
    return f"{fmt(m.get('start'))} → {fmt(m.get('end'))} UTC{n}"


def summary_markdown(s: dict[str, Any], report_link: str | None = None) -> str:
    """A compact markdown table of the headline metrics and exit reasons (Dagster metadata)."""
    m = s["metrics"]
    labels, units = _labels()
    lines = [
        f"**{s['title']}**, {_span(m)}",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {labels.get(k, k)} | {fmt(m.get(k), units.get(k, ''))} |" for k in SUMMARY_KEYS]
    if s["by_exit_reason"]:
        lines += ["", "| exit reason | trades | win rate | P&L |", "|---|---|---|---|"]
        lines += [
            f"| {r['exit_reason']} | {r['trades']} | {fmt(r['win_rate_pct'], '%')} | "
            f"{fmt(r['pnl'])} |"
            for r in s["by_exit_reason"]
        ]
    if report_link:
        lines += ["", f"Full report: [report.html]({report_link})"]
    return "\n".join(lines)


def summary_text(s: dict[str, Any]) -> str:
    """The terminal's table, like freqtrade's backtest output: headline figures, then trades
    by exit reason, then where the report is."""
    m = s["metrics"]
    labels, units = _labels()
    head = f"{s['title']}, {_span(m)}"
    rows = [(labels.get(k, k), fmt(m.get(k), units.get(k, ""))) for k in TEXT_KEYS]
    w0 = max(len(a) for a, _ in rows)
    w1 = max(len(b) for _, b in rows)
    lines = [head, "=" * len(head)]
    lines += [f"{a:<{w0}}  {b:>{w1}}" for a, b in rows]
    cols = ("exit reason", "trades", "win rate", "P&L", "avg return", "fees")
    table = [
        (
            str(r["exit_reason"]),
            fmt(r["trades"]),
            fmt(r["win_rate_pct"], "%"),
            fmt(r["pnl"]),
            fmt(r["avg_return_pct"], "%"),
            fmt(r["fees"]),
        )
        for r in s["by_exit_reason"]
    ]
    lines.append("")
    if table:
        widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
        fmt_row = lambda row: "  ".join(  # noqa: E731
            f"{v:<{widths[i]}}" if i == 0 else f"{v:>{widths[i]}}" for i, v in enumerate(row)
        )
        lines += [fmt_row(cols), "  ".join("-" * w for w in widths)]
        lines += [fmt_row(row) for row in table]
    else:
        lines.append("no trades")
    if s.get("report"):
        lines += ["", f"report: {s['report']}"]
    return "\n".join(lines)

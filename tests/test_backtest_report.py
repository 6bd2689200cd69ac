"""Plots and the HTML report: files written, self-contained, and rendered by headless Chromium.

Chromium comes from Debian (`apt-get install -y chromium`, /usr/bin/chromium); playwright drives
it (it cannot download its own browser here). The render check fails on a broken chart, which
a test proves by corrupting one on purpose; the layout check (every table inside a 1280 px
window) fails on a page with a too-wide table, which a test proves the same way.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.backtest import BacktestParams, run_backtest
from pipeline.backtest.report import (
    SECTIONS,
    report_html,
    summary,
    summary_markdown,
    summary_text,
    write_report,
)
from pipeline.backtest.sweep import walk_forward
from pipeline.replay import synthetic
from tests.backtest_rules import crossover_signals
from tests.conftest import DAY0, SEED

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CHARTS = ("equity", "drawdown", "candles")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Path]]:
    ms = int(DAY0.timestamp() * 1000)
    candles = synthetic.frame("BTCUSDT", ms, ms + 20 * 86_400_000, seed=SEED)
    signals = crossover_signals(candles, "15m", 8, 24)
    p = BacktestParams(take_profit_r=2.0)
    res = run_backtest(candles, signals, p)
    wf = walk_forward(candles, signals, p, folds=2)
    out = tmp_path_factory.mktemp("report")
    period = (DAY0 + dt.timedelta(days=3), DAY0 + dt.timedelta(days=4))
    return res, write_report(res, out, period=period, walk_forward=wf, timeframes=("15m", "1h"))


def render(html_path: Path) -> dict[str, Any]:
    """Open the page in headless Chromium; images' state, console errors and chart pixels."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: install it with `apt-get install -y chromium`")
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(html_path.as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate(
                "Array.from(document.querySelectorAll('img.chart')).map(i =>"
                " ({id: i.id, ok: i.complete && i.naturalWidth > 0,"
                "   w: i.getBoundingClientRect().width, h: i.getBoundingClientRect().height}))"
            )
            shots = {i["id"]: page.locator(f"#{i['id']}").screenshot() for i in images}
            full = page.screenshot(full_page=False)
            layout = page.evaluate(LAYOUT_JS)
        finally:
            browser.close()
    return {"errors": errors, "images": images, "shots": shots, "full": full, "layout": layout}


# What a reader sees: the page's width against the window's, each table's right edge and
# width against its container's, the metric tables' row labels and the heading.
LAYOUT_JS = """() => {
  const doc = document.documentElement;
  const tables = Array.from(document.querySelectorAll('table')).map((t, i) => ({
    i, right: t.getBoundingClientRect().right, width: t.scrollWidth,
    room: t.parentElement.clientWidth}));
  const labels = Array.from(document.querySelectorAll('.grid table td:first-child'))
    .map(td => td.textContent.trim());
  return {pageWidth: doc.scrollWidth, window: doc.clientWidth, tables, labels,
          h1: document.querySelector('h1').textContent, title: document.title};
}"""


def ink(png: bytes) -> tuple[float, int]:
    """Share of non-white pixels and number of distinct colours of a screenshot."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    return float((a.min(axis=1) < 235).mean()), len(np.unique(a, axis=0))


def test_report_files_are_pngs_and_a_self_contained_page(report: tuple) -> None:
    res, paths = report
    assert set(paths) == {*CHARTS, "html", "summary"}
    for name in CHARTS:
        img = Image.open(paths[name])
        assert img.format == "PNG" and img.width > 600 and img.height > 200, name
    page = paths["html"].read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 3
    assert not re.search(r'(src|href)="(https?:|//|file:)', page)  # nothing fetched from outside
    for text in (
        "Sharpe",
        "By exit reason",
        "By month",
        "By confidence bucket",
        "Walk-forward",
        f"Trades ({res.trades.height}",
    ):
        assert text in page, text


def test_report_charts_render_in_headless_chromium(report: tuple) -> None:
    _, paths = report
    got = render(paths["html"])
    assert got["errors"] == []
    assert [i["id"] for i in got["images"]] == list(CHARTS)
    for i in got["images"]:
        assert i["ok"] and i["w"] > 300 and i["h"] > 100, i
        share, colours = ink(got["shots"][i["id"]])
        assert share > 0.02 and colours > 30, (i["id"], share, colours)
    assert ink(got["full"])[0] > 0.02


def test_render_check_fails_on_a_broken_chart(report: tuple, tmp_path: Path) -> None:
    _, paths = report
    broken = tmp_path / "broken.html"
    page = paths["html"].read_text()
    head, _, tail = page.partition('id="candles"')
    tail = re.sub(
        r'src="data:image/png;base64,[^"]+"', 'src="data:image/png;base64,AAAA"', tail, count=1
    )
    broken.write_text(head + 'id="candles"' + tail)
    got = render(broken)
    state = {i["id"]: i["ok"] for i in got["images"]}
    assert state == {"equity": True, "drawdown": True, "candles": False}


def test_plots_mark_the_trades_of_the_chosen_period(report: tuple, tmp_path: Path) -> None:
    res, _ = report
    from pipeline.backtest import plots

    quiet = plots.candles_png(res, (res.start - dt.timedelta(days=9), res.start))
    busy = plots.candles_png(res, (DAY0 + dt.timedelta(days=3), DAY0 + dt.timedelta(days=4)))
    assert ink(busy)[0] > ink(quiet)[0]  # candles and markers vs an empty axis
    written = plots.write_plots(res, tmp_path / "plots")
    assert sorted(p.name for p in written.values()) == ["candles.png", "drawdown.png", "equity.png"]


def test_report_fits_the_window_has_unique_rows_and_names_its_timeframes(report: tuple) -> None:
    res, paths = report
    got = render(paths["html"])["layout"]
    assert 1200 <= got["window"] <= 1280 and got["pageWidth"] <= got["window"]
    for t in got["tables"]:
        assert t["right"] <= got["window"] and t["width"] <= t["room"] + 1, t
    labels = got["labels"]
    assert len(labels) == sum(len(items) for _, items in SECTIONS) > 30
    assert len(set(labels)) == len(labels), sorted(x for x in labels if labels.count(x) > 1)
    assert got["h1"] == got["title"] == f"Backtest {res.personality} on BTCUSDT (15m, 1h)"


def test_layout_check_fails_on_a_too_wide_table(report: tuple, tmp_path: Path) -> None:
    _, paths = report
    wide = tmp_path / "wide.html"
    cells = "".join(f"<td>column_number_{i}</td>" for i in range(40))
    page = paths["html"].read_text()
    wide.write_text(page.replace("</body>", f"<table><tr>{cells}</tr></table></body>"))
    got = render(wide)["layout"]
    assert got["pageWidth"] > got["window"] or any(
        t["right"] > got["window"] for t in got["tables"]
    )


def test_report_without_signals_is_named_by_the_personalitys_timeframes(tmp_path: Path) -> None:
    import polars as pl

    ms = int(DAY0.timestamp() * 1000)
    candles = synthetic.frame("BTCUSDT", ms, ms + 86_400_000, seed=SEED)
    none = pl.DataFrame(
        {"close_time": [], "action": []},
        schema={"close_time": pl.Datetime("us", "UTC"), "action": pl.String},
    )
    res = run_backtest(candles, none, personality="swing")
    charts = dict.fromkeys(CHARTS, b"")
    page = report_html(res, charts, timeframes=("15m", "1h"))
    assert "<h1>Backtest swing on BTCUSDT (15m, 1h)</h1>" in page and "(-)" not in page
    assert "(-)" not in report_html(res, charts)  # no timeframe known: none shown


def test_summary_text_is_an_aligned_table_with_exit_reasons(report: tuple) -> None:
    res, paths = report
    s = summary(res, ("15m", "1h"), paths["html"])
    text = summary_text(s)
    lines = text.splitlines()
    assert lines[0] == (
        f"Backtest {res.personality} on BTCUSDT (15m, 1h), "
        "2024-01-01 00:00 → 2024-01-21 00:00 UTC (20 days)"
    )
    for label in ("Trades", "Win rate", "Total return", "Buy & hold return", "Max drawdown"):
        assert any(ln.startswith(label) for ln in lines), label
    assert any(ln.startswith("Sharpe (ann. 365 d)") for ln in lines)
    assert any(ln.startswith("Fees paid") for ln in lines)
    headline = lines[2 : 2 + 14]
    assert len({len(ln) for ln in headline}) == 1  # right-aligned values: one width
    reasons = {r["exit_reason"] for r in s["by_exit_reason"]}
    assert reasons and all(any(ln.startswith(r) for ln in lines) for r in reasons)
    assert lines[-1] == f"report: {paths['html']}"
    assert "None" not in text and "nan" not in text.lower()


def test_summary_markdown_has_the_headline_metrics(report: tuple) -> None:
    res, _ = report
    md = summary_markdown(summary(res))
    assert md.count("\n|") > 15
    assert f"| Trades | {res.metrics['trades']} |" in md
    assert "| Sharpe (ann. 365 d) |" in md and "| exit reason |" in md
    assert "None" not in md and "nan" not in md.lower()

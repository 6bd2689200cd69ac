"""The paper bots' reconciliation report: one self-contained HTML page per bot and day (the
backtest report's page, tables and charts), with both equity curves, every trade matched or
different and why, and the unexplained gap against the tolerance; rendered by headless
Chromium like the backtest report (tests/test_backtest_report.py)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pipeline.bots.reconcile import reconcile
from pipeline.bots.report import report_path, write_paper_report
from tests.test_backtest_report import ink, render
from tests.test_bots_reconcile import (
    ETH,
    MARKET,
    PARAMS,
    RISK_PAIR,
    frames,
    reconciled_pair,
    run_bot,
)
from tests.test_bots_trader import T0, market


@pytest.fixture(scope="module")
def down_day(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A bot down for 80 minutes of the day: trades missed (bot_down), its report."""
    home = tmp_path_factory.mktemp("home")
    candles, sigs = market(480, every=7)
    paper, equity = run_bot(home, {MARKET: (candles, sigs)}, down=(150, 230))
    rec = reconcile("rec", T0.date(), {MARKET: (candles, frames(sigs))}, paper, equity, PARAMS)
    path = report_path(home / "reports", "rec", T0.date().isoformat())
    return rec, write_paper_report(rec, path, 1.0, PARAMS, "swing")


def test_the_page_holds_the_verdict_both_curves_and_every_trade_with_why(down_day, tmp_path):
    rec, paths = down_day
    assert paths["html"].parts[-3:-1] == ("paper", f"paper_rec_{T0.date()}")
    page = paths["html"].read_text()
    assert f"<h1>Paper bot rec vs backtest, {T0.date()}</h1>" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 1
    assert paths["equity"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(https?:|//|file:)', page)  # nothing fetched from outside
    rows = re.findall(r"<tr><td>(\d+)</td>", page)  # the trades table, numbered
    assert len(rows) == len(rec.trades) == rec.matched + len(rec.differences)
    assert rec.differences and page.count("<td>bot_down</td></tr>") == sum(
        d["why"] == "bot_down" for d in rec.differences
    )
    assert page.count(f"<td>{MARKET}</td><td>matched</td>") == rec.matched > 10
    gap = rec.unexplained_gap
    assert gap is not None and rec.failure(1.0) is None
    assert "<td>verdict</td><td>reconciled</td>" in page
    assert "<td>tolerance</td><td>1.00</td>" in page
    # 5 more in the paper account than the backtest explains: the page says it fails
    off = dataclasses.replace(rec, paper_equity=(rec.paper_equity or 0.0) + 5.0)
    tight = write_paper_report(off, tmp_path / "off.html", 1.0, PARAMS, "swing")
    assert "exceeds the tolerance 1</td>" in tight["html"].read_text()


def test_the_page_renders_in_headless_chromium_and_fits_the_window(down_day):
    _, paths = down_day
    got = render(paths["html"])
    assert got["errors"] == []
    (img,) = got["images"]
    assert img["id"] == "equity" and img["ok"] and img["w"] > 300 and img["h"] > 100
    share, colours = ink(got["shots"]["equity"])
    assert share > 0.02 and colours > 30
    layout = got["layout"]
    assert layout["pageWidth"] <= layout["window"]
    for t in layout["tables"]:
        assert t["right"] <= layout["window"] and t["width"] <= t["room"] + 1, t
    assert layout["h1"] == layout["title"] == f"Paper bot rec vs backtest, {T0.date()}"


def test_a_two_market_report_says_why_equity_is_not_compared(tmp_path: Path):
    _, _, _, rec = reconciled_pair(tmp_path, RISK_PAIR, 240)
    paths = write_paper_report(rec, tmp_path / "r" / "report.html", 1.0, PARAMS, "swing")
    page = paths["html"].read_text()
    assert "<p id='equity-note'>equity not reconciled: the bot&#x27;s 2 markets share" in page
    assert page.count(f"<td>{MARKET}</td>") > 5 and page.count(f"<td>{ETH}</td>") > 5
    assert "<td>equity gap</td><td>–</td>" in page  # not compared, not zero

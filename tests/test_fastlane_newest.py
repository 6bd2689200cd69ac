"""`<home>/fastlane/newest.json` (pipeline.fastlane.newest): what the fast lane writes for the
live sensor, once per closed minute per venue, and what a reader trusts. Real files."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from pipeline.fastlane import newest

MIN = dt.timedelta(minutes=1)
M = dt.datetime(2024, 1, 5, 3, 52, tzinfo=dt.UTC)


def writes(home: Path) -> int:
    """How many times the record was written (its venue's written_at changes each time)."""
    p = newest.path(home)
    return 0 if not p.exists() else json.loads(p.read_text())["venues"]["bybit"]["written_at"]


def test_a_minute_is_written_once_when_every_market_confirmed_it(tmp_path: Path):
    w = newest.Writer(tmp_path, "bybit", ["A", "B", "C"])
    w.saw("A", M, M + MIN)
    w.saw("B", M, M + MIN)
    assert not newest.path(tmp_path).exists()  # C has not confirmed M yet
    w.saw("C", M, M + MIN)
    first = writes(tmp_path)
    w.saw("C", M, M + MIN)  # a duplicate confirm
    w.tick(lambda: M + MIN)
    assert writes(tmp_path) == first
    got = newest.read(tmp_path, ["bybit:A", "bybit:B", "bybit:C"], M)
    assert got.have == dict.fromkeys(["bybit:A", "bybit:B", "bybit:C"], M) and not got.lacking


def test_a_lagging_market_does_not_hold_the_minute_back(tmp_path: Path, monkeypatch):
    """After LATE_S the minute is written with what arrived; the market that lags shows its
    older entry (REST for it), and later minutes no longer wait for it."""
    monkeypatch.setattr(newest, "LATE_S", 0.0)
    w = newest.Writer(tmp_path, "bybit", ["A", "B"])
    w.saw("A", M, M + MIN)
    w.saw("B", M, M + MIN)
    w.saw("A", M + MIN, M + 2 * MIN)
    w.tick(lambda: M + 2 * MIN)
    got = newest.read(tmp_path, ["bybit:A", "bybit:B"], M + MIN)
    assert got.have == {"bybit:A": M + MIN} and got.behind == ["bybit:B"]
    assert got.why == "1 market(s) not at 03:53 yet"
    w.saw("A", M + 2 * MIN, M + 3 * MIN)  # B stays quiet: A alone completes the minute
    assert newest.read(tmp_path, ["bybit:A"], M + 2 * MIN).have == {"bybit:A": M + 2 * MIN}


def test_venues_keep_their_own_entries_and_freshness(tmp_path: Path):
    newest.write(tmp_path, "bybit", {"BTCUSDT": M}, M + MIN)
    newest.write(tmp_path, "hyperliquid", {"BTC": M}, M + MIN)
    rec = json.loads(newest.path(tmp_path).read_text())
    assert set(rec["markets"]) == {"bybit:BTCUSDT", "hyperliquid:BTC"}
    written = rec["venues"]["bybit"]["written_at"]
    later = newest.read(tmp_path, ["bybit:BTCUSDT", "hyperliquid:BTC"], M, now=written + 91)
    assert later.have == {} and "bybit not updated for over 90 s" in later.why


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (None, "no fast-lane record (the fast lane not running)"),
        ("{not json", "is unreadable"),
        ('{"markets": [], "venues": {}}', "must be JSON objects"),
        (
            '{"markets": {"bybit:A": "yesterday"}, "venues": {"bybit": {"written_at": 1}}}',
            "not in it",
        ),
    ],
)
def test_a_missing_or_malformed_record_means_rest_and_says_why(tmp_path: Path, text, why):
    if text is not None:
        newest.path(tmp_path).parent.mkdir(parents=True)
        newest.path(tmp_path).write_text(text)
    got = newest.read(tmp_path, ["bybit:A"], M, now=2.0)
    assert got.have == {} and got.lacking == ["bybit:A"] and why in got.why

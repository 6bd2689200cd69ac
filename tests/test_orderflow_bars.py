"""Order flow on every timeframe: values only for wholly covered bars, the day-anchored CVD,
flagged minutes left out, and no value that depends on minutes after the bar's close."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from pipeline.orderflow.derived import bar_checks, bars

DAY = dt.date(2024, 1, 1)
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
TFS = ["1m", "5m", "37m", "1h", "1d", "1w"]


def flow(skip: range = range(0), flagged: tuple[int, ...] = (), start: int = -60) -> pl.DataFrame:
    """Minutes from `start` (minutes after 2024-01-01 00:00) to the day's end, buy = 1 + m %
    3, sell = 1; `skip` has no row, `flagged` has volume_matches false."""
    rows = [
        {
            "exchange": "bybit",
            "symbol": "BTCUSDT",
            "open_time": T0 + dt.timedelta(minutes=m),
            "taker_buy_volume": 1.0 + m % 3,
            "taker_sell_volume": 1.0,
            "volume_matches": m not in flagged,
        }
        for m in range(start, 1440)
        if m not in skip
    ]
    return pl.DataFrame(rows).with_columns(pl.col("open_time").cast(pl.Datetime("us", "UTC")))


def _bar(out: pl.DataFrame, tf: str, hh: int, mm: int = 0) -> dict:
    when = T0 + dt.timedelta(hours=hh, minutes=mm)
    (row,) = out.filter((pl.col("timeframe") == tf) & (pl.col("open_time") == when)).to_dicts()
    return row


def test_whole_bars_sum_their_minutes_and_partial_ones_are_null() -> None:
    out = bars(flow(skip=range(600, 603)), TFS, DAY)
    assert all(o.passed for o in bar_checks(out).values())
    h9 = _bar(out, "1h", 9)
    delta = sum(m % 3 for m in range(540, 600))
    assert h9["delta"] == pytest.approx(delta, abs=1e-9)
    assert h9["buy_ratio"] == pytest.approx((60 + delta) / (120 + delta), rel=1e-12)
    assert h9["cvd_day"] == pytest.approx(sum(m % 3 for m in range(600)), abs=1e-9)
    h10 = _bar(out, "1h", 10)
    assert (h10["covered_minutes"], h10["expected_minutes"]) == (57, 60)
    assert {
        k: h10[k] for k in ("delta", "buy_ratio", "cvd_day", "taker_buy_volume")
    } == dict.fromkeys(("delta", "buy_ratio", "cvd_day", "taker_buy_volume"))
    # after the hole the day-anchored CVD is unknown for the rest of the day; bars are whole
    h11 = _bar(out, "1h", 11)
    assert h11["delta"] is not None and h11["cvd_day"] is None
    assert _bar(out, "1d", 0)["delta"] is None  # the day is not whole
    assert out.filter(pl.col("timeframe") == "1w").height == 0  # closes on another day


def test_a_flagged_minute_counts_as_uncovered_and_longer_bars_have_no_day_cvd() -> None:
    out = bars(flow(flagged=(61,)), TFS, DAY)
    assert _bar(out, "5m", 1)["delta"] is None and _bar(out, "5m", 1)["covered_minutes"] == 4
    whole = bars(flow(), TFS, DAY)
    day = _bar(whole, "1d", 0)
    assert day["delta"] == pytest.approx(sum(m % 3 for m in range(1440)), abs=1e-9)
    assert day["cvd_day"] == pytest.approx(day["delta"], abs=1e-9)
    # the 37m bar spanning midnight is whole (its minutes before 00:00 are there), but its
    # day-anchored CVD starts at 00:00
    first = whole.filter(pl.col("timeframe") == "37m").row(0, named=True)
    assert first["open_time"] < T0 and first["delta"] is not None
    minutes_today = (first["close_time"] - T0) // dt.timedelta(minutes=1)
    assert first["cvd_day"] == pytest.approx(sum(m % 3 for m in range(minutes_today)), abs=1e-9)


def test_bar_by_bar_equals_the_whole_day() -> None:
    """A bar computed when it closed equals the same bar computed at the day's end."""
    full = flow(skip=range(700, 701))
    batch = bars(full, TFS, DAY)
    for close_min in (60, 185, 703, 1000):
        cut = T0 + dt.timedelta(minutes=close_min)
        early = bars(full.filter(pl.col("open_time") < cut), TFS, DAY)
        closed = early.filter(pl.col("close_time") <= cut)
        assert closed.height > 0
        same = batch.join(closed.select("timeframe", "open_time"), on=["timeframe", "open_time"])
        assert same.sort("timeframe", "open_time").equals(closed.sort("timeframe", "open_time"))

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


def _delta(m: int) -> float:
    """flow()'s delta of minute m (minutes after 2024-01-01 00:00, negative: the day before)."""
    return float(m % 3)


def test_rolling_cvd_sums_the_24_hours_before_the_close_and_is_null_until_covered() -> None:
    out = bars(flow(start=-1440, skip=range(-100, -99)), TFS, DAY)
    assert all(o.passed for o in bar_checks(out).values())
    # the 1h bar closing 23:00 reads minutes from 23:00 the day before: all there
    h22 = _bar(out, "1h", 22)
    assert h22["cvd_24h"] == pytest.approx(sum(_delta(m) for m in range(-60, 1380)), abs=1e-9)
    # the one closing 22:00 reaches back to minute -120 and so over the hole at -100: NULL,
    # while its day-anchored CVD (from 00:00) is known
    h21 = _bar(out, "1h", 21)
    assert h21["cvd_24h"] is None and h21["cvd_day"] is not None and h21["delta"] is not None
    # the whole day: its own deltas
    day = _bar(out, "1d", 0)
    assert day["cvd_24h"] == pytest.approx(day["cvd_day"], abs=1e-9)
    # without the day before there is no rolling value at all before the day's last bar
    alone = bars(flow(start=0), TFS, DAY).filter(pl.col("close_time") < T0 + dt.timedelta(days=1))
    assert alone["cvd_24h"].null_count() == alone.height > 0


def test_rolling_cvd_has_the_same_bits_whatever_the_read_starts_at() -> None:
    """A partition reads from the day before; a longer read, or one cut at a bar's close,
    gives the very same values (day-anchored sums, never one running sum). Volumes that are not
    whole numbers, so that a running sum started elsewhere would round differently."""
    odd = pl.col("taker_buy_volume") * 0.1 + pl.col("open_time").dt.minute() * 0.0123
    longer = flow(start=-3000).with_columns(taker_buy_volume=odd)
    base = bars(longer.filter(pl.col("open_time") >= T0 - dt.timedelta(days=1)), TFS, DAY)
    assert base["cvd_24h"].drop_nulls().len() > 100
    assert bars(longer, TFS, DAY).equals(base)
    for close_min in (61, 600, 1439):
        cut = T0 + dt.timedelta(minutes=close_min)
        early = bars(longer.filter(pl.col("open_time") < cut), TFS, DAY)
        closed = early.filter(pl.col("close_time") <= cut)
        same = base.join(closed.select("timeframe", "open_time"), on=["timeframe", "open_time"])
        assert same.sort("timeframe", "open_time").equals(closed.sort("timeframe", "open_time"))

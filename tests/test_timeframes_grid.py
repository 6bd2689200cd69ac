"""The bucket grid: parsing, epoch/Monday/calendar anchoring, and which partition owns a bucket."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from pipeline.candles.timeframes import (
    DAY_MS,
    MINUTE_MS,
    bucket_end,
    bucket_start,
    expected_minutes,
    first_owned_start_ms,
    from_ms,
    on_grid,
    owner_day,
    parse_timeframe,
    parse_timeframes,
    partition_input_window,
    shift_buckets,
    to_ms,
)

UTC = dt.UTC


def ms(*args: int) -> int:
    return to_ms(dt.datetime(*args, tzinfo=UTC))


@pytest.mark.parametrize(
    "bad", ["", "0m", "01m", "1s", "1.5h", "m", "1 h", "-1m", "1y", "1mo", "1H", "5D", "1W", None]
)
def test_bad_timeframe_strings_say_what_is_allowed(bad: object) -> None:
    with pytest.raises(ValueError, match=r"not valid: use a whole number and a unit"):
        parse_timeframe(bad)  # type: ignore[arg-type]


def test_absurd_length_and_duplicates_are_rejected() -> None:
    with pytest.raises(ValueError, match="longer than 100 years"):
        parse_timeframe("99999999d")
    with pytest.raises(ValueError, match="listed twice"):
        parse_timeframes(["1m", "5m", "1m"])


def test_units() -> None:
    assert parse_timeframe("37m").minutes == 37
    assert parse_timeframe("148m").minutes == 148
    assert parse_timeframe("4h").minutes == 240
    assert parse_timeframe("3d").minutes == 3 * 1440
    assert parse_timeframe("2w").minutes == 2 * 10080
    assert parse_timeframe("1M").kind == "month" and parse_timeframe("3M").months == 3


@pytest.mark.parametrize("tf", ["37m", "148m"])
def test_odd_minutes_are_anchored_at_the_epoch_not_midnight(tf: str) -> None:
    n = int(tf[:-1]) * MINUTE_MS
    # Every minute of a window spanning a day boundary and the Jan/Feb month boundary.
    t = np.arange(ms(2024, 1, 31, 20, 0), ms(2024, 2, 1, 4, 0), MINUTE_MS, dtype=np.int64)
    starts = bucket_start(tf, t)
    assert np.array_equal(starts, t - t % n)  # plain integer arithmetic from 1970-01-01
    assert np.all(bucket_end(tf, starts) - starts == n)
    # ...which is NOT midnight-anchored: some bucket straddles 00:00 of Feb 1.
    midnight = ms(2024, 2, 1)
    assert bucket_start(tf, midnight) < midnight < bucket_end(tf, bucket_start(tf, midnight))


def test_weeks_start_monday_and_months_are_calendar_months() -> None:
    # 2024-01-03 is a Wednesday; its week starts Monday 2024-01-01.
    assert from_ms(bucket_start("1w", ms(2024, 1, 3, 15, 30))) == dt.datetime(
        2024, 1, 1, tzinfo=UTC
    )
    assert from_ms(bucket_start("1w", ms(2024, 1, 7, 23, 59))).weekday() == 0
    assert from_ms(bucket_start("1w", ms(2024, 1, 8))) == dt.datetime(2024, 1, 8, tzinfo=UTC)
    assert from_ms(bucket_start("2w", ms(1970, 1, 5))) == dt.datetime(1970, 1, 5, tzinfo=UTC)
    feb = ms(2024, 2, 1)
    assert bucket_start("1M", ms(2024, 2, 29, 23, 59)) == feb
    assert expected_minutes("1M", feb) == 29 * 1440  # leap year
    assert expected_minutes("1M", ms(2023, 2, 1)) == 28 * 1440
    assert expected_minutes("1M", ms(2024, 1, 1)) == 31 * 1440
    assert from_ms(bucket_end("1M", ms(2024, 12, 1))) == dt.datetime(2025, 1, 1, tzinfo=UTC)
    assert from_ms(bucket_start("3M", ms(2024, 5, 17))) == dt.datetime(2024, 4, 1, tzinfo=UTC)
    assert from_ms(shift_buckets("1M", feb, -13)) == dt.datetime(2023, 1, 1, tzinfo=UTC)
    assert from_ms(bucket_start("3d", ms(2024, 1, 2))) == from_ms(
        (ms(2024, 1, 2) // (3 * DAY_MS)) * 3 * DAY_MS
    )


def test_month_lookup_matches_calendar_conversion_on_dense_arrays() -> None:
    t = np.arange(ms(2023, 12, 25), ms(2024, 3, 5), MINUTE_MS, dtype=np.int64)  # > 4096 values
    want = t.astype("datetime64[ms]").astype("datetime64[M]").astype("datetime64[ms]")
    assert np.array_equal(bucket_start("1M", t), want.astype(np.int64))
    assert np.array_equal(bucket_start("1M", t[::5000]), want.astype(np.int64)[::5000])


def test_scalars_arrays_and_polars_series_agree() -> None:
    t = ms(2024, 1, 1, 0, 30)
    s = pl.Series("t", [from_ms(t)]).cast(pl.Datetime("us", "UTC"))
    got = bucket_start("37m", s)
    assert got.dtype == pl.Datetime("us", "UTC") and got.name == "t"
    assert to_ms(got[0]) == bucket_start("37m", t) == int(bucket_start("37m", np.array([t]))[0])
    assert expected_minutes("1M", s).to_list() == [31 * 1440]
    assert expected_minutes("1M", t) == 31 * 1440  # any time inside the bucket
    assert on_grid("1h", ms(2024, 1, 1, 3)) and not on_grid("1h", ms(2024, 1, 1, 3, 1))
    assert bucket_start("1h", from_ms(ms(2024, 1, 1, 3, 59))) == from_ms(ms(2024, 1, 1, 3))


def test_a_bucket_is_owned_by_the_day_of_its_last_minute() -> None:
    assert owner_day(dt.datetime(2024, 1, 2, tzinfo=UTC)) == dt.date(2024, 1, 1)  # 1d of Jan 1
    assert owner_day(dt.datetime(2024, 1, 2, 0, 1, tzinfo=UTC)) == dt.date(2024, 1, 2)
    # A 37m bucket spanning midnight belongs to the new day.
    start = bucket_start("37m", ms(2024, 2, 1))
    assert owner_day(from_ms(bucket_end("37m", start))) == dt.date(2024, 2, 1)
    # No 1M bucket closes on Feb 28 2024; the Feb bucket closes on the 29th's last minute.
    assert first_owned_start_ms("1M", dt.date(2024, 2, 28)) is None
    assert first_owned_start_ms("1M", dt.date(2024, 2, 29)) == ms(2024, 2, 1)


def test_partition_input_window_reaches_back_as_far_as_the_longest_owned_bucket() -> None:
    tfs = ["1m", "37m", "1d", "3d", "1w", "1M"]
    day = dt.date(2024, 2, 6)  # a Tuesday, mid-month, no 3d bucket closes
    start, end = partition_input_window(day, tfs)
    assert end == dt.datetime(2024, 2, 7, tzinfo=UTC)
    assert start == from_ms(bucket_start("37m", ms(2024, 2, 6)))  # only the 37m straddles
    # Epoch-anchored 3d buckets: [Feb 5, Feb 8) closes on the 7th.
    assert partition_input_window(dt.date(2024, 2, 7), tfs)[0] == dt.datetime(
        2024, 2, 5, tzinfo=UTC
    )
    sunday = dt.date(2024, 2, 11)
    assert partition_input_window(sunday, tfs)[0] == dt.datetime(2024, 2, 5, tzinfo=UTC)
    assert partition_input_window(dt.date(2024, 2, 29), tfs)[0] == dt.datetime(
        2024, 2, 1, tzinfo=UTC
    )
    assert partition_input_window(day, ["1m", "1h"])[0] == dt.datetime(2024, 2, 6, tzinfo=UTC)

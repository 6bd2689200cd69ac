"""Minutes the warehouse lacks: a bucket holding an unknown minute is not history (NULL, and so
is every value whose warm-up reaches it); a bucket missing only minutes the exchange confirmed
absent is history."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.candles.resample import KEYS, resample
from pipeline.candles.timeframes import DAY_MS, MINUTE_MS, to_ms
from pipeline.config import Settings
from pipeline.indicators import (
    IndicatorSpec,
    check_lookahead,
    check_nulls,
    compute_indicators,
    load_spec,
)
from pipeline.indicators.history import WHOLE, mark_history
from pipeline.replay import synthetic
from tests.conftest import DAY0, SEED
from tests.test_indicators_history import short_spec

TIMEFRAMES = Settings().timeframes
UTC = dt.UTC
MID = ["37m", "148m", "3d"]  # timeframes whose epoch grid puts 2024-01-01 00:00 mid-bucket


def candles_from(start: dt.datetime, days: int, drop: list[dt.datetime] = ()) -> pl.DataFrame:
    ms = to_ms(start)
    minutes = synthetic.frame("BTCUSDT", ms, ms + days * DAY_MS, seed=SEED)
    return resample(minutes.filter(~pl.col("open_time").is_in(list(drop))), TIMEFRAMES)


@pytest.fixture(scope="module")
def full() -> pl.DataFrame:
    """History from 3 days before DAY0: the true candles around DAY0."""
    return candles_from(DAY0 - dt.timedelta(days=3), 8)


@pytest.fixture(scope="module")
def late() -> pl.DataFrame:
    """A backfill that starts at midnight DAY0: mid-bucket for 37m, 148m and 3d."""
    return candles_from(DAY0, 5)


def tf_rows(frame: pl.DataFrame, tf: str) -> pl.DataFrame:
    return frame.filter(pl.col("timeframe") == tf).sort("open_time")


def assert_null_or_equal(got: pl.DataFrame, want: pl.DataFrame, spec: IndicatorSpec) -> int:
    """Every value in `got` is NULL or equals `want` within the spec's tolerance; returns how
    many values were compared."""
    joined = got.join(want, on=KEYS, suffix="_w")
    assert joined.height == got.height
    compared = 0
    for ind in spec.indicators:
        for c in ind.outputs:
            has = joined[c].is_not_null()
            a = joined.filter(has)[c].cast(pl.Float64).to_numpy()
            b = joined.filter(has)[f"{c}_w"].cast(pl.Float64).to_numpy()
            assert not np.isnan(b).any(), f"{c}: a value where full history has none"
            scale = np.abs(b).max(initial=1.0)
            assert np.allclose(a, b, rtol=0, atol=spec.tolerance * scale), c
            compared += len(a)
    return compared


def test_the_partial_first_bucket_of_a_backfill_has_no_values(late: pl.DataFrame) -> None:
    spec = load_spec()
    ind = compute_indicators(late, spec)
    for tf in MID:
        first = tf_rows(late, tf).row(0, named=True)
        assert not first["complete"] and first["open_time"] < DAY0
        row = tf_rows(ind, tf).head(1).select(spec.columns)
        assert row.null_count().sum_horizontal()[0] == len(spec.columns), (tf, row)
    for tf in ("37m", "148m"):
        # Warm-up counts from the first complete bucket: volume_ma_20 needs 19 bars before.
        vm = tf_rows(ind, tf)["volume_ma_20"]
        assert vm[:20].null_count() == 20 and vm[20] is not None, tf
        assert tf_rows(ind, tf)["volume_ratio"][20] is not None


def test_every_value_after_the_partial_bucket_equals_full_history(
    full: pl.DataFrame, late: pl.DataFrame
) -> None:
    """Every indicator on every timeframe: NULL, or the value full history gives."""
    for spec in (short_spec(), load_spec()):
        got = compute_indicators(late, spec)
        want = compute_indicators(full, spec)
        compared = assert_null_or_equal(got, want, spec)
        assert compared > 100_000
    # Not vacuous: the short set has values on the mid-bucket timeframes soon after.
    short = compute_indicators(late, short_spec())
    for tf in MID[:2]:
        second = tf_rows(short, tf).row(20, named=True)
        assert all(second[c] is not None for c in ("volume_ma_20", "atr_14", "stoch_k")), tf


def hole_at(day: int, hour: int, n: int) -> list[dt.datetime]:
    t = DAY0 + dt.timedelta(days=day, hours=hour, minutes=3)
    return [t + dt.timedelta(minutes=i) for i in range(n)]


def test_unknown_minutes_break_the_series_confirmed_ones_do_not() -> None:
    spec = load_spec()
    hole = hole_at(1, 10, 5)
    candles = candles_from(DAY0, 3, drop=hole)
    runs = pl.DataFrame(
        {"symbol": ["BTCUSDT"], "start": [hole[0]], "minutes": [len(hole)]},
        schema={"symbol": pl.String, "start": pl.Datetime("us", "UTC"), "minutes": pl.Int64},
    )
    unknown = mark_history(candles)
    confirmed = mark_history(candles, {"BTCUSDT": DAY0}, lambda lo, hi: runs)
    after = hole[-1] + dt.timedelta(minutes=1)
    in37 = (pl.col("timeframe") == "37m") & (pl.col("open_time") <= hole[0])
    bucket = tf_rows(candles.filter(in37), "37m").tail(1)["open_time"][0]
    for marked, broken in ((unknown, True), (confirmed, False)):
        ind = compute_indicators(marked, spec)
        at37 = ind.filter((pl.col("timeframe") == "37m") & (pl.col("open_time") == bucket))
        m1 = tf_rows(ind, "1m")
        first_after = m1.filter(pl.col("open_time") == after)
        assert (at37["sma_44"][0] is None) is broken
        assert (first_after["sma_44"][0] is None) is broken
        # The checks derive what is due from the same rule, so they agree with the values.
        assert check_nulls(marked, ind, spec).passed
        assert check_lookahead(marked, ind, spec, per_series=8, seed=1).passed
    # After an unknown hole, the 1m series starts afresh: as if history began after it.
    ind = compute_indicators(unknown, spec)
    fresh = compute_indicators(
        candles.filter((pl.col("timeframe") == "1m") & (pl.col("open_time") >= after)), spec
    )
    got = tf_rows(ind, "1m").filter(pl.col("open_time") >= after)
    assert got.select(spec.columns).equals(fresh.select(spec.columns))
    # A value stored where the rule says NULL is caught.
    filled = ind.with_columns(
        pl.when((pl.col("timeframe") == "37m") & (pl.col("open_time") == bucket))
        .then(1.0)
        .otherwise(pl.col("sma_44"))
        .alias("sma_44")
    )
    assert check_nulls(unknown, filled, spec).metadata["value_before_warmup"] == {"sma_44": 1}


def test_minutes_before_the_first_stored_minute_are_never_confirmed(late: pl.DataFrame) -> None:
    """Even if the exchange said it has no candle before the data starts (a listing, a file's
    start), the first bucket began before any stored minute: not history."""
    before = DAY0 - dt.timedelta(hours=3)
    runs = pl.DataFrame(
        {"symbol": ["BTCUSDT"], "start": [before], "minutes": [180]},
        schema={"symbol": pl.String, "start": pl.Datetime("us", "UTC"), "minutes": pl.Int64},
    )
    marked = mark_history(late, {"BTCUSDT": DAY0}, lambda lo, hi: runs)
    for tf in MID:
        assert tf_rows(marked, tf)[WHOLE].to_list()[:2] == [False, True], tf


def test_the_warehouse_path_tells_exchange_gaps_from_lost_minutes(home: Path) -> None:
    """`with_history` (what the indicators asset and the warm-up check run) on a real DuckDB:
    the exchange-confirmed gap is explained, the lost minutes are not."""
    from pipeline.indicators.build import with_history
    from tests.test_warehouse import WHERE, klines
    from warehouse import Replacement, Warehouse

    wh = Warehouse(home / "wh.duckdb", replica_sync=False)
    confirmed, lost = hole_at(1, 10, 5), hole_at(2, 4, 3)
    rows = klines(DAY0, 3).filter(~pl.col("open_time").is_in([*confirmed, *lost]))
    ts = pl.Datetime("us", "UTC")
    gaps = pl.DataFrame(
        {"exchange": "bybit", "symbol": "BTCUSDT", "open_time": confirmed, "checked_at": confirmed},
        schema={"exchange": pl.String, "symbol": pl.String, "open_time": ts, "checked_at": ts},
    )
    span = ("BTCUSDT", DAY0, DAY0 + dt.timedelta(days=3))
    wh.replace_many(
        [
            Replacement("klines_1m", rows, WHERE, span),
            Replacement("kline_gaps", gaps, WHERE, span),
        ]
    )
    candles = resample(rows.drop("exchange"), ["1m", "37m", "1h"])
    marked = with_history(wh, "bybit", candles)
    broken = marked.filter(~pl.col(WHOLE))
    ms = broken["open_time"].dt.epoch("ms").to_numpy()
    # The leading partial 37m bucket and the 37m and 1h buckets holding the lost minutes.
    lost_ms = to_ms(lost[0])
    assert sorted(broken["timeframe"].to_list()) == ["1h", "37m", "37m"]
    assert all(m < to_ms(DAY0) or m <= lost_ms < m + 60 * MINUTE_MS for m in ms)
    m1 = tf_rows(marked, "1m")
    minute = dt.timedelta(minutes=1)
    after = m1.filter(pl.col("open_time").is_in([confirmed[-1] + minute, lost[-1] + minute]))
    assert after["history_joined"].to_list() == [True, False]


def test_signals_treat_null_indicators_as_rules_that_do_not_hold() -> None:
    """Every rule of ma_trend reads a moving average: with them NULL (not due), nothing
    signals; NULL is never read as 0 (a close above a 0 average would hold everywhere)."""
    from pipeline.strategy.signal_inputs import join_frames
    from pipeline.strategy.signals import compute_signals

    tfs = ["37m", "148m", "1d"]
    ms = to_ms(DAY0)
    candles = resample(synthetic.frame("BTCUSDT", ms, ms + 60 * DAY_MS, seed=SEED), tfs)
    ind = compute_indicators(candles)
    assert compute_signals(join_frames(candles, ind, tfs), "ma_trend").height > 0
    unknown = ind.with_columns(pl.lit(None, pl.Float64).alias(c) for c in ("sma_44", "sma_125"))
    assert compute_signals(join_frames(candles, unknown, tfs), "ma_trend").is_empty()

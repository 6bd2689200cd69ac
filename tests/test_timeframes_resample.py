"""1m to every timeframe: partition output == whole history, an independent grid, gaps, only
closed buckets, and the candle checks catching broken rows."""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np
import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline.candles.checks import check_candles, check_complete, check_counts, check_grid
from pipeline.candles.resample import KEYS, candles_schema, resample, resample_partition
from pipeline.candles.rollup import _reduce
from pipeline.candles.timeframes import owned_by, to_ms
from pipeline.config import Settings
from pipeline.replay import synthetic
from tests.conftest import DAY0, SEED

TIMEFRAMES = Settings().timeframes
DAYS = 60  # 2024-01-01 .. 2024-02-29: a month boundary and a leap-year February
UTC = dt.UTC


def t(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


@pytest.fixture(scope="module")
def klines() -> pl.DataFrame:
    start = to_ms(DAY0)
    return synthetic.frame("BTCUSDT", start, start + DAYS * 86_400_000, seed=SEED)


@pytest.fixture(scope="module")
def whole(klines: pl.DataFrame) -> pl.DataFrame:
    return resample(klines, TIMEFRAMES)


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(KEYS)


def test_all_timeframes_present_with_the_contract_schema(whole: pl.DataFrame) -> None:
    assert whole.schema == pl.Schema(candles_schema())
    assert whole["timeframe"].unique(maintain_order=True).to_list() == TIMEFRAMES
    counts = dict(whole.group_by("timeframe").len().iter_rows())
    assert counts["1m"] == DAYS * 1440 and counts["1d"] == DAYS and counts["1M"] == 2
    one = whole.filter(pl.col("timeframe") == "1m").drop("timeframe", "n_1m", "complete")
    assert_frame_equal(
        one,
        synthetic.frame("BTCUSDT", to_ms(DAY0), to_ms(DAY0) + DAYS * 86_400_000).select(
            one.columns
        ),
    )


def test_partition_by_partition_equals_one_pass_over_the_whole_history(
    klines: pl.DataFrame, whole: pl.DataFrame
) -> None:
    parts = [
        resample_partition(klines, DAY0.date() + dt.timedelta(days=d), TIMEFRAMES)
        for d in range(DAYS)
    ]
    assert_frame_equal(_sorted(pl.concat(parts)), _sorted(whole))
    # Each bucket exactly once: the 1M of February comes from Feb 29's partition only.
    feb = [p for p in parts if p.filter(pl.col("timeframe") == "1M").height]
    assert len(feb) == 2 and feb[-1]["close_time"].max() == t(2024, 3, 1)


def test_odd_grids_match_pandas_epoch_resample_across_day_and_month_boundaries(
    klines: pl.DataFrame, whole: pl.DataFrame
) -> None:
    window = (pl.col("open_time") >= t(2024, 1, 31, 18)) & (pl.col("open_time") < t(2024, 2, 1, 6))
    pdf = klines.filter(window).to_pandas().set_index("open_time")
    for tf, rule in [("37m", "37min"), ("148m", "148min")]:
        r = pdf.resample(rule, origin="epoch", label="left", closed="left")
        want = pd.DataFrame(
            {
                "open": r["open"].first(),
                "high": r["high"].max(),
                "low": r["low"].min(),
                "close": r["close"].last(),
                "volume": r["volume"].sum(),
                "n_1m": r["close"].count(),
            }
        )
        # Only buckets wholly inside the window (pandas also emits the partial edge ones).
        got = whole.filter(
            (pl.col("timeframe") == tf) & window & (pl.col("close_time") <= t(2024, 2, 1, 6))
        ).to_pandas()
        got = got.set_index("open_time")
        want = want.loc[got.index]
        assert len(got) >= 4 and want.index.min() < pd.Timestamp("2024-02-01", tz="UTC")
        for c in ["open", "high", "low", "close", "n_1m"]:
            assert np.array_equal(got[c].to_numpy(), want[c].to_numpy()), (tf, c)
        assert np.allclose(got["volume"].to_numpy(), want["volume"].to_numpy(), rtol=1e-12)
        # and against plain integer arithmetic on epoch ms
        starts = got.index.as_unit("ms").asi8
        assert np.all(starts % (int(tf[:-1]) * 60_000) == 0)
        assert pd.Timestamp("2024-02-01", tz="UTC") not in got.index  # no midnight reset


def test_weeks_from_monday_and_calendar_months(whole: pl.DataFrame) -> None:
    weeks = whole.filter(pl.col("timeframe") == "1w")
    assert weeks["open_time"].dt.weekday().unique().to_list() == [1]  # ISO Monday
    assert weeks["open_time"].min() == t(2024, 1, 1)
    months = whole.filter(pl.col("timeframe") == "1M").sort("open_time")
    assert months["open_time"].to_list() == [t(2024, 1, 1), t(2024, 2, 1)]
    assert months["n_1m"].to_list() == [31 * 1440, 29 * 1440]
    assert months["complete"].all()
    three = whole.filter(pl.col("timeframe") == "3d")
    assert (three["open_time"].dt.epoch("d") % 3 == 0).all()


def test_gaps_count_and_mark_incomplete_buckets(klines: pl.DataFrame) -> None:
    day = klines.filter(pl.col("open_time") < t(2024, 1, 2))
    drop = [t(2024, 1, 1, 10, 3), t(2024, 1, 1, 10, 4), t(2024, 1, 1, 23, 59)]
    gappy = day.filter(~pl.col("open_time").is_in(drop))
    out = resample(gappy, ["5m", "1h", "1d"], as_of=t(2024, 1, 2))
    five = out.filter((pl.col("timeframe") == "5m") & (pl.col("open_time") == t(2024, 1, 1, 10)))
    assert five.select("n_1m", "complete").row(0) == (3, False)
    hour = out.filter((pl.col("timeframe") == "1h") & (pl.col("open_time") == t(2024, 1, 1, 10)))
    assert hour.select("n_1m", "complete").row(0) == (58, False)
    full = out.filter((pl.col("timeframe") == "1h") & (pl.col("open_time") == t(2024, 1, 1, 9)))
    assert full.select("n_1m", "complete").row(0) == (60, True)
    d = out.filter(pl.col("timeframe") == "1d")
    assert d.select("n_1m", "complete").row(0) == (1437, False)
    # The day's last 5m bucket closed on time although its last minute is missing.
    assert out.filter(pl.col("timeframe") == "5m")["close_time"].max() == t(2024, 1, 2)
    # Without as_of, the newest 1m close (23:59) is the clock: that last 5m and the 1d are open.
    default = resample(gappy, ["5m", "1d"])
    assert default["close_time"].max() == t(2024, 1, 1, 23, 55)
    assert check_complete(out).passed


def test_only_closed_buckets_with_as_of_mid_bucket(klines: pl.DataFrame) -> None:
    as_of = t(2024, 1, 10, 10, 7)
    seen = klines.filter(pl.col("close_time") <= as_of)
    out = resample(seen, TIMEFRAMES, as_of=as_of)
    assert (out["close_time"] <= as_of).all()
    hourly = out.filter(pl.col("timeframe") == "1h")
    assert hourly["close_time"].max() == t(2024, 1, 10, 10)
    assert out.filter(pl.col("timeframe") == "5m")["close_time"].max() == t(2024, 1, 10, 10, 5)
    assert out.filter(pl.col("timeframe") == "1d")["close_time"].max() == t(2024, 1, 10)


def test_live_partition_grows_and_ends_equal_to_the_whole_history(
    klines: pl.DataFrame, whole: pl.DataFrame
) -> None:
    day = dt.date(2024, 1, 31)
    runs = []
    for as_of in [
        t(2024, 1, 31, 0, 1),
        t(2024, 1, 31, 10, 7),
        t(2024, 1, 31, 23, 59),
        t(2024, 2, 1),
    ]:
        runs.append(
            resample_partition(klines.filter(pl.col("close_time") <= as_of), day, TIMEFRAMES)
        )
        assert (runs[-1]["close_time"] <= as_of).all()
    assert [r.height for r in runs] == sorted(r.height for r in runs)
    for early, late in itertools.pairwise(runs):  # closed buckets never change
        assert_frame_equal(_sorted(early), _sorted(late.join(early.select(KEYS), on=KEYS)))
    assert_frame_equal(_sorted(runs[-1]), _sorted(whole.filter(owned_by(day))))
    assert runs[-1].filter(pl.col("timeframe") == "1M").height == 1


def test_multi_symbol_unsorted_input_gives_the_same_rows(klines: pl.DataFrame) -> None:
    part = klines.filter(pl.col("open_time") < t(2024, 1, 3))
    other = synthetic.frame("ETHUSDT", to_ms(DAY0), to_ms(t(2024, 1, 3)), seed=SEED)
    both = pl.concat([part, other]).sample(fraction=1.0, shuffle=True, seed=1)
    out = resample(both, ["1m", "37m", "1d"])
    for sym, src in [("BTCUSDT", part), ("ETHUSDT", other)]:
        assert_frame_equal(
            _sorted(out.filter(pl.col("symbol") == sym)),
            _sorted(resample(src, ["1m", "37m", "1d"])),
        )
    assert out.filter(pl.col("timeframe") == "1d").height == 4


def test_input_errors_are_clear(klines: pl.DataFrame) -> None:
    few = klines.head(10)
    with pytest.raises(ValueError, match="duplicate 1m candle BTCUSDT"):
        resample(pl.concat([few, few.head(1)]), ["5m"])
    off = few.with_columns(pl.col("open_time") + pl.duration(seconds=30))
    with pytest.raises(ValueError, match="not on the minute grid"):
        resample(off, ["5m"])
    with pytest.raises(ValueError, match="lack column"):
        resample(few.drop("high"), ["5m"])
    with pytest.raises(ValueError, match="not valid"):
        resample(few, ["5x"])
    empty = resample(few.clear(), TIMEFRAMES)
    assert empty.is_empty() and empty.schema == pl.Schema(candles_schema())
    no_turnover = resample(few.drop("turnover"), ["5m"])
    assert no_turnover["turnover"].is_null().all() and no_turnover.height == 2


def test_candle_checks_pass_on_good_partitions(klines: pl.DataFrame) -> None:
    day = dt.date(2024, 2, 29)
    out = resample_partition(klines, day, TIMEFRAMES)
    results = check_candles(out, klines, day, TIMEFRAMES)
    assert all(r.passed for r in results.values()), results


def test_candle_checks_catch_broken_rows(klines: pl.DataFrame) -> None:
    day = dt.date(2024, 1, 15)
    good = resample_partition(klines, day, TIMEFRAMES)
    row = (pl.col("timeframe") == "37m") & (
        pl.col("open_time") == good.filter(pl.col("timeframe") == "37m")["open_time"][3]
    )

    def broken(**changes: pl.Expr) -> pl.DataFrame:
        return good.with_columns(
            **{k: pl.when(row).then(v).otherwise(pl.col(k)) for k, v in changes.items()}
        )

    checks = check_candles(broken(high=pl.col("low") - 1), klines, day, TIMEFRAMES)
    assert not checks["ohlc_sane"].passed
    assert not check_candles(pl.concat([good, good.filter(row)]))["no_duplicates"].passed
    off = broken(
        open_time=pl.col("open_time") + pl.duration(minutes=1),
        close_time=pl.col("close_time") + pl.duration(minutes=1),
    )
    assert not check_grid(off).passed
    assert not check_grid(broken(close_time=pl.col("close_time") + pl.duration(minutes=1))).passed
    unknown = good.with_columns(timeframe=pl.when(row).then(pl.lit("7x")).otherwise("timeframe"))
    assert "7x" in check_grid(unknown).metadata["unknown_timeframes"]
    assert not check_complete(broken(complete=pl.lit(False))).passed
    assert not check_complete(broken(n_1m=pl.lit(40, dtype=pl.Int32))).passed
    lie = broken(n_1m=pl.lit(36, dtype=pl.Int32), complete=pl.lit(False))
    assert check_complete(lie).passed  # consistent with itself, but not with the 1m data:
    counts = check_counts(lie, klines, day, TIMEFRAMES)
    assert not counts.passed and "n_1m=36 but 37 1m rows" in counts.metadata["examples"][0]
    missing = good.filter(~row)
    counts = check_counts(missing, klines, day, TIMEFRAMES)
    assert not counts.passed and "37m: buckets hold" in counts.metadata["examples"][0]
    assert check_counts(good, klines, day, TIMEFRAMES).passed


def test_rolling_up_through_nested_timeframes_equals_aggregating_the_1m_rows(
    klines: pl.DataFrame, whole: pl.DataFrame
) -> None:
    """1M is built from 1d, 148m from 37m ...; each alone is built from the 1m rows."""
    for tf in ["148m", "12h", "1w", "1M"]:
        alone = resample(klines, [tf])
        nested = whole.filter(pl.col("timeframe") == tf)
        assert_frame_equal(alone.drop("volume", "turnover"), nested.drop("volume", "turnover"))
        assert np.allclose(alone["volume"], nested["volume"], rtol=1e-12)
        assert np.allclose(alone["turnover"], nested["turnover"], rtol=1e-12)


@pytest.mark.parametrize("k", [2, 3, 5, 8, 9, 15, 16, 37])
def test_fast_group_reductions_equal_reduceat_bit_for_bit(k: int) -> None:
    """The strided path for gap-free groups must add floats in reduceat's order, or a partition
    (no gaps) and the whole history (a gap elsewhere takes reduceat) would differ in the last
    bit of volume."""
    rng = np.random.default_rng(k)
    n = k * 500 + k // 2  # partial first and last groups, as a partition's edges
    values = rng.standard_normal(n) * 10 ** rng.uniform(-4, 4, n)
    starts = np.r_[0, np.arange(k - 1, n, k)]
    for op in (np.add, np.maximum, np.minimum):
        assert np.array_equal(_reduce(op, values, starts), op.reduceat(values, starts))
    counts = rng.integers(0, 60, n).astype(np.int32)
    assert np.array_equal(_reduce(np.add, counts, starts), np.add.reduceat(counts, starts))

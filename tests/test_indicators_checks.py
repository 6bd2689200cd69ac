"""Range and NULL checks catch corrupted values; the custom indicators mean what they say."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from pipeline.candles.resample import resample
from pipeline.candles.timeframes import DAY_MS, to_ms
from pipeline.indicators import (
    check_indicators,
    check_nulls,
    check_ranges,
    compute_indicators,
    load_spec,
)
from pipeline.replay import synthetic
from tests.conftest import DAY0, SEED

TFS = ["1m", "37m", "1h", "1d"]


@pytest.fixture(scope="module")
def candles() -> pl.DataFrame:
    start = to_ms(DAY0)
    return resample(synthetic.frame("BTCUSDT", start, start + 10 * DAY_MS, seed=SEED), TFS)


@pytest.fixture(scope="module")
def indicators(candles: pl.DataFrame) -> pl.DataFrame:
    return compute_indicators(candles)


def at(frame: pl.DataFrame, tf: str, i: int) -> pl.Expr:
    t = frame.filter(pl.col("timeframe") == tf)["open_time"][i]
    return (pl.col("timeframe") == tf) & (pl.col("open_time") == t)


def test_good_indicators_pass_every_check(candles: pl.DataFrame, indicators: pl.DataFrame) -> None:
    results = check_indicators(candles, indicators)
    assert set(results) == {"ranges", "nulls_where_not_due", "no_lookahead"}
    assert all(r.passed for r in results.values()), results


@pytest.mark.parametrize(
    ("column", "value", "label"),
    [
        ("rsi_14", 100.5, "rsi_14 > 100"),
        ("stoch_k", -0.1, "stoch_k < 0"),
        ("stoch_d", 250.0, "stoch_d > 100"),
        ("adx_14", 101.0, "adx_14 > 100"),
        ("atr_14", -1.0, "atr_14 < 0"),
        ("bb_upper", 1.0, "bb_upper < bb_middle"),
        ("bb_lower", 1e9, "bb_middle < bb_lower"),
        ("ema_9", float("nan"), "ema_9 NaN/inf"),
        ("vwap", float("inf"), "vwap NaN/inf"),
        ("volume_ratio", -2.0, "volume_ratio < 0"),
    ],
)
def test_range_check_catches_a_corrupted_value(
    indicators: pl.DataFrame, column: str, value: float, label: str
) -> None:
    row = at(indicators, "37m", 200)
    broken = indicators.with_columns(
        pl.when(row).then(value).otherwise(pl.col(column)).alias(column)
    )
    result = check_ranges(broken)
    assert not result.passed
    assert result.metadata["violations"] == {label: 1}
    assert "37m" in result.metadata["examples"][0]


@pytest.mark.parametrize(
    ("column", "value", "passes"),
    [
        # What TA-Lib's running sums gave on the real Bybit BTCUSDT month: rounding noise.
        ("stoch_k", pl.lit(100.00000000000047), True),
        ("stoch_k", pl.lit(-3.1e-13), True),
        ("rsi_14", pl.lit(100 + 1e-8), True),
        ("volume_ma_20", pl.lit(-1e-12), True),
        ("bb_upper", pl.col("bb_middle") * (1 - 1e-13), True),
        # Real violations, however small next to the scale's noise, still fail.
        ("stoch_k", pl.lit(100.001), False),
        ("stoch_d", pl.lit(-1e-6), False),
        ("volume_ma_20", pl.lit(-1e-3), False),
        ("bb_upper", pl.col("bb_middle") - 0.5, False),
        ("bb_lower", pl.col("bb_middle") + 0.5, False),
    ],
)
def test_range_check_allows_rounding_noise_only(
    indicators: pl.DataFrame, column: str, value: pl.Expr, passes: bool
) -> None:
    from pipeline.quality.checks import FLOAT_RTOL

    assert FLOAT_RTOL == 1e-9  # the tolerance README states
    row = at(indicators, "1m", 3000)
    noisy = indicators.with_columns(
        pl.when(row).then(value).otherwise(pl.col(column)).alias(column)
    )
    assert check_ranges(noisy).passed is passes, check_ranges(noisy).description


def test_null_check_catches_holes_and_values_without_warmup(
    candles: pl.DataFrame, indicators: pl.DataFrame
) -> None:
    hole = indicators.with_columns(
        pl.when(at(indicators, "1m", 5000)).then(None).otherwise(pl.col("ema_50")).alias("ema_50")
    )
    result = check_nulls(candles, hole)
    assert not result.passed and result.metadata["null_where_due"] == {"ema_50": 1}
    early = indicators.with_columns(pl.col("sma_200").fill_null(1.0))
    result = check_nulls(candles, early)
    assert not result.passed
    # 199 warm-up bars per series, except 1d: only 10 bars, all of them before warm-up; and
    # 37m's first bucket began before the data (epoch grid), so it is not history either.
    assert result.metadata["value_before_warmup"] == {"sma_200": 3 * 199 + 10 + 1}
    orphan = pl.concat(
        [indicators, indicators.tail(1).with_columns(pl.col("open_time") + pl.duration(days=1))]
    )
    assert check_nulls(candles, orphan).metadata["orphans"] == 1


def test_vwap_resets_at_midnight_utc(candles: pl.DataFrame, indicators: pl.DataFrame) -> None:
    c = candles.filter(pl.col("timeframe") == "1h").with_columns(
        tp=(pl.col("high") + pl.col("low") + pl.col("close")) / 3,
        day=pl.col("open_time").dt.date(),
    )
    want = c.with_columns(
        vwap=(pl.col("tp") * pl.col("volume")).cum_sum().over("day")
        / pl.col("volume").cum_sum().over("day")
    )
    got = indicators.filter(pl.col("timeframe") == "1h")
    assert np.allclose(got["vwap"].to_numpy(), want["vwap"].to_numpy(), rtol=1e-12)
    first = got.filter(pl.col("open_time").dt.hour() == 0)["vwap"].to_numpy()
    assert np.allclose(first, c.filter(pl.col("open_time").dt.hour() == 0)["tp"].to_numpy())
    # A 37m bar spanning midnight opens the new day's session; a 1d bar is its own session.
    # (The first 37m bar began before the data: not history, so NULL; see the next test.)
    m37 = candles.filter((pl.col("timeframe") == "37m") & pl.col("complete"))
    straddle = m37.filter(
        (pl.col("open_time").dt.date() != pl.col("close_time").dt.date())
        & (pl.col("close_time").dt.time() != dt.time(0))
    )
    assert straddle.height >= 8
    keyed = straddle.join(indicators, on=["symbol", "timeframe", "open_time"])
    tp = (keyed["high"] + keyed["low"] + keyed["close"]) / 3
    assert np.allclose(keyed["vwap"].to_numpy(), tp.to_numpy())
    daily = candles.filter(pl.col("timeframe") == "1d").join(
        indicators, on=["symbol", "timeframe", "open_time"]
    )
    assert np.allclose(daily["vwap"], (daily["high"] + daily["low"] + daily["close"]) / 3)


def test_obv_squeeze_width_and_volume_ratio_definitions(
    candles: pl.DataFrame, indicators: pl.DataFrame
) -> None:
    c = candles.filter(pl.col("timeframe") == "1m")
    got = indicators.filter(pl.col("timeframe") == "1m")
    signed = (pl.col("close").diff().sign() * pl.col("volume")).alias("s")
    obv = c.select(signed.rolling_sum(100))["s"].to_numpy()
    assert np.allclose(got["obv"].to_numpy()[100:], obv[100:], rtol=1e-9, atol=1e-6)
    width = (got["bb_upper"] - got["bb_lower"]) / got["bb_middle"]
    assert np.allclose(got["bb_width"].to_numpy()[19:], width.to_numpy()[19:], rtol=1e-12)
    lowest = got.select(pl.col("bb_width").rolling_min(125))["bb_width"]
    squeeze = (got["bb_width"] <= lowest).to_numpy()[143:]
    assert np.array_equal(got["bb_squeeze"].to_numpy()[143:], squeeze) and squeeze.any()
    ratio = (c["volume"] / got["volume_ma_20"]).to_numpy()[19:]
    assert np.allclose(got["volume_ratio"].to_numpy()[19:], ratio, rtol=1e-12)
    ma = c.select(pl.col("volume").rolling_mean(20))["volume"].to_numpy()
    assert np.allclose(got["volume_ma_20"].to_numpy()[19:], ma[19:], rtol=1e-9)


def test_zero_volume_and_flat_prices_stay_in_range(candles: pl.DataFrame) -> None:
    """A dead market (no trades, no moves) must not produce NaN where values are due."""
    dead = (
        candles.filter(pl.col("timeframe") == "1m")
        .head(3000)
        .with_columns(pl.lit(100.0).alias(c) for c in ["open", "high", "low", "close"])
        .with_columns(volume=pl.lit(0.0), turnover=pl.lit(0.0))
    )
    ind = compute_indicators(dead)
    assert check_ranges(ind).passed and check_nulls(dead, ind).passed
    assert ind["volume_ratio"].drop_nulls().unique().to_list() == [0.0]
    assert ind["vwap"].unique().to_list() == [100.0]


def test_duplicates_and_missing_columns_are_refused(candles: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        compute_indicators(pl.concat([candles, candles.head(1)]))
    with pytest.raises(ValueError, match="lack column"):
        compute_indicators(candles.drop("volume"))
    empty = compute_indicators(candles.clear())
    assert empty.is_empty() and empty.columns[4:] == load_spec().columns


@pytest.mark.parametrize(("big", "threads"), [(0, 1), (0, 2), (0, 5), (300, 3), (10**9, 2)])
def test_chunking_and_threads_do_not_change_the_output(
    candles: pl.DataFrame,
    indicators: pl.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
    big: int,
    threads: int,
) -> None:
    """Long series get their own chunk and their entries spread over threads (bb_width waits
    for bbands, squeeze for bb_width ...), runs of short ones a joint chunk on this thread:
    same rows, same order, same bits."""
    import pipeline.indicators.compute as ind

    monkeypatch.setattr(ind, "BIG_SERIES", big)
    assert compute_indicators(candles, threads=threads).equals(indicators)
    assert compute_indicators(candles, threads=1).equals(indicators)


def test_each_symbol_is_its_own_series(candles: pl.DataFrame, indicators: pl.DataFrame) -> None:
    start = to_ms(DAY0)
    eth = resample(synthetic.frame("ETHUSDT", start, start + 10 * DAY_MS, seed=SEED), TFS)
    both = compute_indicators(pl.concat([eth, candles]).sample(fraction=1.0, seed=2, shuffle=True))
    keys = ["symbol", "timeframe", "open_time"]
    btc = both.filter(pl.col("symbol") == "BTCUSDT").sort(keys)
    assert btc.equals(indicators.sort(keys))
    assert (
        both.filter(pl.col("symbol") == "ETHUSDT")
        .sort(keys)
        .equals(compute_indicators(eth).sort(keys))
    )

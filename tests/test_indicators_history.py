"""No lookahead on every timeframe, warm-up vs full history, and partition == whole history."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml

from pipeline.candles.build import with_exchange
from pipeline.candles.resample import KEYS, resample
from pipeline.candles.timeframes import DAY_MS, owned_by, owned_where, parse_timeframe, to_ms
from pipeline.config import Settings
from pipeline.indicators import (
    CUSTOM,
    SPEC_PATH,
    Context,
    Custom,
    IndicatorSpec,
    check_lookahead,
    check_nulls,
    check_warmup,
    compute_indicators,
    indicator_input_window,
    indicators_for_partition,
    load_spec,
    spec_from_dict,
)
from pipeline.replay import synthetic
from tests.conftest import DAY0, SEED

TIMEFRAMES = Settings().timeframes
DAYS = 60
LONG = [tf for tf in TIMEFRAMES if parse_timeframe(tf).minutes >= 1440]
UTC = dt.UTC


def short_spec(extra: dict[str, Any] | None = None) -> IndicatorSpec:
    """The default set with periods of 2-3 bars, so even 1M has values within two years."""
    data = copy.deepcopy(yaml.safe_load(SPEC_PATH.read_text()))
    data["tolerance"] = 1e-2
    small = {
        "fastperiod": 2,
        "slowperiod": 3,
        "signalperiod": 2,
        "slowk_period": 2,
        "slowd_period": 2,
        "lookback": 3,
        "window": 3,
    }
    for entry in data["indicators"].values():
        for k in entry.get("params", {}):
            if k in small:
                entry["params"][k] = small[k]
            elif k.endswith("period"):
                entry["params"][k] = 2
    data["indicators"].update(extra or {})
    return spec_from_dict(data)


@pytest.fixture(scope="module")
def candles() -> pl.DataFrame:
    """60 days (2024-01-01 .. 02-29) on every timeframe."""
    start = to_ms(DAY0)
    return resample(synthetic.frame("BTCUSDT", start, start + DAYS * DAY_MS, seed=SEED), TIMEFRAMES)


@pytest.fixture(scope="module")
def long_candles() -> pl.DataFrame:
    """Two years on the timeframes of a day and longer (24 monthly bars)."""
    start, end = to_ms(dt.date(2022, 1, 1)), to_ms(dt.date(2024, 1, 1))
    return resample(synthetic.frame("BTCUSDT", start, end, seed=SEED), LONG)


def series(frame: pl.DataFrame, tf: str) -> pl.DataFrame:
    return frame.filter(pl.col("timeframe") == tf)


@pytest.mark.parametrize("tf", TIMEFRAMES)
def test_no_lookahead_on_every_timeframe(
    tf: str, candles: pl.DataFrame, long_candles: pl.DataFrame
) -> None:
    src = series(long_candles if tf in LONG else candles, tf)
    for spec in (short_spec(), load_spec()):
        ind = compute_indicators(src, spec)
        result = check_lookahead(src, ind, spec, per_series=12, seed=3)
        assert result.passed, result.metadata
        assert check_nulls(src, ind, spec).passed
    # The short set gives every column values here, so the comparison is not of NULLs only.
    filled = compute_indicators(src, short_spec()).drop([*KEYS, "close_time"])
    assert all(filled[c].drop_nulls().len() >= 3 for c in filled.columns), filled.null_count()


def _peek(ctx: Context, close: np.ndarray) -> np.ndarray:
    """A leaky indicator: the next bar's close (what shift(-1) does by accident)."""
    return np.r_[close[1:], np.nan]


def _lagged(ctx: Context, close: np.ndarray) -> np.ndarray:
    return np.r_[np.nan, close[:-1]]


@pytest.mark.parametrize("tf", ["1m", "37m", "1d", "1M"])
def test_a_leaky_indicator_is_caught(
    tf: str, candles: pl.DataFrame, long_candles: pl.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(CUSTOM, "peek", Custom(_peek, ("close",), scale="price"))
    monkeypatch.setitem(CUSTOM, "lagged", Custom(_lagged, ("close",), lambda p: 1, scale="price"))
    src = series(long_candles if tf in LONG else candles, tf)
    honest = short_spec({"lagged": {"fn": "lagged"}})
    assert check_lookahead(src, compute_indicators(src, honest), honest).passed
    leaky = short_spec({"peek": {"fn": "peek"}})
    result = check_lookahead(src, compute_indicators(src, leaky), leaky, per_series=4)
    assert not result.passed
    assert all(e.endswith("['peek']") for e in result.metadata["examples"])


def test_a_stored_value_that_changed_is_caught(candles: pl.DataFrame) -> None:
    src = series(candles, "15m")
    ind = compute_indicators(src, load_spec())
    newest = pl.col("open_time") == ind["open_time"].max()
    bumped = ind.with_columns(pl.when(newest).then(pl.col("ema_21") * 1.001).otherwise("ema_21"))
    result = check_lookahead(src, bumped, load_spec(), per_series=1)
    assert not result.passed and "ema_21" in result.metadata["examples"][0]


@pytest.mark.parametrize("tf", ["1m", "5m", "15m", "37m"])
def test_derived_warmup_matches_full_history_within_tolerance(
    tf: str, candles: pl.DataFrame
) -> None:
    src = series(candles, tf)
    assert src.height > load_spec().max_warmup + 500
    result = check_warmup(src, load_spec(), per_series=6, seed=11)
    assert result.passed, result.metadata


def test_an_underestimated_warmup_fails_the_warmup_check(candles: pl.DataFrame) -> None:
    data = {
        "tolerance": 1e-6,
        "indicators": {"ema_200": {"fn": "EMA", "params": {"timeperiod": 200}, "smoothing": [0.2]}},
    }
    spec = spec_from_dict(data)
    assert spec.warmup["ema_200"] < 300  # the lie
    result = check_warmup(series(candles, "5m"), spec, per_series=4)
    assert not result.passed


def test_values_start_exactly_after_their_warmup(candles: pl.DataFrame) -> None:
    spec = load_spec()
    ind = compute_indicators(series(candles, "1m"), spec)
    for col, w in spec.warmup.items():
        if col == "vwap":
            continue
        first = ind[col].is_not_null().arg_true()[0]
        assert first == w, col
        assert ind[col][w:].null_count() == 0, col
    assert ind["vwap"].null_count() == 0  # the data starts at a session start (00:00)
    late = compute_indicators(series(candles, "1m").slice(600), spec)
    assert late["vwap"][: 1440 - 600].null_count() == 1440 - 600  # partial first session
    assert late["vwap"][1440 - 600 :].null_count() == 0


def _assert_close(part: pl.DataFrame, whole: pl.DataFrame, spec: IndicatorSpec) -> None:
    """Same rows and NULLs; finite-window values equal to rounding, recursive within tolerance."""
    assert part.height == whole.height
    joined = part.join(whole, on=KEYS, suffix="_w")
    assert joined.height == part.height
    closes = joined["close"].to_numpy()
    for ind in spec.indicators:
        for c in ind.outputs:
            a, b = joined[c], joined[f"{c}_w"]
            assert (a.is_null() == b.is_null()).all(), c
            a, b = (
                a.drop_nulls().cast(pl.Float64).to_numpy(),
                b.drop_nulls().cast(pl.Float64).to_numpy(),
            )
            if ind.boolean:
                assert np.array_equal(a, b), c
            elif ind.smoothing:
                scale = (
                    closes[joined[c].is_not_null().to_numpy()] if ind.scale == "price" else 100.0
                )
                assert np.all(np.abs(a - b) <= spec.tolerance * scale), c
            else:
                assert np.allclose(a, b, rtol=1e-9, atol=1e-9 * np.abs(b).mean()), c


def test_partition_by_partition_equals_whole_history(candles: pl.DataFrame) -> None:
    spec = load_spec()
    whole = compute_indicators(candles, spec)
    parts = []
    for d in range(DAYS):
        day = DAY0.date() + dt.timedelta(days=d)
        reads = []
        for tf in TIMEFRAMES:
            start, end = indicator_input_window(day, tf, spec)
            reads.append(
                series(candles, tf).filter(
                    (pl.col("open_time") >= start) & (pl.col("close_time") <= end)
                )
            )
        parts.append(indicators_for_partition(pl.concat(reads), day, spec))
    together = pl.concat(parts)
    assert together.select(KEYS).is_unique().all()
    with_close = together.join(candles.select([*KEYS, "close"]), on=KEYS)
    _assert_close(with_close, whole, spec)
    # Late partitions have their full warm-up on the short timeframes: real values, not NULLs.
    last = parts[-1].filter(pl.col("timeframe") == "1m")
    assert last.drop([*KEYS, "close_time"]).null_count().sum_horizontal()[0] == 0


def test_a_partition_never_reads_bars_closing_after_its_day(candles: pl.DataFrame) -> None:
    spec = load_spec()
    day = dt.date(2024, 2, 14)  # a Wednesday: its week's 1w bar closes next Monday
    honest = indicators_for_partition(candles, day, spec)
    end = dt.datetime(2024, 2, 15, tzinfo=UTC)
    wild = candles.with_columns(
        pl.when(pl.col("close_time") > end).then(pl.col(c) * 10).otherwise(pl.col(c))
        for c in ["open", "high", "low", "close", "volume"]
    )
    assert indicators_for_partition(wild, day, spec).equals(honest)
    assert (
        honest.filter(~owned_by(day)).is_empty()
        and honest.height == candles.filter(owned_by(day)).height
    )


def test_a_partition_through_the_warehouse_gives_the_same_rows(
    candles: pl.DataFrame, home: Path
) -> None:
    """Candles written to DuckDB and read back with `indicator_input_window` (TIMESTAMPTZ round
    trip, whatever zone DuckDB hands back) feed the partition exactly like the frame itself."""
    from warehouse.store import Warehouse

    wh = Warehouse(home / "wh.duckdb", replica_sync=False)
    spec = load_spec()
    day = dt.date(2024, 2, 29)
    wh.replace("candles", with_exchange(candles, "bybit"), "true")
    reads, direct = [], []
    for tf in TIMEFRAMES:
        start, end = indicator_input_window(day, tf, spec)
        sql = (
            "SELECT * EXCLUDE (exchange) FROM candles"
            " WHERE timeframe = ? AND open_time >= ? AND close_time <= ?"
        )
        reads.append(wh.query(sql, [tf, start, end]))
        direct.append(
            series(candles, tf).filter(
                (pl.col("open_time") >= start) & (pl.col("close_time") <= end)
            )
        )
    assert reads[0].height == direct[0].height > spec.max_warmup
    got = indicators_for_partition(pl.concat(reads), day, spec)
    want = indicators_for_partition(pl.concat(direct), day, spec)
    assert got.sort(KEYS).equals(want.sort(KEYS))
    sql, params = owned_where(day)
    assert wh.replace("indicators", with_exchange(got, "bybit"), sql, params) == got.height
    back = wh.query("SELECT * FROM indicators ORDER BY timeframe, open_time")
    assert back.height == got.height and back["bb_squeeze"].dtype == pl.Boolean

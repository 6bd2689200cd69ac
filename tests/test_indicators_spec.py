"""The indicator registry: the contract columns, derived warm-up, and clear errors."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import talib
import yaml

from pipeline.candles.resample import resample
from pipeline.candles.timeframes import to_ms
from pipeline.indicators import (
    RATIO_GAIN,
    SPEC_PATH,
    compute_indicators,
    convergence_bars,
    load_spec,
    spec_from_dict,
    warmup_bars,
)
from pipeline.replay import synthetic
from tests.conftest import DAY0, SEED

MIGRATION = (
    Path(__file__).resolve().parent.parent / "warehouse/migrations/0002_candles_indicators.sql"
)


def default_data() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(SPEC_PATH.read_text()))


def with_entry(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    data = default_data()
    data["indicators"][name] = entry
    return data


@pytest.fixture(scope="module")
def candles() -> pl.DataFrame:
    start = to_ms(DAY0)
    return resample(synthetic.frame("BTCUSDT", start, start + 3 * 86_400_000, seed=SEED), ["1m"])


def test_default_set_is_exactly_the_warehouse_contract() -> None:
    sql = MIGRATION.read_text()
    table = sql[sql.index("CREATE TABLE indicators") :]
    cols = re.findall(r"^\s+(\w+)\s+(DOUBLE|BOOLEAN)", table, flags=re.M)
    assert load_spec().columns == [c for c, _ in cols]
    boolean = {i.outputs[0] for i in load_spec().indicators if i.boolean}
    assert boolean == {c for c, t in cols if t == "BOOLEAN"} == {"bb_squeeze"}


def test_finite_windows_need_exactly_talibs_lookback() -> None:
    w = warmup_bars()
    assert w["sma_200"] == 199 == talib.abstract.Function("SMA", timeperiod=200).lookback
    assert w["sma_44"] == 43 and w["bb_upper"] == 19 and w["volume_ma_20"] == 19
    assert w["stoch_k"] == w["stoch_d"] == 17  # 14 + 3 + 3 - 3
    assert w["bb_width"] == 19 and w["bb_squeeze"] == 19 + 124  # lowest of the last 125 widths
    assert w["volume_ratio"] == 19 and w["obv"] == 100 and w["vwap"] == 0


def test_recursive_ones_add_the_bars_to_forget_their_seed() -> None:
    w, tol = warmup_bars(), load_spec().tolerance
    k = math.ceil(math.log(tol) / math.log(1 - 2 / 201))  # (1 - alpha)^k < tol
    assert w["ema_200"] == 199 + k == 1581
    assert w["ema_9"] == 8 + math.ceil(math.log(tol) / math.log(1 - 2 / 10))
    # RSI is a ratio of Wilder averages: the tolerance is divided by RATIO_GAIN.
    assert w["rsi_14"] == 14 + math.ceil(math.log(tol / RATIO_GAIN) / math.log(1 - 1 / 14))
    # MACD's signal line smooths the slow EMA again: the cascade needs more than either stage.
    assert w["macd_signal"] == w["macd"] == w["macd_hist"] > 33 + convergence_bars([2 / 27], tol)
    assert w["adx_14"] > w["atr_14"] > 14


def test_convergence_formula() -> None:
    assert convergence_bars([], 1e-6) == 0
    assert convergence_bars([0.5], 1e-3) == 10  # 0.5^10 < 1e-3 <= 0.5^9
    assert 0.5**10 < 1e-3 <= 0.5**9
    assert convergence_bars([0.5, 0.5], 1e-3) > convergence_bars([0.5], 1e-3)
    assert convergence_bars([0.1], 1e-9) > convergence_bars([0.1], 1e-6)


def test_talib_unstable_period_only_adds_to_the_warmup() -> None:
    before = warmup_bars()["ema_21"]
    talib.set_unstable_period("EMA", 40)
    try:
        assert spec_from_dict(default_data()).warmup["ema_21"] == before + 40
    finally:
        talib.set_unstable_period("EMA", 0)


def test_adding_an_indicator_is_one_entry(candles: pl.DataFrame) -> None:
    spec = spec_from_dict(with_entry("wma_10", {"fn": "WMA", "params": {"timeperiod": 10}}))
    assert spec.warmup["wma_10"] == 9 and spec.columns[-1] == "wma_10"
    out = compute_indicators(candles, spec)
    want = talib.WMA(candles["close"].to_numpy(), timeperiod=10)
    assert out["wma_10"].null_count() == 9
    assert np.allclose(out["wma_10"].to_numpy()[9:], want[9:], rtol=0, atol=0)
    # Derived entries chain: warm-up adds up along the inputs.
    data = with_entry("rsi_of_volume", {"fn": "RSI", "inputs": ["volume_ma_20"], "params": {}})
    spec = spec_from_dict(data)
    assert spec.warmup["rsi_of_volume"] == 19 + spec.warmup["rsi_14"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"fn": "NOPE"}, "neither a TA-Lib function"),
        ({"fn": "SMA", "params": {"period": 3}}, r"no parameter\(s\) \['period'\]"),
        ({"fn": "SMA", "params": {"timeperiod": 2.5}}, "must be int"),
        ({"fn": "SMA", "params": {"timeperiod": 0}}, "rejects the parameters"),
        ({"fn": "AROON"}, "gives 2 outputs; name them"),
        ({"fn": "SMA", "inputs": ["vwap2"]}, "neither a candle column"),
        ({"fn": "SMA", "outputs": ["ema_9"]}, "already defined"),
        ({"fn": "OBV"}, "depends on all history"),  # cumulative from the first bar
        ({"fn": "KAMA"}, "depends on all history"),  # recursive, smoothing unknown
        ({"fn": "BBANDS", "params": {"matype": 1}, "outputs": ["u", "m", "l"]}, "all history"),
        ({"fn": "ratio", "params": {"window": 3}}, "takes params"),
        ({"fn": "SMA", "scale": "range"}, "scale must be"),
        ({"fn": "SMA", "colour": "red"}, "unknown key"),
        ({"params": {}}, "needs at least `fn`"),
    ],
)
def test_bad_entries_are_rejected_with_the_fix(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec_from_dict(with_entry("new_one", entry))


def test_an_unknown_recursive_function_is_accepted_with_its_smoothing() -> None:
    spec = spec_from_dict(with_entry("kama", {"fn": "KAMA", "smoothing": [(2 / 31) ** 2]}))
    assert spec.warmup["kama"] > 30 + 3000


def test_input_from_a_later_entry_and_bad_tolerance_are_rejected() -> None:
    data = default_data()
    data["indicators"] = {"a": {"fn": "SMA", "inputs": ["b"]}, "b": {"fn": "SMA"}}
    with pytest.raises(ValueError, match="input 'b'"):
        spec_from_dict(data)
    with pytest.raises(ValueError, match="tolerance"):
        spec_from_dict({**default_data(), "tolerance": 2})
    with pytest.raises(ValueError, match="must map names"):
        spec_from_dict({"indicators": []})


def test_load_spec_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "ind.yaml"
    bad.write_text("indicators: {x: {fn: SMA, params: {timeperiod: -4}}}\n")
    with pytest.raises(ValueError, match=rf"{bad}: indicator 'x'"):
        load_spec(bad)
    bad.write_text("indicators: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_spec(bad)
    good = tmp_path / "good.yaml"
    good.write_text("tolerance: 1.0e-4\nindicators: {sma_3: {fn: SMA, params: {timeperiod: 3}}}\n")
    assert load_spec(good).warmup == {"sma_3": 2} and load_spec(good).tolerance == 1e-4

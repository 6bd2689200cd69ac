"""The condition language (pipeline.strategy.rules) and personality files: semantics, exact
windows, and
one test per kind of mistake in a file, each naming the file, the rule and what is wrong."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pipeline.config import Settings
from pipeline.strategy.bars import (
    Bars,
    rolling_max,
    rolling_mean,
    rolling_min,
    rolling_std,
    rolling_sum,
)
from pipeline.strategy.personality import (
    PERSONALITY_DIR,
    PersonalityError,
    load_personalities,
    load_personality,
    personality_from_dict,
)
from pipeline.strategy.rules import RuleError, Schema, compile_condition

TIMEFRAMES = Settings().timeframes
COLUMNS = {"open", "high", "low", "close", "volume", "ema_9", "ema_21", "rsi_14", "bb_squeeze"}
SCHEMA = Schema("5m", ("5m", "1h"), frozenset(COLUMNS), frozenset({"bb_squeeze"}))
NAN = np.nan


def run(text: str, cols: dict[str, list[float]], htf: dict[str, list[float]] | None = None):
    node = compile_condition(text, SCHEMA)
    n = len(next(iter(cols.values())))

    def fetch(tf: str | None, name: str) -> np.ndarray:
        src = cols if tf is None else (htf or {})
        return np.asarray(src[name], dtype=np.float64)

    return node, node(Bars(n, fetch))


def same(a: np.ndarray, b: list[float]) -> bool:
    return np.array_equal(a, np.asarray(b, dtype=np.float64), equal_nan=True)


# -- semantics ------------------------------------------------------------------------------------


def test_crosses_and_prev():
    cols = {"ema_9": [1, 2, 3, 2, 2, 4], "ema_21": [2, 2, 2, 2, 3, 3]}
    node, up = run("crosses_above(ema_9, ema_21)", cols)
    assert same(up, [0, 0, 1, 0, 0, 1])  # false now: false, whatever before
    assert node.kind == "bool" and node.lookback == 1
    _, down = run("crosses_below(ema_9, ema_21)", cols)
    assert same(down, [NAN, 0, 0, 0, 1, 0])
    node, pv = run("prev(ema_9, 2)", cols)
    assert same(pv, [NAN, NAN, 1, 2, 3, 2]) and node.lookback == 2


def test_three_valued_logic_unknown_never_holds():
    cols = {"rsi_14": [NAN, 20, 50], "close": [1, 1, 1]}
    _, v = run("not (rsi_14 < 30)", cols)
    assert same(v, [NAN, 0, 1])
    _, v = run("rsi_14 < 30 or close > 0", cols)
    assert same(v, [1, 1, 1])  # true or unknown is true
    _, v = run("rsi_14 < 30 and close > 0", cols)
    assert same(v, [NAN, 1, 0])  # true and unknown is unknown
    _, v = run("20 <= rsi_14 < 50", cols)
    assert same(v, [NAN, 1, 0])
    _, v = run("close / (rsi_14 - 20)", cols)
    assert same(v, [NAN, NAN, 1 / 30])  # division by zero is unknown, not infinite


def test_windows_and_booleans():
    cols = {"bb_squeeze": [1, 0, 0, 0, NAN], "close": [5, 4, 3, 9, 1]}
    node, v = run("within(bb_squeeze, 3)", cols)
    assert same(v, [NAN, NAN, 1, 0, NAN]) and node.lookback == 2
    _, v = run("held(close > 2, 2)", cols)
    assert same(v, [NAN, 1, 1, 1, 0])
    _, v = run("highest(close, 2) - lowest(close, 2)", cols)
    assert same(v, [NAN, 1, 1, 6, 8])
    _, v = run("rising(close) or falling(close, 2)", cols)
    assert same(v, [NAN, NAN, 1, 1, 1])  # false or unknown is unknown


def test_higher_timeframe_reference_and_lookback():
    node, v = run("close > 1h.ema_21", {"close": [1, 5]}, {"ema_21": [2, 2]})
    assert same(v, [0, 1])
    assert node.refs == frozenset({(None, "close"), ("1h", "ema_21")})
    node, _ = run("crosses_above(mean(close, 20), prev(ema_9, 3))", {"close": [1], "ema_9": [1]})
    assert node.lookback == 20  # mean reads 19 back, the cross one more; prev 3 + 1


def test_window_functions_are_exact_from_any_start():
    """A value depends only on its window: computed on a suffix, the bits are the same."""
    rng = np.random.default_rng(7)
    x = 40_000 + np.cumsum(rng.standard_normal(3_000)) * 17.3
    x[rng.integers(0, 3_000, 30)] = np.nan
    for fn, n in [
        (rolling_sum, 20),
        (rolling_mean, 384),
        (rolling_std, 48),
        (rolling_max, 5),
        (rolling_max, 96),
        (rolling_min, 200),
    ]:
        whole = fn(x, n)
        for start in (1, 17, 999):
            part = fn(x[start:], n)
            assert np.array_equal(part[n - 1 :], whole[start + n - 1 :], equal_nan=True), fn


def test_rolling_extremes_match_the_definition():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(500)
    x[rng.integers(0, 500, 10)] = np.nan
    for n in (1, 3, 16, 17, 60):
        want = np.full(500, np.nan)
        want[n - 1 :] = np.lib.stride_tricks.sliding_window_view(x, n).max(axis=1)
        assert np.array_equal(rolling_max(x, n), want, equal_nan=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ema_8 > ema_21", "unknown column 'ema_8'"),
        ("crosses_over(ema_9, ema_21)", "unknown function 'crosses_over'"),
        ("close > 4h.ema_21", "unknown timeframe '4h'"),
        ("close > 1h", "a timeframe must be followed by a column"),
        ("close.__class__", "only <timeframe>.<column> may use a dot"),
        ("__import__('os')", "unknown function '__import__'"),
        ("close > 'abc'", "constant 'abc' is not allowed"),
        ("close[1] > 0", "Subscript is not allowed"),
        ("close ** 2 > 0", "operator Pow is not allowed"),
        ("(lambda: 1)()", "only plain function names can be called"),
        ("close if rsi_14 else open", "IfExp is not allowed"),
        ("rsi_14 and close", "each side of and/or must be a condition"),
        ("(close > 1) + 1", "arithmetic operands must be a number"),
        ("prev(close, 0)", "must be a whole number of bars"),
        ("prev(close, 2.5)", "must be a whole number of bars"),
        ("mean(close)", "needs its window `n`"),
        ("within(close, 3)", "argument 1 of within must be a condition"),
        ("squeeze_breakout()", "reads column 'bb_upper', which is not configured"),
        ("swing_failure(n=0)", "swing_failure: bad parameters"),
        ("squeeze_breakout(bars=3)", "has no parameter 'bars'"),
        ("close >", "cannot parse"),
        ("", "the condition is empty"),
    ],
)
def test_condition_errors(text: str, message: str):
    with pytest.raises(RuleError, match=None) as err:
        compile_condition(text, SCHEMA)
    assert message in str(err.value)


# -- personality files ---------------------------------------------------------------------------


GOOD: dict[str, Any] = {
    "name": "demo",
    "timeframes": ["5m", "1h"],
    "threshold": 0.5,
    "cooldown": "30m",
    "emit_degraded": False,
    "regimes": {"trend": "adx_14 >= 25", "flat": True},
    "rules": [
        {
            "name": "cross_up",
            "when": "crosses_above(ema_9, ema_21)",
            "direction": "long",
            "weight": 2,
            "regimes": {"flat": 0.5},
            "reason": "EMA 9 {ema_9:,.1f} crossed above EMA 21 {ema_21:,.1f}",
        },
        {
            "name": "trend_gate",
            "when": "close > 1h.sma_200",
            "direction": "long",
            "gate": True,
            "reason": "above the 1h SMA 200 ({1h.sma_200:,.0f})",
        },
        {
            "name": "macd_side",
            "when": "sign(macd_hist)",
            "direction": "both",
            "weight": 1,
            "reason": "MACD histogram {macd_hist:+.2f}",
        },
    ],
}


def load(mutate: Any = None, **kw: Any):
    data = copy.deepcopy(GOOD)
    if mutate:
        mutate(data)
    return personality_from_dict(data, "demo.yaml", timeframes=TIMEFRAMES, **kw)


def test_good_personality_loads():
    p = load()
    assert p.signal_tf == "5m" and p.timeframes == ("5m", "1h")
    assert [r.name for r in p.scored] == ["cross_up", "macd_side"]
    assert [r.name for r in p.gates] == ["trend_gate"]
    assert p.rules[0].multipliers == (1.0, 0.5)
    assert p.lookback == 1
    assert ("1h", "sma_200") in p.refs and (None, "close") in p.refs


def rule(field: str, value: Any, i: int = 0):
    def mutate(d: dict) -> None:
        if value is None:
            d["rules"][i].pop(field)
        else:
            d["rules"][i][field] = value

    return mutate


def top(field: str, value: Any):
    def mutate(d: dict) -> None:
        if value is None:
            d.pop(field)
        else:
            d[field] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            rule("when", "crosses_above(ema_9, ema_22)"),
            "rule 'cross_up': `when`: unknown column 'ema_22'",
        ),
        (rule("when", "kross(ema_9, ema_21)"), "rule 'cross_up': `when`: unknown function 'kross'"),
        (
            rule("when", "close > 4h.sma_200", 1),
            "rule 'trend_gate': `when`: unknown timeframe '4h'",
        ),
        (rule("weight", -1), "rule 'cross_up': `weight` must be a positive number"),
        (rule("weight", "heavy"), "`weight` must be a positive number, got 'heavy'"),
        (rule("weight", None), "rule 'cross_up': `weight` must be a positive number, got None"),
        (rule("weight", 2, 1), "rule 'trend_gate': a gate has no weight"),
        (rule("direction", "up"), "`direction` must be long, short or both"),
        (rule("direction", "both"), "direction both needs a signed number"),
        (rule("direction", "long", 2), "direction long needs a true/false condition"),
        (rule("reason", None), "rule 'cross_up': needs a `reason`"),
        (rule("reason", "EMA {ema_10}"), "reason placeholder {ema_10}: unknown column 'ema_10'"),
        (rule("reason", "EMA {ema_9:q}"), "bad format 'q'"),
        (rule("reason", "EMA {ema_9!r}"), "conversions are not allowed"),
        (rule("regimes", {"bull": 2}), "unknown regime 'bull'"),
        (rule("regimes", {"trend": -1}), "multiplier for regime 'trend' must be a number >= 0"),
        (rule("colour", "red"), "rule 'cross_up': unknown key(s) ['colour']"),
        (rule("name", "macd_side"), "rule 'macd_side': the name is used twice"),
        (rule("name", "two words"), "needs a `name` that is an identifier"),
        (top("timeframes", ["5m", "7m"]), "timeframe '7m' is not in the configured timeframes"),
        (top("timeframes", ["5m", "2x"]), "timeframes: timeframe '2x' is not valid"),
        (top("timeframes", ["1h", "5m"]), "confirmation timeframe '5m' must be longer"),
        (top("timeframes", ["5m", "5m"]), "lists one twice"),
        (top("timeframes", ["1M"]), "must have a fixed length"),
        (top("timeframes", None), "`timeframes` must be a non-empty list"),
        (top("threshold", 0), "`threshold` must be a number in (0, 1]"),
        (top("threshold", 1.5), "`threshold` must be a number in (0, 1]"),
        (top("cooldown", "soon"), "`cooldown` 'soon' is not a duration"),
        (top("cooldown", "1M"), "must be a fixed length"),
        (top("emit_degraded", "yes"), "`emit_degraded` must be true or false"),
        (top("regimes", {"trend": "adx_14"}), "regime 'trend': the condition must be true/false"),
        (top("regimes", {"trend": "adx_15 > 2"}), "regime 'trend': unknown column 'adx_15'"),
        (top("rules", []), "`rules` must be a non-empty list"),
        (top("name", "x-y"), "`name` must be a short identifier"),
        (top("colour", "red"), "unknown key(s) ['colour']"),
    ],
)
def test_personality_mistakes(mutate: Any, message: str):
    with pytest.raises(PersonalityError) as err:
        load(mutate)
    text = str(err.value)
    assert text.startswith("demo.yaml:"), text
    assert message in text, text


def test_only_gates_is_a_mistake():
    def gates_only(d: dict) -> None:
        d["rules"] = [d["rules"][1]]

    with pytest.raises(PersonalityError, match="needs at least one weighted rule"):
        load(gates_only)


def test_bad_file_names_the_file(tmp_path: Path):
    path = tmp_path / "mine.yaml"
    data = copy.deepcopy(GOOD)
    data["name"] = "mine"
    data["rules"][0]["when"] = "rsi_14 < 30 and stoch_q > 80"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PersonalityError) as err:
        load_personality(path, TIMEFRAMES)
    assert str(err.value).startswith(f"{path}: rule 'cross_up': `when`: unknown column 'stoch_q'")
    path.write_text("name: [unclosed")
    with pytest.raises(PersonalityError, match=f"{path}: not valid YAML"):
        load_personality(path, TIMEFRAMES)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**data, "rules": GOOD["rules"]}))
    with pytest.raises(PersonalityError, match="`name` is 'mine' but the file is named 'other'"):
        load_personality(other, TIMEFRAMES)
    with pytest.raises(PersonalityError, match="no such personality file"):
        load_personality("nonesuch", TIMEFRAMES)


def test_shipped_personalities_load():
    ps = load_personalities(["scalping", "swing", "ma_trend", "vote"], TIMEFRAMES)
    assert [p.timeframes for p in ps] == [
        ("1m", "5m"),
        ("15m", "1h"),
        ("37m", "148m", "1d"),
        ("15m", "1h"),
    ]
    assert sorted(p.stem for p in PERSONALITY_DIR.glob("*.yaml")) == sorted(p.name for p in ps)
    vote = ps[3]
    assert [g.name for g in vote.regimes] == ["volatile", "trend", "flat"]
    assert len([r for r in vote.scored if r.direction == "both"]) >= 10
    # a configuration without 37m cannot run ma_trend
    with pytest.raises(PersonalityError, match="timeframe '37m' is not in the configured"):
        load_personality("ma_trend", [t for t in TIMEFRAMES if t != "37m"])

"""Parameter validation: bad values are rejected up front, saying what, why and what is allowed."""

from __future__ import annotations

import json

import pytest

from pipeline.backtest import BacktestParams, ParamError
from pipeline.backtest.params import (
    LINEAR_MAKER,
    LINEAR_TAKER,
    PARAM_NAMES,
    SPOT_TAKER,
    params_from,
    parse_overrides,
)


def test_defaults_are_bybit_linear_fees_and_half_percent_risk() -> None:
    p = BacktestParams()
    assert (p.taker_fee, p.maker_fee) == (LINEAR_TAKER, LINEAR_MAKER) == (0.00055, 0.0002)
    assert p.risk_per_trade == 0.005 and p.position_cap == 0.2 and p.sizing == "risk"
    spot = BacktestParams.spot()
    assert spot.taker_fee == SPOT_TAKER == 0.001 and not spot.allow_short
    assert json.loads(json.dumps(p.to_dict()))["taker_fee"] == 0.00055


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"taker_fee": -0.001}, r"taker_fee=-0.001: fees cannot be negative"),
        ({"maker_fee": -0.0001}, r"maker_fee=-0.0001: fees cannot be negative"),
        ({"taker_fee": 0.055}, r"taker_fee=0.055: .*unit mistake"),
        ({"leverage": 0}, r"leverage=0: must be a number between 1 \(no leverage\) and 100"),
        ({"leverage": 150}, r"leverage=150: must be a number between 1"),
        (
            {"leverage": 10, "stop_loss_pct": 0.1},
            r"stop_loss_pct=0.1: lies beyond the liquidation distance 0.095 at leverage 10",
        ),
        (
            {"leverage": 20, "trailing_stop_pct": 0.06},
            r"trailing_stop_pct=0.06: lies beyond the liquidation distance 0.045",
        ),
        ({"slippage_bps": -1}, r"slippage_bps=-1: must be a number >= 0"),
        ({"starting_equity": 0}, r"starting_equity=0: must be a number > 0"),
        ({"allow_long": False, "allow_short": False}, r"nothing could ever be traded"),
        ({"risk_per_trade": 0.5}, r"risk_per_trade=0.5: must be a number > 0 and <= 0.1"),
        ({"stop_loss_atr": 2.0}, r"stop_loss_pct and stop_loss_atr are both set"),
        (
            {"stop_loss_pct": None, "take_profit_r": 2.0},
            r"take_profit_r=2.0: is a multiple of the stop distance, so it needs a stop loss",
        ),
        ({"stop_loss_pct": None, "breakeven_r": 1.0}, r"breakeven_r=1.0: .*needs a stop loss"),
        ({"take_profit_pct": 0.02, "take_profit_r": 2.0}, r"at most one of take_profit"),
        ({"sizing": "kelly"}, r"sizing='kelly': must be 'risk'"),
        ({"on_opposite": "flip"}, r"on_opposite='flip': must be 'reverse', 'close' or 'ignore'"),
        ({"venue": "spot", "allow_short": True}, r"allow_short=True: spot cannot short"),
        ({"venue": "spot", "allow_short": False, "leverage": 3}, r"spot trades without leverage"),
        ({"signal_expiry_minutes": 0}, r"signal_expiry_minutes=0: must be a number > 0"),
        ({"min_confidence": 1.5}, r"min_confidence=1.5: must be a number >= 0 and <= 1"),
        ({"atr_period": 0}, r"atr_period=0: must be a whole number"),
        ({"stop_loss_pct": float("nan")}, r"stop_loss_pct=nan: must be a number"),
    ],
)
def test_invalid_parameters_are_rejected_clearly(kwargs: dict, message: str) -> None:
    with pytest.raises(ParamError, match=message):
        BacktestParams(**kwargs)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ParamError) as err:
        BacktestParams(taker_fee=-1, leverage=0)
    text = str(err.value)
    assert "taker_fee=-1" in text and "leverage=0" in text


def test_replace_validates_and_rejects_unknown_names() -> None:
    p = BacktestParams().replace(stop_loss_pct=0.03)
    assert p.stop_loss_pct == 0.03
    with pytest.raises(ParamError, match=r"unknown backtest parameter 'stop' \(= 0.03\); valid: "):
        BacktestParams().replace(stop=0.03)
    with pytest.raises(ParamError, match="leverage=0"):
        BacktestParams().replace(leverage=0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"leverage": 3',
            r"^--params '\{\"leverage\": 3' is not valid JSON "
            r"\(Expecting .* at character 14\); give an object",
        ),
        ("[1, 2]", r"^--params '\[1, 2\]' is a JSON list, not an object; give an object"),
        (
            '{"levrage": 3}',
            r"^unknown backtest parameter 'levrage' \(= 3\); did you mean 'leverage'\? "
            r"valid: venue, taker_fee, ",
        ),
        (
            '{"leverage": "3"}',
            r"^invalid backtest parameter leverage='3': must be a number between 1",
        ),
        (
            '{"allow_short": "no"}',
            r"^invalid backtest parameter allow_short='no': must be true or false$",
        ),
        (
            '{"taker_fee": "0.1%"}',
            r"^invalid backtest parameter taker_fee='0.1%': must be a number",
        ),
        (
            '{"taker_fee": -0.001}',
            r"^invalid backtest parameter taker_fee=-0.001: fees cannot be negative",
        ),
    ],
)
def test_params_json_is_refused_in_one_line_naming_key_value_and_what_is_allowed(
    text: str, message: str
) -> None:
    with pytest.raises(ParamError, match=message) as err:
        parse_overrides(text)
    assert "\n" not in str(err.value)


def test_a_typo_lists_every_valid_name() -> None:
    with pytest.raises(ParamError) as err:
        params_from({"slipage_bps": 2})
    text = str(err.value)
    assert "did you mean 'slippage_bps'?" in text
    assert all(name in text for name in PARAM_NAMES)


def test_overrides_merge_over_the_configured_ones() -> None:
    merged, p = parse_overrides('{"leverage": 3}', base={"slippage_bps": 2, "leverage": 2})
    assert merged == {"slippage_bps": 2, "leverage": 3}
    assert p.leverage == 3 and p.slippage_bps == 2
    assert parse_overrides(None, base={})[1] == BacktestParams()
    assert parse_overrides("  ")[0] == {}


def test_signalbox_yaml_params_get_the_same_check(tmp_path) -> None:
    from pipeline.config import ConfigError, load_settings

    cfg = tmp_path / "signalbox.yaml"
    cfg.write_text("backtest:\n  params: {levrage: 2}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    text = str(err.value)
    assert "backtest.params" in text and "did you mean 'leverage'?" in text
    assert "\n" not in text
    cfg.write_text("backtest:\n  params: {leverage: 3}\n")
    assert load_settings(cfg, env={}).backtest.params == {"leverage": 3}

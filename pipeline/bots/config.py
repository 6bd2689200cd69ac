"""One paper bot's configuration: an entry of signalbox.yaml's `bots:` list.

A bot trades one personality's signals on some markets with the backtest's own parameters
(`params`: the names and checks of `backtest.params`, on top of the configuration's
`backtest.params`, so a bot and the backtest it is reconciled with agree unless told not to),
plus what only a live account has: an emergency stop on the account's drawdown, and an
optional accumulation (DCA) mode that buys a fixed amount on every BUY and never sells.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:  # pipeline.backtest is imported when used: every process reads the config
    from pipeline.backtest.params import BacktestParams

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
# Signals carry no ATR: a bot's stops, targets and trailing stops are percentages or R.
_NO_ATR = ("stop_loss_atr", "take_profit_atr", "trailing_stop_atr")
# Window-only parameters: a live account has no window to close at.
_NOT_LIVE = ("close_at_end",)


class DcaConfig(BaseModel):
    """Accumulation: buy `quote` (in the account currency) at the next open on every BUY."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    quote: float = Field(gt=0, le=1e12)


class BotConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    personality: str
    symbols: list[str] | None = None  # venue:SYMBOL or a bare symbol; None: every market
    timeframes: list[str] | None = None  # None: every timeframe of the personality
    params: dict[str, Any] = {}
    emergency_stop: float | None = Field(0.25, gt=0, lt=1)  # max drawdown from the peak
    dca: DcaConfig | None = None
    # paper_vs_backtest fails when the unexplained equity gap of a day exceeds this (account
    # currency)
    reconcile_tolerance: float = Field(1.0, ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(
                "must be 1-40 lowercase letters, digits, - or _ (it names the bot's folder)"
            )
        return v

    @field_validator("symbols", "timeframes")
    @classmethod
    def _nonempty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("must list at least one, each once (omit it for all)")
        return v

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        from pipeline.backtest.params import ParamError, params_from

        for name in (*_NO_ATR, *_NOT_LIVE):
            if name in v:
                raise ValueError(
                    f"{name}: not for paper bots (signals carry no ATR and a live account "
                    "has no window end); use stop_loss_pct, take_profit_pct or "
                    "trailing_stop_pct"
                )
        try:
            params_from(v)
        except ParamError as err:
            raise ValueError(str(err)) from None
        return v

    @model_validator(mode="after")
    def _dca(self) -> BotConfig:
        if self.dca is not None and self.params:
            raise ValueError(
                f"bot {self.name!r}: dca buys a fixed amount and never sells, so it takes no "
                "params; give one or the other"
            )
        return self

    def backtest_params(self, base: dict[str, Any] | None = None) -> BacktestParams:
        """The backtest parameters this bot trades with: `base` (the configuration's
        backtest.params) overridden by the bot's own. Raises ParamError for an ATR distance
        inherited from `base` (signals carry no ATR), naming what to set instead."""
        from pipeline.backtest.params import ParamError, params_from

        merged = {k: v for k, v in (base or {}).items() if k not in _NOT_LIVE}
        merged.update(self.params)
        atr = [n for n in _NO_ATR if merged.get(n) is not None]
        if atr:
            raise ParamError(
                f"bot {self.name!r} inherits {', '.join(atr)} from backtest.params, which paper "
                "bots cannot use (signals carry no ATR); set the bot's own params, e.g. "
                "{stop_loss_pct: 0.02, stop_loss_atr: null}"
            )
        return params_from({**merged, "close_at_end": False})


def bot_problems(
    bots: list[BotConfig],
    personalities: list[str],
    markets: list[Any],
    base: dict[str, Any],
) -> list[tuple[str, Any, str]]:
    """(key, value, what is wrong) for what a bot's own fields cannot tell: a name given
    twice, a personality or market not configured, parameters that conflict with
    `backtest.params` (the base every bot inherits)."""
    from pipeline.backtest.params import ParamError
    from pipeline.markets import find_market

    out: list[tuple[str, Any, str]] = []
    seen: set[str] = set()
    for i, b in enumerate(bots):
        if b.name in seen:
            out.append((f"bots.{i}.name", b.name, "is given twice; each bot needs its own name"))
        seen.add(b.name)
        if b.personality not in personalities:
            out.append(
                (
                    f"bots.{i}.personality",
                    b.personality,
                    f"is not a configured personality ({', '.join(personalities)})",
                )
            )
        for s in b.symbols or []:
            try:
                m = find_market(s, markets)
            except ValueError as err:
                out.append((f"bots.{i}.symbols", s, str(err)))
                continue
            if m not in markets:
                listed = ", ".join(str(x) for x in markets)
                out.append((f"bots.{i}.symbols", s, f"is not a configured market ({listed})"))
        try:
            b.backtest_params(base)
        except ParamError as err:
            out.append((f"bots.{i}.params", b.params, str(err)))
    return out


def bot_markets(bot: BotConfig, markets: list[Any]) -> list[str]:
    """The bot's markets as `venue:SYMBOL` (all configured ones when it names none)."""
    from pipeline.markets import find_market

    if bot.symbols is None:
        return [str(m) for m in markets]
    return [str(find_market(s, markets)) for s in bot.symbols]

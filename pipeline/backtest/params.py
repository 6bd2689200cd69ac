"""Backtest parameters: one frozen, validated dataclass that is also the `params` JSON of a run.

Validation happens at construction so a bad sweep grid or a typo in a personality's settings
fails before any work, with a message saying which field, what value, why, and what is allowed.
All rates are fractions (0.00055 = 0.055 %); slippage is in basis points as traders quote it.

Semantics worth knowing (see also the engine module):
- Fills: a signal stamped at close_time T fills at the open of the first 1m bar whose
  open_time >= T, plus slippage against us, paying the taker fee. Never at the signal bar's close.
- One position at a time per (symbol, personality). A signal in the direction of the open
  position is ignored (no pyramiding). An opposite signal does what `on_opposite` says:
  "reverse" closes and opens the other side at the same open (backtesting.py's
  exclusive_orders), "close" only closes, "ignore" leaves exits to stops and targets.
- Sizing "risk": risk `risk_per_trade` of equity over the stop distance (fees and slippage come
  on top), capped at `position_cap` x equity x leverage of notional; without a stop the cap
  is the size. "fraction": always the cap. "units": a fixed quantity (for cross-checks).
- Stops, targets and trailing stops are evaluated on every 1m bar's high/low, from the entry
  bar on. A stop fills at the stop price or at the bar's open if the bar gapped through it, minus
  slippage, taker fee. A take-profit is a resting limit order: it fills at the target (or a
  better open), maker fee, no slippage (set `take_profit_limit=False` to treat it as market).
- When one bar touches both stop and target we cannot know which came first: the stop (the
  worse outcome) is assumed and the run counts how often (`both_touched`).
- The trailing stop and the move to breakeven use the best price up to the previous bar's
  high/low: within a bar we do not know whether the extreme came before the low, so a level is
  only tightened from the next bar on.
- Liquidation (isolated margin): long at entry x (1 - 1/leverage + maintenance_margin), short at
  entry x (1 + 1/leverage - maintenance_margin); a stop must sit inside that distance.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.yamlfile import quote

# Bybit's default (VIP 0) fees.
LINEAR_TAKER, LINEAR_MAKER = 0.00055, 0.0002
SPOT_TAKER, SPOT_MAKER = 0.001, 0.001
# Bybit's maintenance margin rate for the first BTCUSDT risk-limit tier.
MAINTENANCE_MARGIN = 0.005

Venue = Literal["linear", "spot"]
Sizing = Literal["risk", "fraction", "units"]
OnOpposite = Literal["reverse", "close", "ignore"]


class ParamError(ValueError):
    """An invalid backtest parameter or window: one line saying what, why and what is allowed."""


@dataclass(frozen=True)
class BacktestParams:
    """Everything that shapes a backtest except the data and the window."""

    venue: Venue = "linear"
    taker_fee: float | None = None  # None: the venue's default
    maker_fee: float | None = None
    slippage_bps: float = 1.0
    starting_equity: float = 10_000.0
    allow_long: bool = True
    allow_short: bool = True
    on_opposite: OnOpposite = "reverse"
    sizing: Sizing = "risk"
    risk_per_trade: float = 0.005
    position_cap: float = 0.2
    units: float = 1.0
    leverage: float = 1.0
    maintenance_margin: float = MAINTENANCE_MARGIN
    stop_loss_pct: float | None = 0.02
    stop_loss_atr: float | None = None
    take_profit_pct: float | None = None
    take_profit_atr: float | None = None
    take_profit_r: float | None = None
    take_profit_limit: bool = True
    trailing_stop_pct: float | None = None
    trailing_stop_atr: float | None = None
    breakeven_r: float | None = None
    atr_period: int = 14
    signal_expiry_minutes: float = 15.0
    min_confidence: float = 0.0
    skip_degraded: bool = False
    close_at_end: bool = True

    def __post_init__(self) -> None:
        taker = self.taker_fee
        maker = self.maker_fee
        if taker is None:
            taker = SPOT_TAKER if self.venue == "spot" else LINEAR_TAKER
        if maker is None:
            maker = SPOT_MAKER if self.venue == "spot" else LINEAR_MAKER
        object.__setattr__(self, "taker_fee", taker)
        object.__setattr__(self, "maker_fee", maker)
        problems = _problems(self)
        if len(problems) == 1:
            raise ParamError(f"invalid backtest parameter {problems[0]}")
        if problems:
            numbered = " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
            raise ParamError(f"{len(problems)} invalid backtest parameters: {numbered}")

    # -- views ---------------------------------------------------------------------------
    @property
    def taker(self) -> float:
        return float(self.taker_fee or 0.0)

    @property
    def maker(self) -> float:
        return float(self.maker_fee or 0.0)

    @property
    def uses_atr(self) -> bool:
        return any(
            v is not None
            for v in (self.stop_loss_atr, self.take_profit_atr, self.trailing_stop_atr)
        )

    @property
    def has_stop(self) -> bool:
        return self.stop_loss_pct is not None or self.stop_loss_atr is not None

    @property
    def liquidation_distance(self) -> float:
        """Adverse move, as a fraction of the entry price, at which a position is liquidated."""
        return 1.0 / self.leverage - self.maintenance_margin

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the `params` column of backtest_runs)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> BacktestParams:
        """A validated copy with some fields changed (what sweeps and walk-forward use)."""
        check_names(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def spot(cls, **kw: Any) -> BacktestParams:
        """Spot market: 0.1 % fees, long only, no leverage."""
        kw.setdefault("allow_short", False)
        return cls(venue="spot", **kw)


PARAM_NAMES = tuple(f.name for f in dataclasses.fields(BacktestParams))


def check_names(overrides: Mapping[Any, Any]) -> None:
    """Refuse a name that is not a parameter, with the closest one and every valid name."""
    for name, value in overrides.items():
        if name in PARAM_NAMES:
            continue
        close = difflib.get_close_matches(str(name), PARAM_NAMES, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ParamError(
            f"unknown backtest parameter {quote(name)} (= {quote(value)}); {hint}"
            f"valid: {', '.join(PARAM_NAMES)}"
        )


def params_from(overrides: Mapping[str, Any] | None = None) -> BacktestParams:
    """BacktestParams from a mapping of overrides (signalbox.yaml's `backtest.params`, a run's
    `--params`), validated: the one check the CLI, the configuration and the asset share."""
    data = dict(overrides or {})
    check_names(data)
    return BacktestParams(**data)


def parse_overrides(
    text: str | None, base: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], BacktestParams]:
    """`--params` JSON (an object of overrides) on top of `base`: the merged overrides (what
    names a run) and the validated parameters. Bad JSON, a typo'd name, a wrong type or an
    out-of-range value raise one-line ParamErrors naming the key, the value and what is allowed.
    """
    given: Any = {}
    if text and text.strip():
        try:
            given = json.loads(text)
        except json.JSONDecodeError as err:
            raise ParamError(
                f"--params {quote(text)} is not valid JSON ({err.msg} at character {err.pos}); "
                'give an object such as \'{"slippage_bps": 2, "leverage": 3}\''
            ) from None
    if not isinstance(given, dict):
        raise ParamError(
            f"--params {quote(text)} is a JSON {type(given).__name__}, not an object; "
            'give an object such as \'{"slippage_bps": 2, "leverage": 3}\''
        )
    merged = {**(base or {}), **given}
    return merged, params_from(merged)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _problems(p: BacktestParams) -> list[str]:
    out: list[str] = []

    def bad(name: str, why: str) -> None:
        out.append(f"{name}={quote(getattr(p, name))}: {why}")

    def rng(name: str, lo: float, hi: float, lo_open: bool = False, optional: bool = False) -> bool:
        v = getattr(p, name)
        if v is None and optional:
            return True
        ok = _num(v) and (v > lo if lo_open else v >= lo) and v <= hi
        if not ok:
            lo_txt = f"> {lo:g}" if lo_open else f">= {lo:g}"
            bad(name, f"must be a number {lo_txt} and <= {hi:g}")
        return ok

    for name in ("allow_long", "allow_short", "take_profit_limit", "skip_degraded", "close_at_end"):
        if not isinstance(getattr(p, name), bool):
            bad(name, "must be true or false")
    if p.venue not in ("linear", "spot"):
        bad("venue", "must be 'linear' (perpetual futures) or 'spot'")
    for fee in ("taker_fee", "maker_fee"):
        v = getattr(p, fee)
        if not _num(v):
            bad(fee, "must be a number: a fraction of notional, e.g. 0.00055 = 0.055 %")
        elif v < 0:
            bad(fee, "fees cannot be negative; give a fraction of notional, e.g. 0.00055 = 0.055 %")
        elif v >= 0.01:
            bad(fee, "a fee of 1 % or more per fill is surely a unit mistake; 0.00055 = 0.055 %")
    rng("slippage_bps", 0, 500)
    rng("starting_equity", 0, 1e15, lo_open=True)
    if not (p.allow_long or p.allow_short):
        out.append("allow_long and allow_short are both False: nothing could ever be traded")
    if p.on_opposite not in ("reverse", "close", "ignore"):
        bad("on_opposite", "must be 'reverse', 'close' or 'ignore'")
    if p.sizing not in ("risk", "fraction", "units"):
        bad("sizing", "must be 'risk' (risk over stop distance), 'fraction' or 'units'")
    rng("risk_per_trade", 0, 0.1, lo_open=True)
    rng("position_cap", 0, 1, lo_open=True)
    rng("units", 0, 1e12, lo_open=True)
    lev_ok = _num(p.leverage) and 1 <= p.leverage <= 100
    if not lev_ok:
        bad(
            "leverage", "must be a number between 1 (no leverage) and 100 (Bybit's BTCUSDT maximum)"
        )
    rng("maintenance_margin", 0, 0.5)
    if p.venue == "spot":
        if p.allow_short:
            bad("allow_short", "spot cannot short; use venue='linear' to short")
        if lev_ok and p.leverage != 1:
            bad("leverage", "spot trades without leverage; must be 1")
    rng("stop_loss_pct", 0, 1, lo_open=True, optional=True)
    rng("take_profit_pct", 0, 10, lo_open=True, optional=True)
    rng("trailing_stop_pct", 0, 1, lo_open=True, optional=True)
    for name in ("stop_loss_atr", "take_profit_atr", "trailing_stop_atr", "take_profit_r"):
        rng(name, 0, 1000, lo_open=True, optional=True)
    rng("breakeven_r", 0, 1000, lo_open=True, optional=True)
    if p.stop_loss_pct is not None and p.stop_loss_atr is not None:
        out.append("stop_loss_pct and stop_loss_atr are both set: choose one stop")
    n_tp = sum(v is not None for v in (p.take_profit_pct, p.take_profit_atr, p.take_profit_r))
    if n_tp > 1:
        out.append("set at most one of take_profit_pct, take_profit_atr, take_profit_r")
    if p.trailing_stop_pct is not None and p.trailing_stop_atr is not None:
        out.append("trailing_stop_pct and trailing_stop_atr are both set: choose one")
    if p.take_profit_r is not None and not p.has_stop:
        bad("take_profit_r", "is a multiple of the stop distance, so it needs a stop loss")
    if p.breakeven_r is not None and not p.has_stop:
        bad("breakeven_r", "is a multiple of the stop distance, so it needs a stop loss")
    if isinstance(p.atr_period, bool) or not isinstance(p.atr_period, int) or p.atr_period < 1:
        bad("atr_period", "must be a whole number of bars >= 1")
    rng("signal_expiry_minutes", 0, 525_600, lo_open=True)
    rng("min_confidence", 0, 1)
    if lev_ok and _num(p.maintenance_margin) and p.liquidation_distance <= 0:
        bad("maintenance_margin", f"leaves no margin at leverage {p.leverage:g}")
    elif lev_ok and _num(p.maintenance_margin):
        liq = p.liquidation_distance
        for name in ("stop_loss_pct", "trailing_stop_pct"):
            v = getattr(p, name)
            if _num(v) and v >= liq:
                bad(
                    name,
                    f"lies beyond the liquidation distance {liq:.4g} at leverage {p.leverage:g} "
                    f"(1/leverage - maintenance_margin {p.maintenance_margin:g}): the position "
                    f"would be liquidated before the stop; use a stop below {liq:.4g} "
                    "or lower the leverage",
                )
    return out

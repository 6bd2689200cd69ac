"""Personalities: YAML files in pipeline/personalities/, loaded and checked once.

A personality names its timeframes (the first is the one it signals on, the others are read
as-of for confirmation), its rules (a condition in the language of pipeline.strategy.rules, a
weight, a
direction and a reason for traders), optional gates (conditions a side needs) and regimes
(weight multipliers by market state), a threshold, a cooldown and whether signals computed on
incomplete data are emitted. Everything is validated at load so a bad file fails right away
with the file, the rule and what is wrong, never halfway through a backfill.

    name: scalping                  # = the file name
    timeframes: [1m, 5m]
    threshold: 0.5                  # net confluence in (0, 1] a bar needs to signal
    cooldown: 10m                   # at most one signal per window of this length (or none)
    emit_degraded: false
    regimes:                        # optional; the first that holds names the bar's regime
      trend: adx_14 >= 25
      flat: true
    rules:
      - name: ema_cross_up
        when: crosses_above(ema_9, ema_21)
        direction: long             # long | short | both (both: a signed number, >0 long)
        weight: 2                   # or `gate: true`: a side needs every gate of its side
        regimes: {flat: 0.5}        # weight multipliers per regime (default 1)
        reason: "EMA 9 ({ema_9:,.1f}) crossed above EMA 21 ({ema_21:,.1f})"
      - name: funding_long
        when: funding_rate < 0.0005 # market context (pipeline/strategy/context.py)
        direction: long
        gate: true
        when_unknown: "funding filter not applied: no funding rate known"
        enabled: true               # false: checked at load, never evaluated nor read
        reason: "funding {funding_rate:.4%} below 0.05 %"

A condition that is unknown (an input NULL: warm-up, a missing bar, no order flow) never
holds: a weighted rule does not vote (its weight still counts in the side's maximum), a gate
blocks its side. With `when_unknown: <text>` a rule steps aside where its condition is unknown
instead, and the signal's reasons carry the text, so what could not be applied is said, never
silently assumed passed or failed: a gate lets its side through; a weighted rule abstains (its
weight leaves the maximum, so the others decide as if it were not there).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.candles.timeframes import Timeframe, parse_timeframe
from pipeline.strategy.personality_rules import Rule, Template, number, rule_from_dict
from pipeline.yamlfile import YamlFileError, load_yaml, quote

if TYPE_CHECKING:
    from pipeline.strategy.rules import Node, Ref, Schema

PERSONALITY_DIR = Path(__file__).resolve().parent.parent / "personalities"
# Candle columns a condition may read besides the indicators.
CANDLE_VALUES = ("open", "high", "low", "close", "volume", "turnover", "n_1m")
CANDLE_FLAGS = ("complete",)
# Market context a condition may read, joined as of the bar's close (pipeline.strategy.context).
CONTEXT_VALUES = (
    "buy_ratio",
    "delta",
    "cvd",
    "cvd_day",
    "funding_rate",
    "oi_change_1h",
    "basis_bps",
)
_TOP_KEYS = {
    "name",
    "description",
    "timeframes",
    "threshold",
    "cooldown",
    "emit_degraded",
    "regimes",
    "rules",
}


class PersonalityError(ValueError):
    """A personality file that cannot be used: names the file, the rule and the problem."""


@dataclass(frozen=True, eq=False)
class Regime:
    name: str
    when: str
    node: Node


@dataclass(frozen=True, eq=False)
class Personality:
    name: str
    description: str
    source: str
    timeframes: tuple[str, ...]
    threshold: float
    cooldown: Timeframe | None
    emit_degraded: bool
    rules: tuple[Rule, ...]
    regimes: tuple[Regime, ...]

    @property
    def signal_tf(self) -> str:
        return self.timeframes[0]

    @property
    def scored(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if not r.gate)

    @property
    def gates(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.gate)

    @property
    def lookback(self) -> int:
        """Bars of the signal timeframe before a bar that its conditions read."""
        nodes = [r.node for r in self.rules] + [g.node for g in self.regimes]
        return max((n.lookback for n in nodes), default=0)

    @property
    def refs(self) -> tuple[Ref, ...]:
        """Every column the personality reads or quotes, signal timeframe first, sorted."""
        found: set[Ref] = {(None, "close")}
        for r in self.rules:
            found |= r.node.refs | r.reason.refs | (r.unknown.refs if r.unknown else frozenset())
        for g in self.regimes:
            found |= g.node.refs
        return tuple(sorted(found, key=lambda x: (x[0] is not None, x[0] or "", x[1])))


# -- loading ------------------------------------------------------------------------------------


def _schema(timeframes: Sequence[str], columns: Iterable[str] | None) -> Schema:
    from pipeline.strategy.rules import Schema

    if columns is None:
        from pipeline.indicators import load_spec

        spec = load_spec()
        cols = [*CANDLE_VALUES, *CANDLE_FLAGS, *spec.columns, *CONTEXT_VALUES]
        flags = {*CANDLE_FLAGS, *(c for i in spec.indicators if i.boolean for c in i.outputs)}
    else:
        cols, flags = list(columns), set(CANDLE_FLAGS)
    return Schema(timeframes[0], tuple(timeframes), frozenset(cols), frozenset(flags))


def _timeframes(raw: Any, configured: Sequence[str] | None, fail: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) for t in raw):
        raise fail("`timeframes` must be a non-empty list such as [1m, 5m]")
    parsed: list[Timeframe] = []
    for t in raw:
        try:
            parsed.append(parse_timeframe(t))
        except ValueError as err:
            raise fail(f"timeframes: {quote(str(err), 200, bare=True)}") from None
        if configured is not None and t not in configured:
            raise fail(
                f"timeframe {quote(t)} is not in the configured timeframes {list(configured)}"
                " (signalbox.yaml `timeframes`): its candles would never be built"
            )
    if len(set(raw)) != len(raw):
        raise fail(f"timeframes {quote(raw)} lists one twice")
    first = parsed[0]
    if first.kind != "fixed":
        raise fail(f"the signal timeframe {first.name!r} must have a fixed length (not months)")
    for tf in parsed[1:]:
        if tf.minutes <= first.minutes:
            raise fail(
                f"confirmation timeframe {tf.name!r} must be longer than the signal timeframe"
                f" {first.name!r} (the first in `timeframes`)"
            )
    return tuple(raw)


def personality_from_dict(
    data: Any,
    source: str = "<personality>",
    *,
    timeframes: Sequence[str] | None = None,
    columns: Iterable[str] | None = None,
    name: str | None = None,
) -> Personality:
    """Validate a parsed personality. `timeframes`: the configured ones, which it may use
    (None: any, for a file checked outside a configuration); `columns`: what conditions may
    read (default: candle columns + the indicator set); `name`: the name it must carry (its
    file's). The caller passes the configuration's values: this module reads no settings."""
    from pipeline.strategy.rules import RuleError, compile_condition

    def fail(what: str, rule: str | None = None) -> PersonalityError:
        where = f" rule {quote(rule)}:" if rule else ""
        return PersonalityError(f"{source}:{where} {what}")

    if not isinstance(data, Mapping):
        raise fail("must be a mapping with name, timeframes, threshold, cooldown and rules")
    if extra := set(data) - _TOP_KEYS:
        raise fail(f"unknown key(s) {quote(sorted(extra, key=str))}; allowed: {sorted(_TOP_KEYS)}")
    pname = data.get("name")
    if not isinstance(pname, str) or not pname.isidentifier():
        raise fail("`name` must be a short identifier such as scalping")
    if name is not None and pname != name:
        raise fail(f"`name` is {quote(pname)} but the file is named {name!r}: make them equal")
    tfs = _timeframes(data.get("timeframes"), timeframes, fail)
    schema = _schema(tfs, columns)

    threshold = number(data.get("threshold"))
    if threshold is None or not 0 < threshold <= 1:
        raise fail(f"`threshold` must be a number in (0, 1], got {quote(data.get('threshold'))}")
    cooldown = _cooldown(data.get("cooldown"), fail)
    emit = data.get("emit_degraded", False)
    if not isinstance(emit, bool):
        raise fail(f"`emit_degraded` must be true or false, got {quote(emit)}")

    regimes: list[Regime] = []
    raw_regimes = data.get("regimes") or {}
    if not isinstance(raw_regimes, Mapping):
        raise fail("`regimes` must map regime names to conditions, e.g. {trend: adx_14 > 25}")
    for rname, cond in raw_regimes.items():
        if not isinstance(rname, str) or not rname.isidentifier():
            raise fail(f"regime name {quote(rname)} must be an identifier")
        if isinstance(cond, bool):
            cond = str(cond)
        try:
            node = compile_condition(cond, schema)
        except RuleError as err:
            raise fail(f"regime {quote(rname)}: {err}") from None
        if node.kind != "bool":
            raise fail(f"regime {quote(rname)}: the condition must be true/false, not a number")
        regimes.append(Regime(rname, str(cond), node))
    regime_names = [g.name for g in regimes]

    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise fail("`rules` must be a non-empty list of rules")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_rules):
        rule = rule_from_dict(raw, i, schema, regime_names, seen, fail, compile_condition)
        if raw.get("enabled", True):  # a disabled rule is checked, then left out
            rules.append(rule)
    if not any(not r.gate for r in rules):
        raise fail("needs at least one weighted rule (gates alone never signal)")
    return Personality(
        name=pname,
        description=str(data.get("description") or "").strip(),
        source=source,
        timeframes=tfs,
        threshold=threshold,
        cooldown=cooldown,
        emit_degraded=emit,
        rules=tuple(rules),
        regimes=tuple(regimes),
    )


def _cooldown(raw: Any, fail: Any) -> Timeframe | None:
    if raw in (None, 0, "none", "0"):
        return None
    try:
        cd = parse_timeframe(str(raw))
    except ValueError:
        raise fail(
            f"`cooldown` {quote(raw)} is not a duration: write e.g. 10m, 4h, 1d (or none)"
        ) from None
    if cd.kind != "fixed":
        raise fail(f"`cooldown` {quote(raw)} must be a fixed length (minutes, hours, days, weeks)")
    return cd


@lru_cache(maxsize=32)
def _load(path: Path, mtime: float, timeframes: tuple[str, ...] | None) -> Personality:
    try:
        data = load_yaml(path)
    except YamlFileError as err:
        raise PersonalityError(f"{path}: {err}") from None
    return personality_from_dict(data, str(path), timeframes=timeframes, name=path.stem)


def personality_path(name_or_path: str | Path) -> Path:
    """A shipped personality's file by name, else the path given (`~` expanded)."""
    p = Path(os.path.expanduser(name_or_path))  # unlike Path.expanduser, never raises
    if p.suffix in (".yaml", ".yml") or p.parent != Path("."):
        return p
    return PERSONALITY_DIR / f"{name_or_path}.yaml"


def load_personality(
    name_or_path: str | Path | Personality, timeframes: Sequence[str] | None = None
) -> Personality:
    """A shipped personality by name (pipeline/personalities/<name>.yaml) or a YAML path;
    checked against the configured `timeframes` (None: not checked against any)."""
    if isinstance(name_or_path, Personality):
        return name_or_path
    path = personality_path(name_or_path)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        shipped = sorted(p.stem for p in PERSONALITY_DIR.glob("*.yaml"))
        where = quote(str(path), 200, bare=True)
        raise PersonalityError(f"{where}: no such personality file (shipped: {shipped})") from None
    tfs = tuple(timeframes) if timeframes is not None else None
    return _load(path.resolve(), mtime, tfs)


def load_personalities(
    names: Iterable[str], timeframes: Sequence[str] | None = None
) -> list[Personality]:
    """The enabled personalities (settings.personalities), all validated."""
    return [load_personality(n, timeframes) for n in names]


__all__ = [
    "PERSONALITY_DIR",
    "Personality",
    "PersonalityError",
    "Regime",
    "Rule",
    "Template",
    "load_personalities",
    "load_personality",
    "personality_from_dict",
    "personality_path",
]

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
"""

from __future__ import annotations

import math
import os
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.candles.timeframes import Timeframe, parse_timeframe
from pipeline.yamlfile import YamlFileError, load_yaml, quote

if TYPE_CHECKING:
    from pipeline.strategy.rules import Node, Ref, Schema

PERSONALITY_DIR = Path(__file__).resolve().parent.parent / "personalities"
# Candle columns a condition may read besides the indicators.
CANDLE_VALUES = ("open", "high", "low", "close", "volume", "turnover", "n_1m")
CANDLE_FLAGS = ("complete",)
Direction = Literal["long", "short", "both"]
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
_BIG_FORMAT = re.compile(r"[1-9][0-9]{2}")  # a width or precision of 100 or more
_RULE_KEYS = {"name", "when", "direction", "weight", "gate", "reason", "regimes"}


class PersonalityError(ValueError):
    """A personality file that cannot be used: names the file, the rule and the problem."""


@dataclass(frozen=True, eq=False)
class Template:
    """A reason text with `{column}` / `{1h.column:,.1f}` placeholders, checked at load."""

    text: str
    parts: tuple[tuple[str, Ref | None, str], ...]  # literal, placeholder ref, format spec

    def render(self, columns: Mapping[Ref, Sequence[float]], row: int) -> str:
        """The text with the values of row `row` of `columns` (per placeholder)."""
        out = []
        for literal, ref, spec in self.parts:
            out.append(literal)
            if ref is not None:
                out.append(_fmt(columns[ref][row], spec))
        return "".join(out)

    @property
    def refs(self) -> frozenset[Ref]:
        return frozenset(r for _, r, _ in self.parts if r is not None)


def _fmt(v: float, spec: str) -> str:
    if v is None or v != v:
        return "n/a"
    return format(v, spec or ",.2f")


@dataclass(frozen=True, eq=False)
class Rule:
    name: str
    when: str
    node: Node
    direction: Direction
    weight: float  # 0 for gates
    gate: bool
    reason: Template
    multipliers: tuple[float, ...]  # per regime, in the personality's regime order


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
            found |= r.node.refs | r.reason.refs
        for g in self.regimes:
            found |= g.node.refs
        return tuple(sorted(found, key=lambda x: (x[0] is not None, x[0] or "", x[1])))


# -- loading ------------------------------------------------------------------------------------


def _schema(timeframes: Sequence[str], columns: Iterable[str] | None) -> Schema:
    from pipeline.strategy.rules import Schema

    if columns is None:
        from pipeline.indicators import load_spec

        spec = load_spec()
        cols = [*CANDLE_VALUES, *CANDLE_FLAGS, *spec.columns]
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


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        f = float(v)
    except OverflowError:  # an int beyond any float
        return None
    return f if math.isfinite(f) else None


def _template(text: Any, schema: Schema, fail: Any) -> Template:
    from pipeline.strategy.rules import RuleError, parse_ref

    if not isinstance(text, str) or not text.strip():
        raise fail("needs a `reason`: a sentence for traders, e.g. 'RSI {rsi_14:.0f} < 30'")
    parts: list[tuple[str, Ref | None, str]] = []
    try:
        items = list(string.Formatter().parse(text))
    except ValueError as err:
        hint = "(write {{ and }} for literal braces)"
        raise fail(f"reason {quote(text)}: {err} {hint}") from None
    for literal, field_name, spec, conv in items:
        if field_name is None:
            parts.append((literal, None, ""))
            continue
        ph = quote(field_name, bare=True)
        at = f"reason placeholder {{{ph}}}"
        if conv:
            raise fail(f"reason placeholder {{{ph}!{conv}}}: conversions are not allowed")
        try:
            ref = parse_ref(field_name, schema)
        except RuleError as err:
            raise fail(f"{at}: {err}") from None
        if _BIG_FORMAT.search(spec):  # {close:.999999999f} would build a gigabyte per signal
            raise fail(f"{at}: format {quote(spec)}: width and precision must be below 100")
        try:
            format(1234.5, spec or ",.2f")
        except ValueError:
            raise fail(f"{at}: bad format {quote(spec)}") from None
        parts.append((literal, ref, spec or ""))
    return Template(text, tuple(parts))


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

    threshold = _number(data.get("threshold"))
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
        rules.append(_rule(raw, i, schema, regime_names, seen, fail, compile_condition))
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


def _rule(
    raw: Any,
    i: int,
    schema: Schema,
    regime_names: list[str],
    seen: set[str],
    fail: Any,
    compile_condition: Any,
) -> Rule:
    from pipeline.strategy.rules import RuleError

    if not isinstance(raw, Mapping):
        raise fail(f"rule #{i + 1} must be a mapping with name, when, direction, weight, reason")
    rname = raw.get("name")
    if not isinstance(rname, str) or not rname.isidentifier():
        raise fail(f"rule #{i + 1} needs a `name` that is an identifier, got {quote(rname)}")
    if rname in seen:
        raise fail("the name is used twice", rname)
    seen.add(rname)
    if extra := set(raw) - _RULE_KEYS:
        keys = quote(sorted(extra, key=str))
        raise fail(f"unknown key(s) {keys}; allowed: {sorted(_RULE_KEYS)}", rname)
    when = raw.get("when")
    if isinstance(when, bool):
        when = str(when)
    try:
        node = compile_condition(when, schema)
    except RuleError as err:
        raise fail(f"`when`: {err}", rname) from None
    direction = raw.get("direction")
    if direction not in ("long", "short", "both"):
        raise fail(f"`direction` must be long, short or both, got {quote(direction)}", rname)
    if direction == "both" and node.kind != "num":
        raise fail(
            "direction both needs a signed number (> 0 long, < 0 short), e.g. a sub-signal or"
            " sign(macd_hist); for a true/false condition use direction long or short",
            rname,
        )
    if direction != "both" and node.kind != "bool":
        raise fail(f"direction {direction} needs a true/false condition, not a number", rname)
    gate = raw.get("gate", False)
    if not isinstance(gate, bool):
        raise fail(f"`gate` must be true or false, got {quote(gate)}", rname)
    weight = _number(raw.get("weight"))
    if gate:
        if "weight" in raw:
            raise fail("a gate has no weight (it must hold, it does not add)", rname)
        weight = 0.0
    elif weight is None or weight <= 0:
        raise fail(f"`weight` must be a positive number, got {quote(raw.get('weight'))}", rname)
    mult_raw = raw.get("regimes") or {}
    if not isinstance(mult_raw, Mapping):
        raise fail("`regimes` must map regime names to weight multipliers", rname)
    for k, v in mult_raw.items():
        if k not in regime_names:
            raise fail(
                f"unknown regime {quote(k)}; this personality defines {quote(regime_names)}", rname
            )
        m = _number(v)
        if m is None or m < 0:
            what = f"multiplier for regime {quote(k)} must be a number >= 0, got {quote(v)}"
            raise fail(what, rname)
    if gate and mult_raw:
        raise fail("a gate has no weight to multiply per regime", rname)
    reason = _template(raw.get("reason"), schema, lambda w: fail(w, rname))
    return Rule(
        name=rname,
        when=str(when),
        node=node,
        direction=direction,
        weight=float(weight),
        gate=gate,
        reason=reason,
        multipliers=tuple(float(mult_raw.get(g, 1.0)) for g in regime_names),
    )


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

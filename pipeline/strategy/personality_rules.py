"""One rule of a personality file (pipeline.strategy.personality): its fields checked at load,
its condition compiled, and its reason (and `when_unknown`) text with `{column}` placeholders
checked against what the personality may read."""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pipeline.yamlfile import quote

if TYPE_CHECKING:
    from pipeline.strategy.rules import Node, Ref, Schema

Direction = Literal["long", "short", "both"]
_BIG_FORMAT = re.compile(r"[1-9][0-9]{2}")  # a width or precision of 100 or more
_RULE_KEYS = {
    "name",
    "when",
    "direction",
    "weight",
    "gate",
    "reason",
    "regimes",
    "when_unknown",
    "enabled",
}


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
    unknown: Template | None = None  # a gate passing where its condition is unknown: the reason


def number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        f = float(v)
    except OverflowError:  # an int beyond any float
        return None
    return f if math.isfinite(f) else None


def template(text: Any, schema: Schema, fail: Any) -> Template:
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


def rule_from_dict(
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
    weight = number(raw.get("weight"))
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
        m = number(v)
        if m is None or m < 0:
            what = f"multiplier for regime {quote(k)} must be a number >= 0, got {quote(v)}"
            raise fail(what, rname)
    if gate and mult_raw:
        raise fail("a gate has no weight to multiply per regime", rname)
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise fail(f"`enabled` must be true or false, got {quote(enabled)}", rname)
    reason = template(raw.get("reason"), schema, lambda w: fail(w, rname))
    unknown = None
    if "when_unknown" in raw:
        unknown = template(raw["when_unknown"], schema, lambda w: fail(f"when_unknown: {w}", rname))
    return Rule(
        name=rname,
        when=str(when),
        node=node,
        direction=direction,
        weight=float(weight),
        gate=gate,
        reason=reason,
        multipliers=tuple(float(mult_raw.get(g, 1.0)) for g in regime_names),
        unknown=unknown,
    )

"""The condition language of personalities: parsed once with `ast`, checked, compiled to numpy.

A condition is a Python-like expression over the bars of the signal timeframe:

    crosses_above(ema_9, ema_21) and stoch_k < 20
    close > 1h.sma_200                      # a higher timeframe, joined as-of
    rsi_14 < 30 and rising(rsi_14)
    squeeze_breakout(within=8)              # a registered sub-signal (pipeline.strategy.votes)
    buy_ratio > 0.55 and funding_rate < 0.0005   # market context (pipeline.strategy.context)

Only these nodes exist: numbers, True/False, column names (`ema_9`) and higher-timeframe
columns (`1h.sma_200`), `and or not`, comparisons (chains too), `+ - * /`, unary minus, and
calls of the functions in BUILTINS or SUBSIGNALS with constant keyword arguments. There is no
eval, no attribute access beyond `<timeframe>.<column>`, no strings, no subscripts.

Functions (n: a whole number of bars): prev(x, n=1), crosses_above(a, b), crosses_below(a, b),
rising(x, n=1), falling(x, n=1), highest(x, n), lowest(x, n), mean(x, n), std(x, n),
within(cond, n) (true on any of the last n bars), held(cond, n) (on all of them), abs, sign,
min(a, b), max(a, b) (pipeline/strategy/functions.py); and the sub-signals of
pipeline/strategy/votes.py, e.g. fair_value_gap(m=10). This module is imported only when
personalities are loaded (run time), so numpy is at top.

Why numpy and why these semantics:
- Values are float64 arrays, one per bar of a dense grid (a missing bar is a NaN row), so
  `prev(x, n)` always means n bars of the timeframe back, whatever is missing.
- Conditions are three-valued (Kleene): 1.0 true, 0.0 false, NaN unknown (indicator still
  warming up, bar missing). `not` of unknown stays unknown, so `not (rsi_14 < 30)` never holds
  on a bar without RSI; a rule holds only where its condition is exactly true.
- Every window function is exact (pipeline/strategy/bars.py), so a partition read from a
  bounded window gives the very same bits as one pass over all history. Each node knows how
  many bars back it reads (`lookback`), from which the partition's input window is derived.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.strategy.bars import CMP, Bars, compare, k_and, k_or
from pipeline.strategy.functions import BUILTINS, Builtin, Kind
from pipeline.strategy.votes import SUBSIGNALS, SubSignal
from pipeline.yamlfile import quote

MAX_WINDOW = 5000  # bars; a longer window is a typo and would make partitions read months
# Compiling and evaluating recurse once per level of nesting: bounded here, far below Python's
# recursion limit, so `not not not ...` or `close + close + ...` is an error, not a crash.
MAX_CHARS = 1000
MAX_NESTING = 100
_TF_REF = re.compile(r"(?<![\w.])([1-9][0-9]*[mhdwM])\.(?=[A-Za-z_])")
_TF_PREFIX = "__tf_"
_BARE_TF = re.compile(r"(?<![\w.])[1-9][0-9]*[mhdwM](?![\w.])")


class RuleError(ValueError):
    """A condition that cannot be accepted; the message says what and where."""


_ARITH: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.divide,
}


# -- compiled expressions ----------------------------------------------------------------------

Ref = tuple[str | None, str]  # (timeframe or None for the signal timeframe, column)


@dataclass(frozen=True)
class Node:
    """A compiled (sub)expression: its kind, how many bars back it reads, what columns."""

    kind: Kind
    lookback: int
    refs: frozenset[Ref]
    fn: Callable[[Bars], np.ndarray]
    text: str

    def __call__(self, bars: Bars) -> np.ndarray:
        return self.fn(bars)


@dataclass(frozen=True)
class Schema:
    """What a condition may name: the signal timeframe, the other timeframes it may read
    as-of, the columns every timeframe has and which of them are booleans."""

    signal_tf: str
    timeframes: tuple[str, ...]
    columns: frozenset[str]
    booleans: frozenset[str] = frozenset()


def ref_name(ref: Ref) -> str:
    tf, col = ref
    return col if tf is None else f"{tf}.{col}"


def parse_ref(text: str, schema: Schema) -> Ref:
    """`ema_9` or `1h.sma_200` as a checked reference (used for reason placeholders too)."""
    tf, _, col = text.strip().rpartition(".")
    _check_column(col, tf or None, schema, text)
    return (None if not tf or tf == schema.signal_tf else tf), col


def _check_column(col: str, tf: str | None, schema: Schema, text: str) -> None:
    if tf is not None and tf not in schema.timeframes:
        raise RuleError(
            f"unknown timeframe {quote(tf)} in {quote(text, 120)}: this personality reads"
            f" {list(schema.timeframes)} (add it to its `timeframes`)"
        )
    if col not in schema.columns:
        close = [c for c in sorted(schema.columns) if c.split("_")[0] == col.split("_")[0]]
        hint = f"; did you mean {close}?" if close else ""
        raise RuleError(
            f"unknown column {quote(col)} in {quote(text, 120)}{hint} (known: candle columns,"
            " the indicators of pipeline/indicators.yaml and the market context of"
            f" pipeline/strategy/context.py: {sorted(schema.columns)})"
        )


def compile_condition(text: str, schema: Schema) -> Node:
    """Parse and check `text`; RuleError says what is wrong (unknown column, function ...)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        raise RuleError("the condition is empty; write e.g. `rsi_14 < 30`")
    if not isinstance(text, str):
        raise RuleError(f"the condition must be text such as `rsi_14 < 30`, got {quote(text)}")
    if len(text) > MAX_CHARS:
        raise RuleError(
            f"the condition {quote(text)} is longer than {MAX_CHARS} characters: split it into"
            " rules, or write a sub-signal (pipeline/strategy/votes.py)"
        )
    src = _TF_REF.sub(lambda m: f"{_TF_PREFIX}{m.group(1)}.", text.strip())
    too_deep = RuleError(
        f"the condition {quote(text, 120)} nests deeper than {MAX_NESTING} levels:"
        " split it into rules, or write a sub-signal (pipeline/strategy/votes.py)"
    )
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError as err:
        if bare := _BARE_TF.search(src):
            raise RuleError(
                f"a timeframe must be followed by a column, e.g. {bare.group(0)}.close"
                f" (at `{bare.group(0)}` in {quote(text, 120)})"
            ) from None
        raise RuleError(f"cannot parse {quote(text, 120)}: {err.msg}") from None
    except (RecursionError, MemoryError):  # Python's own parser gives up on deep nesting
        raise too_deep from None
    if _nesting(tree.body) > MAX_NESTING:
        raise too_deep
    return _Compiler(text, schema).node(tree.body)


def _nesting(tree: ast.AST) -> int:
    """Levels of the syntax tree, counted without recursion."""
    deepest, todo = 0, [(tree, 1)]
    while todo:
        node, level = todo.pop()
        deepest = max(deepest, level)
        todo.extend((child, level + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _float(v: float) -> float:
    try:
        return float(v)
    except OverflowError:  # an integer beyond any float
        return math.inf


class _Compiler:
    def __init__(self, text: str, schema: Schema) -> None:
        self.text = text
        self.schema = schema

    def fail(self, node: ast.AST, what: str) -> RuleError:
        part = quote(ast.unparse(node).replace(_TF_PREFIX, ""), bare=True)
        return RuleError(f"{what} (at `{part}` in {quote(self.text, 100)})")

    def expect(self, n: Node, kind: Kind, node: ast.AST, role: str) -> Node:
        if n.kind != kind:
            want = "a condition (true/false)" if kind == "bool" else "a number"
            got = "a condition" if n.kind == "bool" else "a number"
            raise self.fail(node, f"{role} must be {want}, got {got}")
        return n

    def node(self, node: ast.AST) -> Node:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise self.fail(node, f"{type(node).__name__} is not allowed in a condition")
        return method(node)

    # leaves
    def _Constant(self, node: ast.Constant) -> Node:
        v = node.value
        if isinstance(v, bool):
            fv = 1.0 if v else 0.0
            return Node("bool", 0, frozenset(), lambda b: np.full(b.n, fv), repr(v))
        if isinstance(v, int | float):
            fv = _float(v)
            if not math.isfinite(fv):
                raise self.fail(node, f"the number {quote(v)} is too large")
            return Node("num", 0, frozenset(), lambda b: np.full(b.n, fv), repr(v))
        raise self.fail(node, f"constant {quote(v)} is not allowed (numbers and True/False only)")

    def _column(self, node: ast.AST, tf: str | None, col: str) -> Node:
        if col.startswith(_TF_PREFIX):
            raise self.fail(node, "a timeframe must be followed by a column, e.g. 1h.sma_200")
        _check_column(col, tf, self.schema, self.text)
        tf = None if tf == self.schema.signal_tf else tf
        kind: Kind = "bool" if col in self.schema.booleans else "num"
        ref: Ref = (tf, col)
        return Node(kind, 0, frozenset([ref]), lambda b: b.col(col, tf), ref_name(ref))

    def _Name(self, node: ast.Name) -> Node:
        return self._column(node, None, node.id)

    def _Attribute(self, node: ast.Attribute) -> Node:
        base = node.value
        if not (isinstance(base, ast.Name) and base.id.startswith(_TF_PREFIX)):
            raise self.fail(node, "only <timeframe>.<column> may use a dot, e.g. 1h.sma_200")
        return self._column(node, base.id.removeprefix(_TF_PREFIX), node.attr)

    # operators
    def _BoolOp(self, node: ast.BoolOp) -> Node:
        parts = [self.expect(self.node(v), "bool", v, "each side of and/or") for v in node.values]
        op = k_and if isinstance(node.op, ast.And) else k_or

        def fn(b: Bars) -> np.ndarray:
            out = parts[0](b)
            for p in parts[1:]:
                out = op(out, p(b))
            return out

        return self._combine("bool", parts, fn)

    def _UnaryOp(self, node: ast.UnaryOp) -> Node:
        inner = self.node(node.operand)
        if isinstance(node.op, ast.Not):
            self.expect(inner, "bool", node.operand, "the operand of `not`")
            return self._combine("bool", [inner], lambda b: 1.0 - inner(b))
        if isinstance(node.op, ast.USub | ast.UAdd):
            self.expect(inner, "num", node.operand, "the operand of a sign")
            if isinstance(node.op, ast.UAdd):
                return inner
            return self._combine("num", [inner], lambda b: -inner(b))
        raise self.fail(node, f"operator {type(node.op).__name__} is not allowed")

    def _BinOp(self, node: ast.BinOp) -> Node:
        op = _ARITH.get(type(node.op))
        if op is None:
            raise self.fail(node, f"operator {type(node.op).__name__} is not allowed (+ - * /)")
        a = self.expect(self.node(node.left), "num", node.left, "arithmetic operands")
        c = self.expect(self.node(node.right), "num", node.right, "arithmetic operands")

        def fn(b: Bars) -> np.ndarray:
            with np.errstate(divide="ignore", invalid="ignore"):
                out = op(a(b), c(b))
            out[~np.isfinite(out)] = np.nan  # x / 0 is unknown, not infinite
            return out

        return self._combine("num", [a, c], fn)

    def _Compare(self, node: ast.Compare) -> Node:
        for op in node.ops:
            if type(op) not in CMP:
                raise self.fail(node, f"comparison {type(op).__name__} is not allowed")
        items = [node.left, *node.comparators]
        vals = [self.expect(self.node(v), "num", v, "compared values") for v in items]
        ops = list(node.ops)

        def fn(b: Bars) -> np.ndarray:
            arrays = [v(b) for v in vals]
            out = compare(ops[0], arrays[0], arrays[1])
            for i in range(1, len(ops)):
                out = k_and(out, compare(ops[i], arrays[i], arrays[i + 1]))
            return out

        return self._combine("bool", vals, fn)

    def _combine(
        self, kind: Kind, parts: list[Node], fn: Callable[[Bars], np.ndarray], extra: int = 0
    ) -> Node:
        return Node(
            kind,
            max((p.lookback for p in parts), default=0) + extra,
            frozenset().union(*(p.refs for p in parts)),
            fn,
            self.text,
        )

    # calls
    def _Call(self, node: ast.Call) -> Node:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, "only plain function names can be called")
        name = node.func.id
        if name in BUILTINS:
            return self._builtin(node, name, BUILTINS[name])
        if name in SUBSIGNALS:
            return self._subsignal(node, name, SUBSIGNALS[name])
        known = sorted(BUILTINS) + sorted(SUBSIGNALS)
        raise self.fail(node, f"unknown function {name!r}; known: {known}")

    def _int(self, node: ast.AST, what: str) -> int:
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int)
            and not isinstance(node.value, bool)
            and 1 <= node.value <= MAX_WINDOW
        ):
            return int(node.value)
        raise self.fail(node, f"{what} must be a whole number of bars from 1 to {MAX_WINDOW}")

    def _builtin(self, node: ast.Call, name: str, f: Builtin) -> Node:
        npos = len(f.args)
        given = list(node.args)
        if len(given) < npos or len(given) > npos + len(f.ints):
            usage = ", ".join(["x"] * npos + [k for k, _ in f.ints])
            raise self.fail(node, f"{name} takes ({usage}), got {len(given)} argument(s)")
        ints: dict[str, int] = {}
        names = [k for k, _ in f.ints]
        for k, v in zip(names, given[npos:], strict=False):
            ints[k] = self._int(v, f"{name}'s {k}")
        for kw in node.keywords:
            if kw.arg not in names or kw.arg in ints:
                raise self.fail(node, f"{name} has no (or a repeated) argument {kw.arg!r}")
            ints[kw.arg] = self._int(kw.value, f"{name}'s {kw.arg}")
        for k, default in f.ints:
            if k not in ints:
                if default is None:
                    raise self.fail(node, f"{name} needs its window `{k}`, e.g. {name}(x, 20)")
                ints[k] = default
        if name == "std" and ints["n"] < 2:
            raise self.fail(node, "std needs a window of at least 2 bars")
        args = [
            self.expect(self.node(a), kind, a, f"argument {i + 1} of {name}")
            for i, (a, kind) in enumerate(zip(given[:npos], f.args, strict=True))
        ]
        values = [ints[k] for k in names]

        def fn(b: Bars) -> np.ndarray:
            with np.errstate(invalid="ignore"):
                return np.asarray(f.impl(*[a(b) for a in args], *values), dtype=np.float64)

        return self._combine(f.returns, args, fn, extra=f.extra(*values))

    def _subsignal(self, node: ast.Call, name: str, s: SubSignal) -> Node:
        if node.args:
            raise self.fail(node, f"{name} takes keyword arguments only: {dict(s.params)}")
        params = dict(s.params)
        for kw in node.keywords:
            if kw.arg not in params:
                raise self.fail(node, f"{name} has no parameter {kw.arg!r}; it takes {params}")
            v = kw.value
            neg = isinstance(v, ast.UnaryOp) and isinstance(v.op, ast.USub)
            c = v.operand if neg and isinstance(v, ast.UnaryOp) else v
            if not (
                isinstance(c, ast.Constant)
                and isinstance(c.value, int | float)
                and not isinstance(c.value, bool)
            ):
                raise self.fail(node, f"{name}'s {kw.arg} must be a number")
            params[kw.arg] = -float(c.value) if neg else float(c.value)
        for col in s.reads:
            if col not in self.schema.columns:
                raise self.fail(node, f"{name} reads column {col!r}, which is not configured")
        try:
            lookback = int(s.lookback(params))
        except (ValueError, KeyError) as err:
            raise self.fail(node, f"{name}: bad parameters {params}: {err}") from None
        if not 0 <= lookback <= MAX_WINDOW:
            raise self.fail(node, f"{name} would read {lookback} bars back (max {MAX_WINDOW})")
        refs: frozenset[Ref] = frozenset((None, c) for c in s.reads)

        def fn(b: Bars) -> np.ndarray:
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.asarray(s.impl(b, **params), dtype=np.float64)

        return Node("num", lookback, refs, fn, self.text)


__all__ = [
    "MAX_NESTING",
    "MAX_WINDOW",
    "Node",
    "Ref",
    "RuleError",
    "Schema",
    "compile_condition",
    "parse_ref",
    "ref_name",
]

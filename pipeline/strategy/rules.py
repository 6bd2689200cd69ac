"""The condition language of personalities: parsed once with `ast`, checked, compiled to numpy.

A condition is a Python-like expression over the bars of the signal timeframe:

    crosses_above(ema_9, ema_21) and stoch_k < 20
    close > 1h.sma_200                      # a higher timeframe, joined as-of
    rsi_14 < 30 and rising(rsi_14)
    squeeze_breakout(within=8)              # a registered sub-signal (pipeline.strategy.votes)

Only these nodes exist: numbers, True/False, column names (`ema_9`) and higher-timeframe
columns (`1h.sma_200`), `and or not`, comparisons (chains too), `+ - * /`, unary minus, and
calls of the functions in BUILTINS or SUBSIGNALS with constant keyword arguments. There is no
eval, no attribute access beyond `<timeframe>.<column>`, no strings, no subscripts.

Functions (n: a whole number of bars): prev(x, n=1), crosses_above(a, b), crosses_below(a, b),
rising(x, n=1), falling(x, n=1), highest(x, n), lowest(x, n), mean(x, n), std(x, n),
within(cond, n) (true on any of the last n bars), held(cond, n) (on all of them), abs, sign,
min(a, b), max(a, b); and the sub-signals of pipeline/strategy/votes.py, e.g. fair_value_gap(m=10).
This module is imported only when personalities are loaded (run time), so numpy is at top.

Why numpy and why these semantics:
- Values are float64 arrays, one per bar of a dense grid (a missing bar is a NaN row), so
  `prev(x, n)` always means n bars of the timeframe back, whatever is missing.
- Conditions are three-valued (Kleene): 1.0 true, 0.0 false, NaN unknown (indicator still
  warming up, bar missing). `not` of unknown stays unknown, so `not (rsi_14 < 30)` never holds
  on a bar without RSI; a rule holds only where its condition is exactly true.
- Every window function is computed so a value depends only on the values in its window, in
  a fixed order (no running sums): a partition read from a bounded window gives the very same
  bits as one pass over all history. Each node knows how many bars back it reads (`lookback`),
  from which the partition's input window is derived.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pipeline.yamlfile import quote

Kind = Literal["num", "bool"]
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


# -- the bars an expression evaluates over ----------------------------------------------------


@dataclass
class Bars:
    """The signal timeframe's bars on a dense grid, with higher timeframes joined as-of.

    `fetch(tf, column)` returns one column aligned to these rows (tf None: the signal
    timeframe), NaN where there is no value; results are cached per evaluation.
    """

    n: int
    fetch: Callable[[str | None, str], np.ndarray]
    memo: dict[Any, np.ndarray] = field(default_factory=dict)

    def col(self, name: str, tf: str | None = None) -> np.ndarray:
        key = (tf, name)
        if key not in self.memo:
            self.memo[key] = self.fetch(tf, name)
        return self.memo[key]


# -- window helpers (exact: a value depends only on its window, in a fixed order) -------------


def shift(x: np.ndarray, n: int) -> np.ndarray:
    """x n bars back (n > 0), NaN where that is before the first row."""
    out = np.full_like(x, np.nan, dtype=np.float64)
    if n < len(x):
        out[n:] = x[: len(x) - n]
    return out


def _windows(x: np.ndarray, n: int) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(x, n)


def _rolling_extreme(x: np.ndarray, n: int, op: np.ufunc) -> np.ndarray:
    """op (maximum/minimum) over the last n bars, NaN if any is NaN. Exact in any order, so
    it may be fast: n-1 shifted passes for short windows, van Herk/Gil-Werman block prefix
    and suffix scans (O(len) whatever n) for long ones."""
    m = len(x)
    out = np.full(m, np.nan)
    if n > m:
        return out
    x = np.asarray(x, dtype=np.float64)
    if n <= 16:
        acc = x[n - 1 :].copy()
        for j in range(1, n):
            op(acc, x[n - 1 - j : m - j], out=acc)
        out[n - 1 :] = acc
        return out
    blocks = -(-m // n)
    padded = np.full(blocks * n, np.nan)  # never read: windows end inside the data
    padded[:m] = x
    b = padded.reshape(blocks, n)
    prefix = op.accumulate(b, axis=1).ravel()
    suffix = op.accumulate(b[:, ::-1], axis=1)[:, ::-1].ravel()
    i = np.arange(n - 1, m)
    out[n - 1 :] = op(suffix[i - n + 1], prefix[i])
    return out


def rolling_max(x: np.ndarray, n: int) -> np.ndarray:
    """Max over the last n bars (NaN if any is NaN)."""
    return _rolling_extreme(x, n, np.maximum)


def rolling_min(x: np.ndarray, n: int) -> np.ndarray:
    return _rolling_extreme(x, n, np.minimum)


def rolling_sum(x: np.ndarray, n: int) -> np.ndarray:
    """Sum over the last n bars, added oldest first (one pass per lag): the same bits for a
    bar whatever row the input starts at, unlike a running sum."""
    m = len(x)
    out = np.full(m, np.nan)
    if n > m:
        return out
    acc = x[: m - n + 1].astype(np.float64, copy=True)
    for j in range(1, n):
        acc += x[j : m - n + 1 + j]
    out[n - 1 :] = acc
    return out


def rolling_mean(x: np.ndarray, n: int) -> np.ndarray:
    return rolling_sum(x, n) / n


def rolling_std(x: np.ndarray, n: int) -> np.ndarray:
    """Population standard deviation over the last n bars (two-pass, fixed order)."""
    m = len(x)
    out = np.full(m, np.nan)
    if n > m:
        return out
    mean = rolling_mean(x, n)[n - 1 :]
    acc = np.zeros(m - n + 1)
    for j in range(n):
        d = x[j : m - n + 1 + j] - mean
        acc += d * d
    out[n - 1 :] = np.sqrt(acc / n)
    return out


def truth(x: np.ndarray) -> np.ndarray:
    """Where a three-valued condition is exactly true."""
    return x == 1.0


def as_cond(mask: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """A boolean mask as a three-valued condition (NaN where `known` is False)."""
    out = mask.astype(np.float64)
    if known is not None:
        out[~known] = np.nan
    return out


def _k_and(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.fmin(a, b)
    out[(out == 1.0) & (np.isnan(a) | np.isnan(b))] = np.nan
    return out


def _k_or(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.fmax(a, b)
    out[(out == 0.0) & (np.isnan(a) | np.isnan(b))] = np.nan
    return out


def _compare(op: ast.cmpop, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        res = _CMP[type(op)](a, b)
    out = res.astype(np.float64)
    out[np.isnan(a) | np.isnan(b)] = np.nan
    return out


_CMP: dict[type, Callable[[Any, Any], Any]] = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}
_ARITH: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.divide,
}


# -- functions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Builtin:
    """A function over expressions: `args` are kinds of expression arguments, then `ints`
    names optional window/lag integers (with defaults; None = required)."""

    args: tuple[Kind, ...]
    returns: Kind
    impl: Callable[..., np.ndarray]
    ints: tuple[tuple[str, int | None], ...] = ()
    extra: Callable[..., int] = lambda *ints: 0  # bars read beyond the arguments' lookback
    doc: str = ""


def _crosses(a: np.ndarray, b: np.ndarray, up: bool) -> np.ndarray:
    pa, pb = shift(a, 1), shift(b, 1)
    now = _compare(ast.Gt() if up else ast.Lt(), a, b)
    before = _compare(ast.LtE() if up else ast.GtE(), pa, pb)
    return _k_and(now, before)


def _within(x: np.ndarray, n: int) -> np.ndarray:
    """Kleene 'any of the last n bars': true if one is true, unknown if none is but one is."""
    ones = rolling_max(np.nan_to_num(x, nan=0.0), n)
    unknown = rolling_max(np.isnan(x).astype(np.float64), n)
    out = np.where(ones == 1.0, 1.0, np.where(unknown == 1.0, np.nan, 0.0))
    out[np.isnan(ones)] = np.nan
    return out


def _held(x: np.ndarray, n: int) -> np.ndarray:
    """Kleene 'all of the last n bars'."""
    return 1.0 - _within(1.0 - x, n)


def _sign(x: np.ndarray) -> np.ndarray:
    return np.sign(x)


BUILTINS: dict[str, Builtin] = {
    "prev": Builtin(
        ("num",), "num", lambda x, n: shift(x, n), (("n", 1),), lambda n: n, "x n bars ago"
    ),
    "crosses_above": Builtin(
        ("num", "num"),
        "bool",
        lambda a, b: _crosses(a, b, True),
        extra=lambda: 1,
        doc="a > b now and a <= b on the bar before",
    ),
    "crosses_below": Builtin(
        ("num", "num"),
        "bool",
        lambda a, b: _crosses(a, b, False),
        extra=lambda: 1,
        doc="a < b now and a >= b on the bar before",
    ),
    "rising": Builtin(
        ("num",),
        "bool",
        lambda x, n: _compare(ast.Gt(), x, shift(x, n)),
        (("n", 1),),
        lambda n: n,
        "x > x n bars ago",
    ),
    "falling": Builtin(
        ("num",),
        "bool",
        lambda x, n: _compare(ast.Lt(), x, shift(x, n)),
        (("n", 1),),
        lambda n: n,
        "x < x n bars ago",
    ),
    "highest": Builtin(
        ("num",), "num", rolling_max, (("n", None),), lambda n: n - 1, "max of the last n bars"
    ),
    "lowest": Builtin(
        ("num",), "num", rolling_min, (("n", None),), lambda n: n - 1, "min of the last n bars"
    ),
    "mean": Builtin(
        ("num",), "num", rolling_mean, (("n", None),), lambda n: n - 1, "mean of the last n bars"
    ),
    "std": Builtin(
        ("num",), "num", rolling_std, (("n", None),), lambda n: n - 1, "std of the last n bars"
    ),
    "within": Builtin(
        ("bool",), "bool", _within, (("n", None),), lambda n: n - 1, "true on any of the last n"
    ),
    "held": Builtin(
        ("bool",), "bool", _held, (("n", None),), lambda n: n - 1, "true on all of the last n"
    ),
    "abs": Builtin(("num",), "num", np.abs, doc="absolute value"),
    "sign": Builtin(("num",), "num", _sign, doc="-1, 0 or 1"),
    "min": Builtin(("num", "num"), "num", np.minimum, doc="smaller of two"),
    "max": Builtin(("num", "num"), "num", np.maximum, doc="larger of two"),
}


@dataclass(frozen=True)
class SubSignal:
    """A named vote over the signal timeframe's bars: `impl(bars, **params)` returns, per bar,
    +1 (long), -1 (short), 0 (no vote) or a strength in between; NaN where unknown.

    `reads` are the columns it needs; `lookback(params)` the bars back it reads.
    """

    impl: Callable[..., np.ndarray]
    reads: tuple[str, ...]
    params: Mapping[str, float]
    lookback: Callable[[Mapping[str, float]], int]
    doc: str = ""


SUBSIGNALS: dict[str, SubSignal] = {}


def subsignal(
    name: str,
    reads: tuple[str, ...],
    lookback: Callable[[Mapping[str, float]], int],
    **params: float,
) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Register a sub-signal under `name` (its keyword parameters and their defaults)."""

    def deco(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        SUBSIGNALS[name] = SubSignal(fn, reads, dict(params), lookback, (fn.__doc__ or "").strip())
        return fn

    return deco


def _load_subsignals() -> None:
    import pipeline.strategy.votes  # noqa: F401  (registers the shipped sub-signals)


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
            f"unknown column {quote(col)} in {quote(text, 120)}{hint} (known: candle columns and"
            f" the indicators of pipeline/indicators.yaml: {sorted(schema.columns)})"
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
        op = _k_and if isinstance(node.op, ast.And) else _k_or

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
            if type(op) not in _CMP:
                raise self.fail(node, f"comparison {type(op).__name__} is not allowed")
        items = [node.left, *node.comparators]
        vals = [self.expect(self.node(v), "num", v, "compared values") for v in items]
        ops = list(node.ops)

        def fn(b: Bars) -> np.ndarray:
            arrays = [v(b) for v in vals]
            out = _compare(ops[0], arrays[0], arrays[1])
            for i in range(1, len(ops)):
                out = _k_and(out, _compare(ops[i], arrays[i], arrays[i + 1]))
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
        _load_subsignals()
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
    "BUILTINS",
    "MAX_WINDOW",
    "SUBSIGNALS",
    "Bars",
    "Builtin",
    "Node",
    "Ref",
    "RuleError",
    "Schema",
    "SubSignal",
    "as_cond",
    "compile_condition",
    "parse_ref",
    "ref_name",
    "rolling_max",
    "rolling_mean",
    "rolling_min",
    "rolling_std",
    "rolling_sum",
    "shift",
    "subsignal",
    "truth",
]

"""The built-in functions of the condition language: prev, crosses_above, rising, highest,
mean, within, held, abs, sign, min, max, ... (see pipeline.strategy.rules for the language).

Each declares its argument kinds, its window/lag integers and how many bars back it reads
beyond its arguments, from which the compiler derives a rule's lookback.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np

from pipeline.strategy.bars import (
    compare,
    k_and,
    rolling_max,
    rolling_mean,
    rolling_min,
    rolling_std,
    shift,
)

Kind = Literal["num", "bool"]


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
    now = compare(ast.Gt() if up else ast.Lt(), a, b)
    before = compare(ast.LtE() if up else ast.GtE(), pa, pb)
    return k_and(now, before)


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


def _crossing(up: bool) -> Builtin:
    """crosses_above (up) or crosses_below."""
    now, before = ("a > b", "a <= b") if up else ("a < b", "a >= b")
    doc = f"{now} now and {before} on the bar before"
    return Builtin(("num", "num"), "bool", partial(_crosses, up=up), extra=lambda: 1, doc=doc)


def _versus_past(op: ast.cmpop, doc: str) -> Builtin:
    """rising (>) or falling (<): x against itself n bars ago."""
    return Builtin(("num",), "bool", partial(_past, op), (("n", 1),), lambda n: n, doc)


def _window(kind: Kind, impl: Callable[..., np.ndarray], doc: str) -> Builtin:
    """A function of the last n bars (n required), of the kind it takes."""
    return Builtin((kind,), kind, impl, (("n", None),), lambda n: n - 1, doc)


def _past(op: ast.cmpop, x: np.ndarray, n: int) -> np.ndarray:
    return compare(op, x, shift(x, n))


BUILTINS: dict[str, Builtin] = {
    "prev": Builtin(
        ("num",), "num", lambda x, n: shift(x, n), (("n", 1),), lambda n: n, "x n bars ago"
    ),
    "crosses_above": _crossing(True),
    "crosses_below": _crossing(False),
    "rising": _versus_past(ast.Gt(), "x > x n bars ago"),
    "falling": _versus_past(ast.Lt(), "x < x n bars ago"),
    "highest": _window("num", rolling_max, "max of the last n bars"),
    "lowest": _window("num", rolling_min, "min of the last n bars"),
    "mean": _window("num", rolling_mean, "mean of the last n bars"),
    "std": _window("num", rolling_std, "std of the last n bars"),
    "within": _window("bool", _within, "true on any of the last n"),
    "held": _window("bool", _held, "true on all of the last n"),
    "abs": Builtin(("num",), "num", np.abs, doc="absolute value"),
    "sign": Builtin(("num",), "num", _sign, doc="-1, 0 or 1"),
    "min": Builtin(("num", "num"), "num", np.minimum, doc="smaller of two"),
    "max": Builtin(("num", "num"), "num", np.maximum, doc="larger of two"),
}

"""The built-in functions of the condition language: prev, crosses_above, rising, highest,
mean, within, held, abs, sign, min, max, ... (see pipeline.strategy.rules for the language).

Each declares its argument kinds, its window/lag integers and how many bars back it reads
beyond its arguments, from which the compiler derives a rule's lookback.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
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
        lambda x, n: compare(ast.Gt(), x, shift(x, n)),
        (("n", 1),),
        lambda n: n,
        "x > x n bars ago",
    ),
    "falling": Builtin(
        ("num",),
        "bool",
        lambda x, n: compare(ast.Lt(), x, shift(x, n)),
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

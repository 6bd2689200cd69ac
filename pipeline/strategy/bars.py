"""What conditions evaluate over: the bars of the signal timeframe as float64 arrays, the exact
window functions on them and three-valued (Kleene) logic.

Shared by the condition compiler (pipeline.strategy.rules), its built-in functions
(pipeline.strategy.functions), the sub-signals (pipeline.strategy.votes) and the signal engine.
Every window function is computed so a value depends only on the values in its window, in a
fixed order (no running sums): a partition read from a bounded window gives the very same bits
as one pass over all history. Conditions are 1.0 true, 0.0 false, NaN unknown.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


def k_and(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.fmin(a, b)
    out[(out == 1.0) & (np.isnan(a) | np.isnan(b))] = np.nan
    return out


def k_or(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.fmax(a, b)
    out[(out == 0.0) & (np.isnan(a) | np.isnan(b))] = np.nan
    return out


def compare(op: ast.cmpop, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        res = CMP[type(op)](a, b)
    out = res.astype(np.float64)
    out[np.isnan(a) | np.isnan(b)] = np.nan
    return out


CMP: dict[type, Callable[[Any, Any], Any]] = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}

"""Backtests of stored signals over 1m candles: engine, metrics, plots, reports, walk-forward.

Plain Python on polars/numpy; importing this package is cheap (numba, polars, matplotlib load
only when a backtest runs), so the Dagster code location may import it at load time.
"""

from pipeline.backtest.engine import run_backtest
from pipeline.backtest.market import Market, prepare
from pipeline.backtest.params import BacktestParams, ParamError
from pipeline.backtest.report import summary_markdown, write_report
from pipeline.backtest.result import BacktestResult
from pipeline.backtest.sweep import sweep, walk_forward

__all__ = [
    "BacktestParams",
    "BacktestResult",
    "Market",
    "ParamError",
    "prepare",
    "run_backtest",
    "summary_markdown",
    "sweep",
    "walk_forward",
    "write_report",
]

"""One backtest's outcome and its mapping onto the warehouse tables.

Trade times: entry_time is the fill bar's open_time; exit_time is the open_time of the bar in
which the exit filled (stops and targets fill somewhere inside it), or the window's last close
for `end_of_window`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.backtest.market import Market
from pipeline.backtest.params import BacktestParams
from pipeline.candles.timeframes import MINUTE_US

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

EXIT_REASONS = (
    "signal",
    "stop_loss",
    "take_profit",
    "trailing_stop",
    "breakeven",
    "liquidation",
    "end_of_window",
)


def run_id_for(
    personality: str,
    symbol: str,
    tf: str,
    start: dt.datetime,
    end: dt.datetime,
    params: dict[str, Any],
    exchange: str = "bybit",
) -> str:
    """Stable per (personality, market, timeframe, period [start, end), parameters): a re-run
    replaces its rows and its report directory; the CLI finds the report by it. Bybit's
    symbols stand alone (the ids from before venues), another venue's carry its name."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    last = end - dt.timedelta(days=1)
    market = symbol if exchange == "bybit" else f"{exchange}-{symbol}"
    return f"{personality}:{market}:{tf}:{start:%Y%m%d}-{last:%Y%m%d}:{digest}"


@dataclass(frozen=True)
class RawRun:
    """What the kernel returned, before any frames are built (what sweeps keep)."""

    equity: np.ndarray
    trades: np.ndarray  # (n_trades, kernel.N_T)
    counters: dict[str, int]
    signal_info: dict[str, int]


@dataclass(frozen=True)
class BacktestResult:
    """One run: inputs' identity, equity per 1m bar, trades, counters, metrics."""

    params: BacktestParams
    market: Market = field(repr=False)
    equity: np.ndarray = field(repr=False)
    trades: pl.DataFrame = field(repr=False)
    counters: dict[str, int]
    signal_info: dict[str, int]
    metrics: dict[str, Any]

    @property
    def personality(self) -> str:
        return self.market.personality

    @property
    def symbol(self) -> str:
        return self.market.symbol

    @property
    def timeframe(self) -> str:
        return self.market.timeframe

    @property
    def start(self) -> dt.datetime:
        return self.market.start

    @property
    def end(self) -> dt.datetime:
        return self.market.end

    @property
    def times(self) -> np.ndarray:
        """Open time of each bar in the window (epoch microseconds)."""
        return self.market.times[self.market.i0 : self.market.i1]

    def bars(self) -> pl.DataFrame:
        """The window's 1m candles with the equity marked at each close."""
        import polars as pl

        w = slice(self.market.i0, self.market.i1)
        return pl.DataFrame(
            {
                "open_time": pl.Series(self.times).cast(pl.Datetime("us", "UTC")),
                "open": self.market.open[w],
                "high": self.market.high[w],
                "low": self.market.low[w],
                "close": self.market.close[w],
                "equity": self.equity,
            }
        )

    # -- warehouse rows ------------------------------------------------------------------
    def runs_row(self, run_id: str) -> dict[str, Any]:
        """A backtest_runs row; params and metrics as JSON text."""
        return {
            "run_id": run_id,
            "personality": self.personality,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "start": self.start,
            "end": self.end,
            "params": json.dumps(self.params.to_dict(), sort_keys=True),
            "metrics": json.dumps(self.metrics, sort_keys=True),
        }

    def runs_frame(self, run_id: str) -> pl.DataFrame:
        """runs_row as a one-row frame typed for `Warehouse.replace('backtest_runs', ...)`."""
        import polars as pl

        row = self.runs_row(run_id)
        return pl.DataFrame(
            [row],
            schema={
                "run_id": pl.String,
                "personality": pl.String,
                "symbol": pl.String,
                "timeframe": pl.String,
                "start": pl.Datetime("us", "UTC"),
                "end": pl.Datetime("us", "UTC"),
                "params": pl.String,
                "metrics": pl.String,
            },
        )

    def trades_frame(self, run_id: str) -> pl.DataFrame:
        """The backtest_trades rows of this run (exactly the table's columns)."""
        import polars as pl

        return self.trades.select(
            pl.lit(run_id).alias("run_id"),
            pl.int_range(1, pl.len() + 1, dtype=pl.Int32).alias("trade_no"),
            "side",
            "entry_time",
            "entry_price",
            "exit_time",
            "exit_price",
            "size",
            "fees",
            "pnl",
            "exit_reason",
        )


def trades_table(m: Market, raw: RawRun) -> pl.DataFrame:
    """Kernel trade records as a frame with times, names and per-trade returns."""
    import numpy as np
    import polars as pl

    from pipeline.backtest import kernel as k

    t = raw.trades
    times = m.times[m.i0 : m.i1]
    entry_i = t[:, k.T_ENTRY_I].astype(np.int64)
    exit_i = t[:, k.T_EXIT_I].astype(np.int64)
    reason = t[:, k.T_REASON].astype(np.int64)
    exit_us = times[exit_i] + np.where(reason == k.END, MINUTE_US, 0)
    ref = t[:, k.T_SIG].astype(np.int64)
    size = t[:, k.T_SIZE]
    entry_px = t[:, k.T_ENTRY_PX]
    dtype = pl.Datetime("us", "UTC")
    return pl.DataFrame(
        {
            "side": np.where(t[:, k.T_SIDE] > 0, "LONG", "SHORT"),
            "entry_time": pl.Series(times[entry_i]).cast(dtype),
            "entry_price": entry_px,
            "exit_time": pl.Series(exit_us).cast(dtype),
            "exit_price": t[:, k.T_EXIT_PX],
            "size": size,
            "fees": t[:, k.T_FEES],
            "slippage": t[:, k.T_SLIP],
            "pnl": t[:, k.T_PNL],
            "return_pct": t[:, k.T_PNL] / (size * entry_px) * 100 if len(t) else np.zeros(0),
            "exit_reason": np.asarray(EXIT_REASONS, dtype=object)[reason].astype(str)
            if len(t)
            else np.zeros(0, dtype=str),
            "confidence": t[:, k.T_CONF],
            "both_touched": t[:, k.T_BOTH] > 0,
            "signal_time": pl.Series(m.sig_close[ref] if len(t) else np.zeros(0, np.int64)).cast(
                dtype
            ),
            "signal_timeframe": [str(x) for x in m.sig_tf[ref]] if len(t) else [],
            "stop_price": t[:, k.T_STOP0],
            "target_price": t[:, k.T_TARGET],
            "entry_bar": entry_i,
            "exit_bar": exit_i,
        },
        schema_overrides={"signal_timeframe": pl.String, "exit_reason": pl.String},
    )

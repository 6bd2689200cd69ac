"""Tables, sweeps, walk-forward and the warehouse rows of a backtest, on the synthetic market."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest

from pipeline.backtest import BacktestParams, ParamError, metrics, prepare, run_backtest
from pipeline.backtest.engine import result_from, simulate
from pipeline.backtest.sweep import sweep, walk_forward
from pipeline.replay import synthetic
from tests.backtest_rules import crossover_signals
from tests.conftest import DAY0, SEED
from warehouse.store import Warehouse

DAYS = 45


@pytest.fixture(scope="module")
def data() -> tuple[pl.DataFrame, pl.DataFrame]:
    ms = int(DAY0.timestamp() * 1000)
    candles = synthetic.frame("BTCUSDT", ms, ms + DAYS * 86_400_000, seed=SEED)
    return candles, crossover_signals(candles, "15m", 8, 24)


def test_tables_add_up_to_the_trades(data: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    candles, signals = data
    res = run_backtest(candles, signals, BacktestParams(take_profit_r=2.0))
    n, pnl = res.trades.height, res.trades["pnl"].sum()
    t = metrics.tables(res)
    assert set(t["by_exit_reason"]["exit_reason"]) <= {
        "signal",
        "stop_loss",
        "take_profit",
        "end_of_window",
    }
    for name in ("by_exit_reason", "by_month", "by_confidence"):
        assert t[name]["trades"].sum() == n, name
        assert t[name]["pnl"].sum() == pytest.approx(pnl), name
    month = t["by_month"]
    assert month["month"].to_list() == ["2024-01", "2024-02"]
    growth = (1 + month["return_pct"] / 100).product()
    assert growth == pytest.approx(res.metrics["final_equity"] / 10_000)
    conf = t["by_confidence"]
    assert conf["confidence"].to_list() == ["0.00-0.25", "0.25-0.50", "0.50-0.75", "0.75-1.00"]


def test_runs_and_trades_rows_load_into_the_warehouse(
    home: Path, data: tuple[pl.DataFrame, pl.DataFrame]
) -> None:
    candles, signals = data
    res = run_backtest(candles, signals, BacktestParams())
    wh = Warehouse(home / "warehouse" / "test.duckdb", replica_sync=False)
    run_id = "sma_cross:BTCUSDT:test"
    wh.replace("backtest_runs", res.runs_frame(run_id), "run_id = ?", [run_id])
    assert wh.replace("backtest_trades", res.trades_frame(run_id), "run_id = ?", [run_id]) > 10
    row = wh.query(
        "SELECT personality, timeframe, start, \"end\", metrics->>'$.sharpe' AS sharpe,"
        " (params->>'$.taker_fee')::DOUBLE AS fee FROM backtest_runs WHERE run_id = ?",
        [run_id],
    ).row(0, named=True)
    assert row["personality"] == "sma_cross" and row["timeframe"] == "15m"
    assert row["start"] == DAY0 and row["end"] == DAY0 + dt.timedelta(days=DAYS)
    assert float(row["sharpe"]) == pytest.approx(res.metrics["sharpe"])
    assert row["fee"] == 0.00055
    stored = wh.query(
        "SELECT sum(pnl) AS pnl, count(*) AS n, min(trade_no) AS first FROM backtest_trades"
        " WHERE run_id = ?",
        [run_id],
    ).row(0, named=True)
    assert stored["n"] == res.trades.height and stored["first"] == 1
    assert stored["pnl"] == pytest.approx(res.metrics["final_equity"] - 10_000)
    json.loads(res.runs_row(run_id)["metrics"])  # plain JSON, no NaN


def test_sweep_matches_single_runs(data: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    candles, signals = data
    grid = {
        "stop_loss_pct": [0.01, 0.03],
        "take_profit_r": [None, 2.0],
        "min_confidence": [0.0, 0.3],
    }
    table = sweep(candles, signals, grid)
    assert table.height == 8
    row = table.filter(
        (pl.col("stop_loss_pct") == 0.03)
        & (pl.col("take_profit_r") == 2.0)
        & (pl.col("min_confidence") == 0.3)
    ).row(0, named=True)
    single = run_backtest(
        candles, signals, BacktestParams(stop_loss_pct=0.03, take_profit_r=2.0, min_confidence=0.3)
    )
    for key in ("final_equity", "sharpe", "max_drawdown_pct", "trades", "win_rate_pct"):
        assert row[key] == pytest.approx(single.metrics[key]), key
    assert table["trades"].n_unique() > 1
    with pytest.raises(ParamError, match=r"sweep combination \{'leverage': 0\} is invalid"):
        sweep(candles, signals, {"leverage": [1, 0]})


def test_walk_forward_folds_are_consecutive_out_of_sample_windows(
    data: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    candles, signals = data
    p = BacktestParams(take_profit_r=2.0)
    wf = walk_forward(candles, signals, p, folds=3)
    assert wf["fold"].to_list() == [1, 2, 3]
    assert wf["start"][0] == DAY0 and wf["end"][2] == DAY0 + dt.timedelta(days=DAYS)
    assert wf["start"][1:].to_list() == wf["end"][:-1].to_list()
    m = prepare(candles, signals)
    fold2 = m.window(wf["start"][1], wf["end"][1])
    alone = result_from(fold2, p, simulate(fold2, p))
    assert wf["total_return_pct"][1] == pytest.approx(alone.metrics["total_return_pct"])
    assert wf["trades"][1] == alone.metrics["trades"]


def test_walk_forward_chooses_parameters_on_the_previous_fold(
    data: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    candles, signals = data
    grid = {"stop_loss_pct": [0.005, 0.01, 0.04]}
    wf = walk_forward(candles, signals, BacktestParams(), folds=3, grid=grid, select_by="sharpe")
    assert wf["in_sample_sharpe"][0] is None  # the first fold has no past
    assert json.loads(wf["params"][0]) == {"stop_loss_pct": 0.02}  # so it runs the base
    m = prepare(candles, signals)
    for i in (1, 2):
        prev = m.window(wf["start"][i - 1], wf["end"][i - 1])
        scores = {
            v: result_from(prev, q, simulate(prev, q)).metrics["sharpe"]
            for v in grid["stop_loss_pct"]
            for q in [BacktestParams(stop_loss_pct=v)]
        }
        best = max(scores, key=lambda v: scores[v])
        assert json.loads(wf["params"][i]) == {"stop_loss_pct": best}
        assert wf["in_sample_sharpe"][i] == pytest.approx(scores[best])
    with pytest.raises(ParamError, match="select_by='luck'"):
        walk_forward(candles, signals, folds=2, grid=grid, select_by="luck")

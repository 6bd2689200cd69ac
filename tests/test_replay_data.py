"""`--data FILE`: the replay exchange serves real candles from CSV or Parquet files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import requests

from pipeline.replay import ReplayExchange, synthetic
from pipeline.replay.clock import to_ms

MIN = 60_000
JAN1 = to_ms("2024-01-01T00:00:00Z")


def candles_file(path: Path, *, gap: tuple[int, int] | None = None, **extra: Any) -> np.ndarray:
    """Two days of seeded candles written like the shared data files (ts, o, h, l, c, v)."""
    a = synthetic.candles("ETHUSDT", JAN1, JAN1 + 2 * 1440 * MIN)
    if gap:
        a = np.concatenate([a[: gap[0]], a[gap[1] :]])
    df = pl.DataFrame(
        {"ts": a[:, 0].astype(np.int64), "open": a[:, 1], "high": a[:, 2], "low": a[:, 3],
         "close": a[:, 4], "volume": a[:, 5], **extra}
    )  # fmt: skip
    if path.suffix == ".csv":
        df.rename({"ts": "open_time"}).write_csv(path)
    else:
        df.write_parquet(path)
    return a


def klines(ex: Any, **params: Any) -> dict[str, Any]:
    return requests.get(f"{ex.rest_url}/v5/market/kline", params=params, timeout=5).json()


def test_parquet_file_is_served_for_its_symbol_only(tmp_path, replay_factory):
    path = tmp_path / "bybit_linear_ETHUSDT_1m_2024-01-01_2024-01-02.parquet"
    a = candles_file(path)
    ex = replay_factory(data=path, clock_start="2024-01-05T00:00:00Z")
    body = klines(ex, symbol="ETHUSDT", interval="1", start=JAN1, end=JAN1 + 999 * MIN, limit=1000)
    got = np.array(body["result"]["list"], dtype=float)[::-1]
    np.testing.assert_array_equal(got[:, :6], a[:1000, :6])
    est = np.round(a[:1000, 5] * a[:1000, 1:5].mean(axis=1), 4)  # turnover estimated
    np.testing.assert_allclose(got[:, 6], est, rtol=1e-12)
    assert klines(ex, symbol="BTCUSDT", interval="1")["retMsg"] == "Not supported symbols"
    latest = klines(ex, symbol="ETHUSDT", interval="1", limit=1)["result"]["list"][0]
    assert int(latest[0]) == int(a[-1, 0])  # nothing after the file's end


def test_limit_counts_candles_across_gaps_in_the_file(tmp_path, replay_factory):
    path = tmp_path / "ETHUSDT.parquet"
    a = candles_file(path, gap=(500, 800))  # 300 missing minutes, like a maintenance window
    ex = replay_factory(data=path, clock_start="2024-01-05T00:00:00Z")
    rows = klines(ex, symbol="ETHUSDT", interval="1", start=JAN1, limit=1000)["result"]["list"]
    assert len(rows) == 1000
    np.testing.assert_array_equal(np.array(rows, dtype=float)[::-1, :6], a[:1000, :6])
    hours = klines(ex, symbol="ETHUSDT", interval="60", start=JAN1, end=JAN1 + 23 * 3_600_000)
    assert len(hours["result"]["list"]) == 24 - 4  # hours 9-12 are entirely inside the gap


def test_the_clock_inside_the_file_gives_a_forming_candle(tmp_path, replay_factory):
    path = tmp_path / "ETHUSDT.parquet"
    a = candles_file(path)
    ex = replay_factory(data=path, clock_start="2024-01-01T10:00:30Z")
    row = klines(ex, symbol="ETHUSDT", interval="1", limit=2)["result"]["list"]
    assert int(row[0][0]) == JAN1 + 600 * MIN
    full = a[600]
    assert float(row[0][5]) < full[5] and float(row[1][4]) == a[599, 4]


def test_csv_with_symbol_column_and_turnover(tmp_path, replay_factory):
    path = tmp_path / "candles.csv"
    a = synthetic.candles("SOLUSDT", JAN1, JAN1 + 100 * MIN)
    pl.DataFrame(
        {"open_time": a[:, 0].astype(np.int64), "symbol": ["SOLUSDT"] * 100, "open": a[:, 1],
         "high": a[:, 2], "low": a[:, 3], "close": a[:, 4], "volume": a[:, 5],
         "turnover": a[:, 6]}
    ).write_csv(path)  # fmt: skip
    ex = replay_factory(data=path, clock_start="2024-02-01T00:00:00Z")
    rows = klines(ex, symbol="SOLUSDT", interval="1", limit=1000)["result"]["list"]
    np.testing.assert_array_equal(np.array(rows, dtype=float)[::-1], a)
    assert klines(ex, symbol="ETHUSDT", interval="1")["retCode"] == 10001


def test_file_without_a_symbol_is_refused_unless_given_one(tmp_path, replay_factory):
    path = tmp_path / "candles.parquet"
    candles_file(path)
    with pytest.raises(ValueError, match="names no symbol"):
        ReplayExchange(data=path)
    ex = replay_factory(data=path, symbols=["BTCUSDT"], clock_start="2024-02-01T00:00:00Z")
    assert klines(ex, symbol="BTCUSDT", interval="D")["result"]["list"]
    refused = klines(ex, symbol="XYZUSDT", interval="D")
    assert (refused["retCode"], refused["retMsg"]) == (10001, "Not supported symbols")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("dup", "appears twice"),
        ("offgrid", "not on the minute grid"),
        ("nocol", "lacks"),
    ],
)
def test_bad_files_are_rejected_with_a_reason(tmp_path, change, message):
    path = tmp_path / "BTCUSDT.parquet"
    a = synthetic.candles("BTCUSDT", JAN1, JAN1 + 10 * MIN)
    ts = a[:, 0].astype(np.int64)
    if change == "dup":
        ts[3] = ts[2]
    if change == "offgrid":
        ts[3] += 1
    cols = {"ts": ts, "open": a[:, 1], "high": a[:, 2], "low": a[:, 3], "close": a[:, 4]}
    if change != "nocol":
        cols["volume"] = a[:, 5]
    pl.DataFrame(cols).write_parquet(path)
    with pytest.raises(ValueError, match=message):
        ReplayExchange(data=path)
    with pytest.raises(ValueError, match="does not exist"):
        ReplayExchange(data=tmp_path / "missing.parquet")

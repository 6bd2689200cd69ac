"""A warehouse written by today's schema (migrations 0001-0005) upgrades in place to carry the
exchange: every row kept as Bybit's, the new keys enforced, the old table name still readable,
the read replica upgraded with it, and a second upgrade a no-op."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tests.conftest import DAY0
from tests.test_warehouse import klines
from warehouse import Warehouse, connect
from warehouse.migrations import current_version, latest_version, migrate

TABLES = ("klines_1m", "kline_gaps", "candles", "indicators", "signals", "backtest_runs")
KEYS = {
    "klines_1m": "symbol, open_time",
    "kline_gaps": "symbol, open_time",
    "candles": "symbol, timeframe, open_time",
    "indicators": "symbol, timeframe, open_time",
    "signals": "symbol, personality, timeframe, close_time",
    "backtest_runs": "run_id",
}


def old_warehouse(path: Path) -> dict[str, pl.DataFrame]:
    """A version-5 warehouse with rows in every market table and a replica; returns its rows."""
    day = klines(DAY0).head(120).drop("exchange")
    t0 = DAY0 + dt.timedelta(minutes=200)
    with connect(path) as con:
        assert migrate(con, upto=5) == [1, 2, 3, 4, 5]
        con.register("day", day.to_arrow())
        con.execute("INSERT INTO bybit_klines_1m BY NAME SELECT * FROM day")
        con.execute(
            "INSERT INTO kline_gaps VALUES ('BTCUSDT', ?, ?), ('ETHUSDT', ?, ?)", [t0, t0, t0, t0]
        )
        con.execute(
            "INSERT INTO candles BY NAME SELECT symbol, '1m' AS timeframe, open_time,"
            " close_time, open, high, low, close, volume, turnover, 1 AS n_1m,"
            " true AS complete FROM day"
        )
        con.execute('ALTER TABLE indicators ADD COLUMN "ema_7" DOUBLE')  # added by a writer
        con.execute(
            "INSERT INTO indicators (symbol, timeframe, open_time, close_time, rsi_14, ema_7)"
            " SELECT symbol, '1m', open_time, close_time, close / 1000, close FROM day"
        )
        con.execute(
            "INSERT INTO signals VALUES ('BTCUSDT', 'swing', '1h', ?, ?, 'BUY', 0.5, 100.0,"
            " ['a', 'b'], '{\"x\": 1}', 'ok')",
            [t0, t0 - dt.timedelta(hours=1)],
        )
        con.execute(
            'INSERT INTO backtest_runs (run_id, personality, symbol, timeframe, start, "end",'
            " params, metrics) VALUES ('r1', 'swing', 'BTCUSDT', '1h', ?, ?, '{}', '{}')",
            [DAY0, t0],
        )
        con.execute(
            "INSERT INTO replica_log (seq, tbl, predicate, params) VALUES"
            " (1, 'bybit_klines_1m', 'symbol = ? AND open_time >= ?', ?)",
            [json.dumps(["BTCUSDT", {"ts": DAY0.isoformat()}])],
        )
        old_names = {"klines_1m": "bybit_klines_1m"}
        rows = {
            t: con.sql(f"SELECT * FROM {old_names.get(t, t)} ORDER BY {KEYS[t]}").pl()
            for t in TABLES
        }
        Warehouse(path)._copy_replica(con)  # people's file, at version 5 too
    return rows


def test_upgrade_keeps_every_row_as_bybit_and_enforces_the_new_keys(tmp_path: Path):
    path = tmp_path / "w.duckdb"
    before = old_warehouse(path)
    wh = Warehouse(path)
    with wh.writer() as con:  # the first writer upgrades
        assert current_version(con) == latest_version() >= 6
        for t in TABLES:
            after = con.sql(f"SELECT * FROM {t} ORDER BY {KEYS[t]}").pl()
            assert after.columns[0] == "exchange" or t == "backtest_runs", t
            assert after["exchange"].unique().to_list() == ["bybit"], t
            assert after.drop("exchange").equals(before[t].select(after.drop("exchange").columns))
            assert set(before[t].columns) <= set(after.columns), t
        # the old name reads as before, and only reads
        view = con.sql("SELECT * FROM bybit_klines_1m ORDER BY symbol, open_time").pl()
        assert view.equals(before["klines_1m"])
        with pytest.raises(duckdb.Error):
            con.execute("DELETE FROM bybit_klines_1m")
        # keys: the same (symbol, minute) twice on one venue is refused, on two venues fine
        for table, cols in {
            "klines_1m": "exchange, symbol, open_time, close_time, open, high, low, close,"
            " volume, source, ingested_at",
            "indicators": "exchange, symbol, timeframe, open_time, close_time",
            "candles": "exchange, symbol, timeframe, open_time, close_time, open, high, low,"
            " close, volume, n_1m, complete",
        }.items():
            with pytest.raises(duckdb.ConstraintException):
                con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {table} LIMIT 1")
            elsewhere = cols.replace("exchange", "'x' AS exchange", 1)
            con.execute(f"INSERT INTO {table} ({cols}) SELECT {elsewhere} FROM {table} LIMIT 1")
        with pytest.raises(duckdb.ConstraintException):
            con.execute("INSERT INTO indicators (exchange, symbol) VALUES (NULL, 'A')")
        log = con.execute("SELECT DISTINCT tbl FROM replica_log").fetchall()
        assert log == [("klines_1m",)]
        assert migrate(con) == []  # a second upgrade is a no-op
    # the replica people query was upgraded with it, and keeps following writes
    with wh.reader() as con:
        got = con.sql("SELECT * EXCLUDE exchange FROM klines_1m ORDER BY symbol, open_time").pl()
        assert got.equals(before["klines_1m"])
        assert con.sql("SELECT count(*) FROM bybit_klines_1m").fetchall() == [(120,)]
    day2 = klines(DAY0 + dt.timedelta(days=1)).head(30)
    wh.replace(
        "klines_1m",
        day2,
        "exchange = ? AND symbol = ? AND open_time >= ?",
        ["bybit", "BTCUSDT", DAY0 + dt.timedelta(days=1)],
    )
    with wh.reader() as con:
        assert con.sql("SELECT count(*) FROM bybit_klines_1m").fetchall() == [(150,)]

"""The warehouse: migrations, idempotent partition writes, lock handling, the read replica."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import polars as pl
import pytest

from pipeline.replay import synthetic
from tests.conftest import DAY0
from warehouse import Replacement, Warehouse, WarehouseBusy, connect
from warehouse.migrations import available, latest_version, migrate

DAY = dt.timedelta(days=1)
WHERE = "symbol = ? AND open_time >= ? AND open_time < ?"


def klines(day: dt.datetime, days: int = 1, symbol: str = "BTCUSDT") -> pl.DataFrame:
    ms = int(day.timestamp() * 1000)
    f = synthetic.frame(symbol, ms, ms + days * 86_400_000)
    now = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    return f.with_columns(
        exchange=pl.lit("bybit"),
        source=pl.lit("test"),
        ingested_at=pl.lit(now, dtype=pl.Datetime("us", "UTC")),
    )


def count(path: Path, sql: str = "SELECT count(*) FROM klines_1m") -> int:
    with connect(path, read_only=True, wait_s=5) as con:
        return con.execute(sql).fetchall()[0][0]


def holder(path: Path, seconds: float, read_only: bool = False) -> subprocess.Popen:
    """Another process that opens `path` and keeps it for `seconds`."""
    code = textwrap.dedent(f"""
        import duckdb, time, sys
        con = duckdb.connect({str(path)!r}, read_only={read_only})
        print("open", flush=True)
        time.sleep({seconds})
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "open"
    return p


def test_migrations_create_schema_once(tmp_path: Path):
    path = tmp_path / "w.duckdb"
    with connect(path) as con:
        applied = migrate(con)
        assert applied == [v for v, _, _ in available()] and applied[-1] == latest_version()
        assert migrate(con) == []  # running again is a no-op
        tables = {
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
    for t in [
        "klines_1m",
        "candles",
        "indicators",
        "signals",
        "backtest_runs",
        "backtest_trades",
        "kline_gaps",
        "paper_trades",
        "paper_equity",
        "paper_ingest",
        "schema_migrations",
    ]:
        assert t in tables


def test_partition_replace_is_idempotent_and_exact(tmp_path: Path):
    wh = Warehouse(tmp_path / "w.duckdb")
    week = klines(DAY0, 7)
    wh.replace("klines_1m", week, WHERE, ["BTCUSDT", DAY0, DAY0 + 7 * DAY])
    first = wh.query("SELECT * FROM klines_1m ORDER BY open_time")
    assert first.height == 7 * 1440
    # Re-writing one day changes nothing else and duplicates nothing.
    day3 = week.filter(pl.col("open_time").dt.date() == (DAY0 + 2 * DAY).date())
    for _ in range(2):
        wh.replace("klines_1m", day3, WHERE, ["BTCUSDT", DAY0 + 2 * DAY, DAY0 + 3 * DAY])
    again = wh.query("SELECT * FROM klines_1m ORDER BY open_time")
    assert again.equals(first)
    # Replacing a day with fewer rows removes exactly the rows not in the new content.
    wh.replace("klines_1m", day3.head(100), WHERE, ["BTCUSDT", DAY0 + 2 * DAY, DAY0 + 3 * DAY])
    assert count(wh.path) == 6 * 1440 + 100


def test_a_session_reads_and_writes_on_one_connection_and_then_lets_go(tmp_path: Path):
    wh = Warehouse(tmp_path / "w.duckdb")
    wh.replace("klines_1m", klines(DAY0), WHERE, ["BTCUSDT", DAY0, DAY0 + DAY])
    with wh.session() as s:
        with s.writer() as a, s.writer() as b:
            assert a is b is s.held  # every read and write of the block: one open file
        s.replace("klines_1m", klines(DAY0 + DAY), WHERE, ["BTCUSDT", DAY0 + DAY, DAY0 + 2 * DAY])
        assert s.query("SELECT count(*) AS n FROM klines_1m")["n"][0] == 2 * 1440
        with s.session() as inner:
            assert inner is s
        assert wh.held is None  # the warehouse itself never holds a connection
    # committed, replicated, and the file released: another process opens it at once
    assert count(wh.path) == count(wh.replica_path) == 2 * 1440
    p = holder(wh.path, 0.1)
    assert p.wait(timeout=60) == 0


def test_failed_write_leaves_the_old_content(tmp_path: Path):
    wh = Warehouse(tmp_path / "w.duckdb")
    day = klines(DAY0)
    wh.replace("klines_1m", day, WHERE, ["BTCUSDT", DAY0, DAY0 + DAY])
    dup = pl.concat([day, day.head(1)])  # violates the primary key mid-insert
    with pytest.raises(duckdb.ConstraintException):
        wh.replace_many(
            [
                Replacement("klines_1m", dup, WHERE, ("BTCUSDT", DAY0, DAY0 + DAY)),
            ]
        )
    assert count(wh.path) == 1440


def test_a_replacement_made_of_runs_writes_each_as_it_comes(tmp_path: Path):
    """An iterator frame: the range deleted once, each run inserted as it is made (with
    commit_runs each committed on its own, so another connection sees it before the next run),
    DuckDB's memory limit set for the write and reset after, the replica synced at the end."""
    wh = Warehouse(tmp_path / "w.duckdb")
    days = klines(DAY0, 3)
    span = ("BTCUSDT", DAY0, DAY0 + 3 * DAY)
    wh.replace("klines_1m", days, WHERE, span)
    whole = wh.query("SELECT * FROM klines_1m ORDER BY open_time")

    def runs(s: Warehouse, seen: list[int]):
        for d in range(3):  # rows another connection sees as each run is made
            seen.append(s.held.cursor().sql("SELECT count(*) FROM klines_1m").fetchall()[0][0])
            yield days.filter(pl.col("open_time").dt.date() == (DAY0 + d * DAY).date())

    for commit_runs, expected in ((True, [3 * 1440, 1440, 2 * 1440]), (False, [3 * 1440] * 3)):
        seen: list[int] = []
        with wh.session() as s:
            limit = s.held.sql("SELECT current_setting('memory_limit')").fetchall()
            n = s.replace_many(
                [Replacement("klines_1m", runs(s, seen), WHERE, span)],
                commit_runs=commit_runs,
                memory_limit="500MB",
            )
            assert s.held.sql("SELECT current_setting('memory_limit')").fetchall() == limit
        assert n == 3 * 1440 and seen == expected
        assert wh.query("SELECT * FROM klines_1m ORDER BY open_time").equals(whole)
        assert count(wh.replica_path) == 3 * 1440


def test_lock_conflict_waits_then_names_the_holder(tmp_path: Path):
    wh = Warehouse(tmp_path / "w.duckdb")
    wh.replace("klines_1m", klines(DAY0), WHERE, ["BTCUSDT", DAY0, DAY0 + DAY])
    p = holder(wh.path, 30)
    try:
        with pytest.raises(WarehouseBusy) as err, connect(wh.path, wait_s=0.5):
            pass
        assert f"PID {p.pid}" in str(err.value) and "signalbox sql" in str(err.value)
    finally:
        p.kill()
        p.wait()
    # A short hold is simply waited out.
    p = holder(wh.path, 0.5)
    with connect(wh.path, wait_s=10) as con:
        assert con.execute("SELECT count(*) FROM klines_1m").fetchall()[0][0] == 1440
    p.wait()


def test_replica_follows_every_write_and_never_blocks_it(tmp_path: Path):
    wh = Warehouse(tmp_path / "w.duckdb")
    wh.replace("klines_1m", klines(DAY0), WHERE, ["BTCUSDT", DAY0, DAY0 + DAY])
    assert count(wh.replica_path) == 1440
    # Someone keeps the replica open read-write (as the DuckDB CLI does) while we write.
    p = holder(wh.replica_path, 60)
    try:
        for i in range(1, 4):
            d = DAY0 + i * DAY
            wh.replace("klines_1m", klines(d), WHERE, ["BTCUSDT", d, d + DAY])
            # The path people open shows the new write at once, though the old file is held.
            assert count(wh.replica_path) == (i + 1) * 1440
    finally:
        p.kill()
        p.wait()
    # Incremental path again once nobody holds it: replica equals the live file.
    d = DAY0 + 4 * DAY
    wh.replace("klines_1m", klines(d), WHERE, ["BTCUSDT", d, d + DAY])
    with connect(wh.replica_path, read_only=True) as con:
        rep = con.sql("SELECT * FROM klines_1m ORDER BY open_time").pl()
    assert rep.equals(wh.query("SELECT * FROM klines_1m ORDER BY open_time"))


def test_replica_catches_up_on_writes_it_missed(tmp_path: Path):
    """A writer that died between commit and replica sync leaves the replica one write
    behind; the next write brings it fully up to date."""
    live = Warehouse(tmp_path / "w.duckdb")
    live.replace("klines_1m", klines(DAY0), WHERE, ["BTCUSDT", DAY0, DAY0 + DAY])
    unsynced = Warehouse(live.path, replica_sync=False)
    d1, d2 = DAY0 + DAY, DAY0 + 2 * DAY
    unsynced.replace("klines_1m", klines(d1), WHERE, ["BTCUSDT", d1, d1 + DAY])
    assert count(live.replica_path) == 1440  # one write behind
    live.replace("klines_1m", klines(d2), WHERE, ["BTCUSDT", d2, d2 + DAY])
    assert count(live.replica_path) == 3 * 1440


def test_replica_is_read_only_for_sql_and_survives_schema_changes(tmp_path: Path):
    wh = Warehouse(tmp_path / "w.duckdb")
    wh.replace("klines_1m", klines(DAY0), WHERE, ["BTCUSDT", DAY0, DAY0 + DAY])
    assert wh.ensure_columns("indicators", {"ema_7": "DOUBLE"}) == ["ema_7"]
    assert wh.ensure_columns("indicators", {"ema_7": "DOUBLE"}) == []
    with wh.reader() as con:
        cols = [r[0] for r in con.execute("DESCRIBE indicators").fetchall()]
        assert "ema_7" in cols
        with pytest.raises(duckdb.Error):
            con.execute("DELETE FROM klines_1m")
    assert os.path.exists(wh.replica_path)


def test_sigkill_mid_write_leaves_old_or_new_never_half(tmp_path: Path):
    """A writer killed at a random moment inside its transaction: the partition afterwards is
    exactly the old content or exactly the new one, and the next write completes it."""
    import random
    import time

    wh = Warehouse(tmp_path / "w.duckdb")
    month = klines(DAY0, 30)
    old = month.with_columns(close=pl.col("close") + 1.0)
    span = ["BTCUSDT", DAY0, DAY0 + 30 * DAY]
    wh.replace("klines_1m", old, WHERE, span)
    script = tmp_path / "writer.py"
    script.write_text(
        textwrap.dedent(f"""
        import datetime as dt, polars as pl
        from pathlib import Path
        from tests.test_warehouse import klines, WHERE, DAY0, DAY
        from warehouse import Warehouse
        wh = Warehouse(Path({str(wh.path)!r}))
        new = klines(DAY0, 30)
        print("ready", flush=True)
        while True:
            wh.replace("klines_1m", new, WHERE, ["BTCUSDT", DAY0, DAY0 + 30 * DAY])
    """)
    )
    rng = random.Random(7)
    for _ in range(5):
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=root)
        p = subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env
        )
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 1.5))
        p.kill()
        p.wait()
        got = wh.query("SELECT * FROM klines_1m ORDER BY open_time")
        closes = got["close"]
        assert got.height == 30 * 1440
        is_old = closes.equals(old["close"])
        is_new = closes.equals(month["close"])
        assert is_old or is_new, "a half-written partition"
    wh.replace("klines_1m", month, WHERE, span)  # the next run completes it
    assert wh.query("SELECT close FROM klines_1m ORDER BY open_time")["close"].equals(
        month["close"]
    )


def test_writes_copies_and_syncs_in_a_path_with_quotes_and_a_space(tmp_path: Path):
    """Every write path (first write and its replica copy, an incremental sync, a schema
    change and its copy, a sealed read) where the directory is `bob's "home" x`."""
    wh = Warehouse(tmp_path / 'bob\'s "home" x' / "warehouse" / "w.duckdb")
    wh.replace("klines_1m", klines(DAY0), WHERE, ["BTCUSDT", DAY0, DAY0 + DAY])
    assert count(wh.replica_path) == 1440
    d1 = DAY0 + DAY
    Warehouse(wh.path, replica_sync=False).replace(
        "klines_1m", klines(d1), WHERE, ["BTCUSDT", d1, d1 + DAY]
    )
    with wh.writer() as con:
        assert wh.sync_replica(con) == "incremental"
    assert count(wh.replica_path) == 2 * 1440
    assert wh.ensure_columns("indicators", {"ema_7": "DOUBLE"}) == ["ema_7"]
    with wh.reader() as con:
        assert con.execute("SELECT count(*) FROM klines_1m").fetchall() == [(2 * 1440,)]
        assert "ema_7" in [r[0] for r in con.execute("DESCRIBE indicators").fetchall()]
    assert sorted(p.name for p in wh.path.parent.iterdir()) == ["w.duckdb", "w.replica.duckdb"]


@pytest.mark.parametrize(
    "table, where, says",
    [
        ("klines_1m", "symbol = 'BTCUSDT' AND open_time >= ?", "pass values as parameters"),
        ("klines_1m", "open_time >= ? AND 1 = 1", "pass values as parameters"),
        ("klines_1m", "run_id = ?; DROP TABLE candles", "pass values as parameters"),
        ("klines_1m", "run_id = ? -- comment", "pass values as parameters"),
        ("klines_1m", " ", "empty predicate"),
        ("candles; DROP TABLE signals", "run_id = ?", "not a plain SQL name"),
        ('candles"', "run_id = ?", "not a plain SQL name"),
    ],
)
def test_replacements_take_names_and_placeholders_only(table: str, where: str, says: str):
    with pytest.raises(ValueError, match=says):
        Replacement(table, pl.DataFrame(), where, ("x",))


def test_added_columns_take_plain_names_and_known_types(tmp_path: Path):
    wh = Warehouse(tmp_path / "w.duckdb")
    with pytest.raises(ValueError, match="not a plain SQL name"):
        wh.ensure_columns("indicators", {'x" DOUBLE); DROP TABLE candles; --': "DOUBLE"})
    with pytest.raises(ValueError, match="column type"):
        wh.ensure_columns("indicators", {"ema_7": "DOUBLE; DROP TABLE candles"})
    assert wh.ensure_columns("indicators", {"ema_7": "double"}) == ["ema_7"]
    assert count(wh.path, "SELECT count(*) FROM information_schema.tables") >= 7


def test_a_reader_never_creates_a_warehouse(tmp_path: Path):
    from warehouse import NoWarehouse

    wh = Warehouse(tmp_path / "warehouse" / "w.duckdb")
    with pytest.raises(NoWarehouse), wh.reader():
        pass
    assert not (tmp_path / "warehouse").exists()


def test_a_write_bigger_than_the_file_is_synced_by_copying_and_a_small_one_in_place(
    tmp_path: Path,
):
    """Replaying a backfill's millions of rows into the replica costs as much as the write;
    copying the file costs its size: the replica is synced whichever way is cheaper
    (store.COPY_BYTES_PER_ROW), and holds the same rows either way."""
    from warehouse import store

    wh = Warehouse(tmp_path / "w.duckdb")
    wh.replace("klines_1m", klines(DAY0, 2), WHERE, ["BTCUSDT", DAY0, DAY0 + 2 * DAY])
    inode = wh.replica_path.stat().st_ino
    with wh.writer() as con:
        size = wh.path.stat().st_size
        small = size // store.COPY_BYTES_PER_ROW  # rows: replaying them is the cheaper way
        assert wh.sync_replica(con, rows=small) == "current"  # in place: nothing missed
        assert wh.replica_path.stat().st_ino == inode
        assert wh.sync_replica(con, rows=small + 1) == "copy"
    assert wh.replica_path.stat().st_ino != inode
    d2 = DAY0 + 2 * DAY
    wh.replace("klines_1m", klines(d2).head(10), WHERE, ["BTCUSDT", d2, d2 + DAY])  # in place
    assert count(wh.replica_path) == 2 * 1440 + 10

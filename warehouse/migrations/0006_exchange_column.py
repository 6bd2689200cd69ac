"""Two venues side by side: every market table gains `exchange` as the first key column
(existing rows were all Bybit's).

DuckDB (2.0) cannot change a primary key in place nor add a CHECK constraint to a table, so
each table is recreated from its own stored definition (`duckdb_tables().sql`, which holds
every column, NOT NULL, CHECK and writer-added column) with the key column put first, copied,
dropped and renamed. The runner wraps this step in ONE transaction, so a failure leaves the
old schema untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

# (old name, new name) of the market tables
_TABLES = (
    ("bybit_klines_1m", "klines_1m"),
    ("kline_gaps", "kline_gaps"),
    ("candles", "candles"),
    ("indicators", "indicators"),
    ("signals", "signals"),
)


def upgrade(con: duckdb.DuckDBPyConnection) -> None:
    for old, new in _TABLES:
        _with_exchange_key(con, old, new)
    # Read-only compatibility for users' SQL written against the old 1m table.
    con.execute(
        "CREATE VIEW bybit_klines_1m AS"
        " SELECT * EXCLUDE (exchange) FROM klines_1m WHERE exchange = 'bybit'"
    )
    con.execute("ALTER TABLE backtest_runs ADD COLUMN exchange VARCHAR DEFAULT 'bybit'")
    con.execute("UPDATE backtest_runs SET exchange = 'bybit'")
    con.execute("ALTER TABLE backtest_runs ALTER COLUMN exchange SET NOT NULL")
    # The replica replays the log by table name: the old 1m table's entries name the new one.
    con.execute("UPDATE replica_log SET tbl = 'klines_1m' WHERE tbl = 'bybit_klines_1m'")


def _with_exchange_key(con: duckdb.DuckDBPyConnection, old: str, new: str) -> None:
    """Recreate `old` as `new` with `exchange VARCHAR NOT NULL` first, in the primary key too."""
    (create,) = con.execute(
        "SELECT sql FROM duckdb_tables() WHERE table_name = ? AND schema_name = 'main'", [old]
    ).fetchall()[0]
    head, key = f"CREATE TABLE {old}(", "PRIMARY KEY("
    if not create.startswith(head) or create.count(key) != 1:
        raise RuntimeError(f"migration 0006: unexpected definition of table {old}: {create}")
    body = create.removeprefix(head).replace(key, key + "exchange, ")
    con.execute(f'CREATE TABLE "{new}_new"(exchange VARCHAR NOT NULL, {body}')
    con.execute(f'INSERT INTO "{new}_new" BY NAME SELECT \'bybit\' AS exchange, * FROM "{old}"')
    con.execute(f'DROP TABLE "{old}"')
    con.execute(f'ALTER TABLE "{new}_new" RENAME TO "{new}"')

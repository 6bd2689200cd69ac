"""The warehouse: one DuckDB file per data source, idempotent partition writes, a read replica.

Writers hold the file only for one transaction. Every replacement is logged in `replica_log`
so the replica (a separate file people and tools open freely) can replay what it missed: it is
synced right after each write, incrementally when nobody holds it and by copying the whole
file to a new inode and renaming it into place when somebody does. A reader who keeps the old
replica open keeps a consistent snapshot; the pipeline never waits for them.

Readers get a sealed connection (see `warehouse.connection`): whatever SQL a person types, it
can neither write the replica nor reach the live file. A reader never creates a warehouse.
No SQL here is built from values: paths and values are parameters, names pass `identifiers`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warehouse.connection import connect
from warehouse.identifiers import column_type, ident, predicate
from warehouse.migrations import current_version, migrate

if TYPE_CHECKING:
    import duckdb
    import polars as pl
    import pyarrow as pa

_MIGRATED: set[Path] = set()
# Above this many missed writes, copying the file beats replaying them one by one.
MAX_INCREMENTAL = 64
# Replaying a write into the replica costs about what the write did (a DELETE, then an INSERT
# through the primary key: ~150k rows/s measured in `python -m bench backfill_scale`), copying
# the file costs its size (~150 MB/s there): a write of more rows than the file's bytes / this
# is synced by copying (a backfill's millions of rows), anything smaller incrementally.
COPY_BYTES_PER_ROW = 1000


def _jsonable(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return {"ts": v.isoformat()}
    return v


def _from_json(v: Any) -> Any:
    if isinstance(v, dict) and "ts" in v:
        return dt.datetime.fromisoformat(v["ts"])
    return v


class NoWarehouse(FileNotFoundError):
    """A reader asked for a warehouse that no pipeline run has written yet."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no warehouse file {path}")
        self.path = path


@dataclass(frozen=True)
class Replacement:
    """Rows of `table` matching `where` (with `params`) are replaced by `frame`.

    `table` and `where` come from code: they are checked here (a plain name; a predicate of
    names, comparisons and `?` only), values go in `params`. `frame` may also be an iterator
    of frames (`runs`), inserted one after another as they are made, so a big replacement
    never has to be in memory whole.
    """

    table: str
    frame: Any  # pl.DataFrame | pa.Table | Iterator of them
    where: str
    params: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        ident(self.table, "table")
        predicate(self.where)


@dataclass(frozen=True)
class Warehouse:
    """A DuckDB warehouse file and its read replica."""

    path: Path
    replica_sync: bool = field(default=True, compare=False)
    held: Any = field(default=None, compare=False, repr=False)  # a session's connection

    @property
    def replica_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".replica.duckdb")

    # -- connections ---------------------------------------------------------------------
    @contextmanager
    def writer(self, wait_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection on the live file, migrated; closed on exit (a session's
        connection is the session's to close)."""
        if self.held is not None:
            yield self.held
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with connect(self.path, wait_s=wait_s) as con:
            if self.path not in _MIGRATED:
                upgraded = migrate(con)
                _MIGRATED.add(self.path)
                if upgraded and self.replica_sync and self.replica_path.exists():
                    self._copy_replica(con)  # people query the replica: upgrade it too
            yield con

    @contextmanager
    def session(self) -> Iterator[Warehouse]:
        """This warehouse on ONE connection for a block, e.g. a run step's reads and its write.

        Opening the file costs ~25 ms and a live run's steps read a dozen times, so a step
        opens it once; every replacement still commits on its own, and the file is released
        when the block ends (a writer never holds it past its step)."""
        if self.held is not None:
            yield self
            return
        with self.writer() as con:
            yield replace(self, held=con)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        """Run a read query on the live file (pipeline use; people read the replica)."""
        with self.writer() as con:
            return con.sql(sql, params=list(params) if params else None).pl()

    # -- writes --------------------------------------------------------------------------
    def replace(
        self,
        table: str,
        frame: pl.DataFrame | pa.Table,
        where: str,
        params: Sequence[Any] = (),
    ) -> int:
        """Atomically replace the rows matching `where` with `frame`; returns rows inserted."""
        return self.replace_many([Replacement(table, frame, where, tuple(params))])

    def replace_many(
        self,
        items: Sequence[Replacement],
        *,
        commit_runs: bool = False,
        memory_limit: str | None = None,
    ) -> int:
        """Replace several tables' ranges in ONE transaction; returns rows inserted.

        Set-based: each frame goes in from Arrow in one statement. Callers pass frames whose
        rows all match their `where`, so a later replacement of the same range removes them.

        `commit_runs` (a backfill): commit after each run of an iterator frame, so the write is
        atomic per run, not whole (a failed step leaves its range part-written until it is run
        again). DuckDB holds an open transaction's inserts and their key index in memory
        (~0.45 GB per 1.5M indicator rows, bench/bench_backfill_scale.py): committed runs let
        its buffer manager write them out. The replica is still synced once, at the end.
        `memory_limit` (e.g. '1GB'): DuckDB's, from the first insert to the end of the write
        (then reset), so its buffer cache gives way to the step's frames; the reads an
        iterator frame makes before its first run are not limited.
        """
        inserted = 0
        with self.writer() as con:
            con.execute("BEGIN TRANSACTION")
            limited = False
            try:
                for it in items:
                    table = ident(it.table, "table")
                    con.execute(f"DELETE FROM {table} WHERE {it.where}", list(it.params))
                    con.execute(  # what the replica replays: the range, re-read from the file
                        "INSERT INTO replica_log (seq, tbl, predicate, params) SELECT"
                        " coalesce(max(seq), 0) + 1, ?, ?, ? FROM replica_log",
                        [it.table, it.where, json.dumps([_jsonable(p) for p in it.params])],
                    )
                    for frame in runs(it.frame):
                        arrow = frame.to_arrow() if hasattr(frame, "to_arrow") else frame
                        if memory_limit and not limited:
                            con.execute("SET memory_limit = ?", [memory_limit])
                            limited = True
                        if arrow.num_rows:
                            con.register("_incoming", arrow)
                            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _incoming")
                            con.unregister("_incoming")
                        inserted += arrow.num_rows
                        del frame, arrow  # a run is freed before the next is made
                        if commit_runs:
                            con.execute("COMMIT")
                            con.execute("BEGIN TRANSACTION")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                if limited:
                    con.execute("RESET memory_limit")
            if self.replica_sync:
                self.sync_replica(con, rows=inserted)
        return inserted

    def ensure_columns(self, table: str, columns: dict[str, str]) -> list[str]:
        """Add missing columns (name -> SQL type); returns the ones added."""
        quoted = ident(table, "table")
        typed = {
            c: f"{ident(c, f'column of {table}')} {column_type(t)}" for c, t in columns.items()
        }
        with self.writer() as con:
            have = {
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ?"
                    " AND table_catalog = current_database()",
                    [table],
                ).fetchall()
            }
            added = [c for c in columns if c not in have]
            for c in added:
                con.execute(f"ALTER TABLE {quoted} ADD COLUMN {typed[c]}")
            if added and self.replica_sync:
                self._copy_replica(con)
            return added

    # -- the replica ---------------------------------------------------------------------
    def sync_replica(self, con: duckdb.DuckDBPyConnection, rows: int = 0) -> str:
        """Bring the replica up to the live file; returns 'incremental', 'copy' or 'current'.
        `rows`: how many the write just made inserted (a big write is copied, see
        COPY_BYTES_PER_ROW)."""
        try:
            if rows * COPY_BYTES_PER_ROW > self.path.stat().st_size:
                raise _NeedsCopy(f"{rows} rows written: copying the file is cheaper")
            return self._sync_incremental(con)
        except Exception:  # replica locked, missing, stale schema or damaged: copy instead
            self._copy_replica(con)
            return "copy"

    def _sync_incremental(self, con: duckdb.DuckDBPyConnection) -> str:
        import duckdb

        if not self.replica_path.exists():
            raise _NeedsCopy("no replica yet")
        con.execute("ATTACH ? AS rep", [str(self.replica_path)])
        try:
            try:
                rep_seq = con.execute("SELECT last_seq FROM rep.replica_state").fetchall()[0]
                rep_ver = con.execute("SELECT max(version) FROM rep.schema_migrations").fetchall()[
                    0
                ]
            except duckdb.Error as err:
                raise _NeedsCopy(str(err)) from None
            if not rep_seq or not rep_ver or rep_ver[0] != current_version(con):
                raise _NeedsCopy("schema changed")
            pending = con.execute(
                "SELECT seq, tbl, predicate, params FROM replica_log WHERE seq > ? ORDER BY seq",
                [rep_seq[0]],
            ).fetchall()
            if not pending:
                return "current"
            if len(pending) > MAX_INCREMENTAL:
                raise _NeedsCopy("too far behind")
            con.execute("BEGIN TRANSACTION")
            try:
                for _seq, tbl, where, raw in pending:
                    # The log lives in the file: check what it says before it becomes SQL.
                    table, where = ident(tbl, "replica_log table"), predicate(where)
                    params = [_from_json(p) for p in json.loads(raw)]
                    con.execute(f"DELETE FROM rep.{table} WHERE {where}", params)
                    con.execute(
                        f"INSERT INTO rep.{table} BY NAME SELECT * FROM {table} WHERE {where}",
                        params,
                    )
                con.execute("UPDATE rep.replica_state SET last_seq = ?", [pending[-1][0]])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("DELETE FROM replica_log WHERE seq < ?", [pending[-1][0] - 1000])
            return "incremental"
        finally:
            con.execute("DETACH rep")

    def _copy_replica(self, con: duckdb.DuckDBPyConnection) -> None:
        """Copy the live file (checkpointed) to a new inode and rename it over the replica."""
        con.execute("CHECKPOINT")
        last = con.execute("SELECT coalesce(max(seq), 0) FROM replica_log").fetchall()[0]
        tmp = self.replica_path.with_name(f".{self.replica_path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            shutil.copyfile(self.path, tmp)
            con.execute("ATTACH ? AS newrep", [str(tmp)])
            try:
                con.execute(
                    "CREATE OR REPLACE TABLE newrep.replica_state AS SELECT ?::BIGINT AS last_seq",
                    [last[0] if last else 0],
                )
            finally:
                con.execute("DETACH newrep")
            os.replace(tmp, self.replica_path)
        finally:
            tmp.unlink(missing_ok=True)
            Path(str(tmp) + ".wal").unlink(missing_ok=True)

    def ensure_replica(self) -> Path:
        """Make sure a replica exists (creating the warehouse if needed); returns its path."""
        if not self.replica_path.exists():
            with self.writer() as con:
                self._copy_replica(con)
        return self.replica_path

    @contextmanager
    def reader(self, wait_s: float = 10.0) -> Iterator[duckdb.DuckDBPyConnection]:
        """A sealed read-only connection on the replica (what people and tools should use).

        Raises NoWarehouse when the pipeline has not written this warehouse yet (a reader
        never creates one); a live file without a replica gets its replica copied first.
        """
        if not self.replica_path.exists():
            if not self.path.exists():
                raise NoWarehouse(self.path)
            self.ensure_replica()
        with connect(self.replica_path, read_only=True, wait_s=wait_s, sealed=True) as con:
            yield con


def runs(frame: Any) -> Iterator[Any]:
    """A replacement's frames: the one frame or table, or each of an iterator of them."""
    if hasattr(frame, "to_arrow") or hasattr(frame, "num_rows"):
        yield frame
    else:
        yield from frame


class _NeedsCopy(Exception):
    pass

"""`signalbox sql`: a person's query on the sealed read replica, errors as one line.

The connection comes from `Warehouse.reader()`, which DuckDB itself keeps read-only and away
from every other file (see `warehouse.connection.SEALED_CONFIG`), so no statement, however
written, can change the warehouse. This module only prints results and explains refusals.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from warehouse import NoWarehouse, Warehouse, WarehouseBusy

if TYPE_CHECKING:
    import duckdb

BAD_SQL = 2  # the query was wrong or asked for something `sql` refuses
NO_DATA = 1  # nothing to query (no warehouse yet, the replica busy or unreadable)
MAX_MESSAGE = 300  # characters of DuckDB's message shown (it can echo long values)
READ_ONLY = (
    "refused: `signalbox sql` is read-only (no writes, ATTACH, COPY/EXPORT to files, other "
    "files, extensions or settings)"
)
# What DuckDB says when the seal stops a statement.
_REFUSALS = (
    "read-only mode",
    "the configuration has been locked",
    "disabled by configuration",
    "is disabled through configuration",
    "Unique file handle conflict",
    "belongs to an attached database",
    "Persistent secrets are disabled",
    "Cannot upgrade",
)


def one_line(err: BaseException) -> str:
    """DuckDB's message (its "Did you mean" hint included) on one line, without the echo of
    the query and its caret (they point at a column of a multi-line text)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    kept = [ln for ln in lines if not ln.startswith("LINE ") and set(ln) != {"^"}]
    text = " ".join(kept) or type(err).__name__
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def refused(err: BaseException) -> bool:
    import duckdb

    return isinstance(err, duckdb.PermissionException) or any(r in str(err) for r in _REFUSALS)


def _write_csv(rel: duckdb.DuckDBPyRelation, out: TextIO, batch: int = 10_000) -> None:
    """CSV through Python (COPY TO /dev/stdout is a file write, which the seal refuses), with
    values in DuckDB's own text form, as its CSV writer prints them."""
    # Positional references (#1, #2, ...): no user-chosen column name enters the SQL.
    text = rel.project(", ".join(f"CAST(#{i} AS VARCHAR)" for i in range(1, len(rel.columns) + 1)))
    w = csv.writer(out, lineterminator="\n")
    w.writerow(rel.columns)
    w.writerows(text.iter_rows(batch_size=batch))


def run(wh: Warehouse, home: Path, query: str, *, as_csv: bool = False, max_rows: int = 40) -> int:
    """Run `query` on the replica of `wh`; returns the exit code."""
    import duckdb

    opened = False
    try:
        with wh.reader() as con:
            opened = True
            rel = con.sql(query)
            if rel is not None:
                if as_csv:
                    _write_csv(rel, sys.stdout)
                else:
                    rel.show(max_rows=max_rows, max_width=200)
        return 0
    except NoWarehouse:
        _say(
            f"no warehouse yet in {home} (expected {wh.path}); create it with "
            "`signalbox backfill --start YYYY-MM-DD --end YYYY-MM-DD` or `make run`"
        )
        return NO_DATA
    except WarehouseBusy as e:
        _say(str(e))
        return NO_DATA
    except duckdb.Error as e:
        if not opened:  # the replica itself is unreadable
            _say(
                f"cannot open the replica {wh.replica_path}: {one_line(e)}. The next pipeline "
                "write replaces it; or delete it and run `signalbox sql` again to copy it afresh"
            )
            return NO_DATA
        _say(f"{READ_ONLY}; DuckDB said: {one_line(e)}" if refused(e) else one_line(e))
        return BAD_SQL


def _say(message: str) -> None:
    print(f"signalbox sql: {message}", file=sys.stderr)

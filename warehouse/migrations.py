"""Versioned schema migrations: `migrations/NNNN_name.sql` (or `.py` with an
`upgrade(con)`, for a step SQL cannot say), each applied once, in order."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sql|py)$")


def available() -> list[tuple[int, str, Path]]:
    found = []
    for p in sorted(p for p in MIGRATIONS_DIR.iterdir() if p.suffix in (".sql", ".py")):
        m = _NAME_RE.match(p.name)
        if not m:
            raise RuntimeError(f"migration file {p} must be named NNNN_name.sql or NNNN_name.py")
        found.append((int(m.group(1)), m.group(2), p))
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version number in {MIGRATIONS_DIR}")
    return found


def latest_version() -> int:
    return max((v for v, _, _ in available()), default=0)


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"
        " AND table_catalog = current_database()"
    ).fetchall()[0]
    if not exists or not exists[0]:
        return 0
    row = con.execute("SELECT max(version) FROM schema_migrations").fetchall()[0]
    return int(row[0] or 0) if row else 0


def migrate(con: duckdb.DuckDBPyConnection, upto: int | None = None) -> list[int]:
    """Apply pending migrations, each in its own transaction; returns the versions applied.

    `upto` stops after that version (tests build yesterday's schema to test an upgrade)."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    done = current_version(con)
    applied = []
    for version, name, path in available():
        if version <= done or (upto is not None and version > upto):
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            _apply(con, path)
            con.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name]
            )
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied


def _apply(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    if path.suffix == ".sql":
        con.execute(path.read_text())
        return
    spec = importlib.util.spec_from_file_location(f"warehouse_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.upgrade(con)

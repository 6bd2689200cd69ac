"""`signalbox sql` is read-only in fact: every way out of the replica that DuckDB offers is
tried against a real warehouse, and afterwards the live file and the replica are byte for byte
what they were, nothing new exists anywhere, and errors are one line without a traceback.

The home's path holds a single quote, a double quote and a space, so the pipeline's own
writes, replica copies and incremental syncs run through it too (no SQL pastes a path)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.candles.build import with_exchange
from pipeline.candles.resample import resample
from pipeline.config import load_settings
from pipeline.exchanges.sources import warehouse_for
from pipeline.runtime.cli import main
from tests.conftest import DAY0
from tests.test_warehouse import WHERE, count, klines
from warehouse import Warehouse

DAY = dt.timedelta(days=1)
QUOTED = 'bob\'s "home" x'
CLI = [sys.executable, "-m", "pipeline.runtime.cli", "sql"]
CANDLES_WHERE = "close_time > ? AND close_time <= ?"


@dataclass(frozen=True)
class Home:
    root: Path  # holds the home and `outside`, a directory nothing may write into
    home: Path
    wh: Warehouse

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("SIGNALBOX_CONFIG", "SIGNALBOX_BYBIT_URL", "SIGNALBOX_BYBIT_WS")
        }
        # HOME too: a persistent secret or an extension would land in $HOME/.duckdb.
        return {**env, "SIGNALBOX_HOME": str(self.home), "SIGNALBOX_SOURCE": "replay",
                "HOME": str(self.outside)}  # fmt: skip

    def state(self) -> dict[str, str]:
        """Every file under root with a digest of its bytes."""
        return {
            str(p.relative_to(self.root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(self.root.rglob("*"))
            if p.is_file()
        }


def lit(path: Path | str) -> str:
    """`path` as a SQL string literal, the way an attacker would write it correctly."""
    return "'" + str(path).replace("'", "''") + "'"


def _fresh(root: Path) -> Home:
    """An empty home under `root` (and `outside` beside it), with the warehouse `sql` reads."""
    home = root / QUOTED
    home.mkdir()
    (root / "outside").mkdir()
    h = Home(root, home, Warehouse(Path("unset")))
    return Home(root, home, warehouse_for(load_settings(env=h.env())))


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> Home:
    """Two days of 1m candles and their candles written by the warehouse's own code: the first
    write copies the replica, the second syncs it incrementally."""
    h = _fresh(tmp_path_factory.mktemp("sqlro"))
    wh = h.wh
    for d in (DAY0, DAY0 + DAY):
        k = klines(d)
        wh.replace("klines_1m", k, WHERE, ["BTCUSDT", d, d + DAY])
        c = with_exchange(resample(k, ["1m", "5m", "1h"], as_of=d + DAY), "bybit")
        wh.replace("candles", c, CANDLES_WHERE, [d, d + DAY])
    assert wh.path.parent.parent == h.home and count(wh.replica_path) == 2 * 1440
    with wh.writer() as con:
        assert wh.sync_replica(con) == "current"
    return h


@pytest.fixture
def as_user(filled: Home, monkeypatch: pytest.MonkeyPatch) -> Home:
    for k in ("SIGNALBOX_CONFIG", "SIGNALBOX_BYBIT_URL", "SIGNALBOX_BYBIT_WS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in filled.env().items():
        monkeypatch.setenv(k, v)
    return filled


# Each is refused by DuckDB itself on the sealed replica connection. {live}, {replica} and
# {out} are quoted literals of the live file, the replica and a directory outside the home.
ESCAPES = {
    "attach_live_read_write": "ATTACH {live} AS w (READ_WRITE); DELETE FROM w.klines_1m",
    "attach_live_default_mode": "ATTACH {live} AS w; DROP TABLE w.candles",
    "attach_live_read_only": "ATTACH {live} AS w (READ_ONLY); SELECT count(*) FROM w.candles",
    "attach_replica_read_write": "ATTACH {replica} AS w (READ_WRITE); DELETE FROM w.candles",
    "attach_new_file": "ATTACH {out_db} AS n; CREATE TABLE n.t AS SELECT 1",
    "attach_memory_then_write": "ATTACH ':memory:' AS m; CREATE TABLE m.t AS SELECT 1",
    "copy_to_live": "COPY (SELECT 42) TO {live}",
    "copy_to_replica": "COPY klines_1m TO {replica} (FORMAT parquet)",
    "copy_to_outside": "COPY (SELECT 42) TO {out_csv}",
    "copy_to_stdout_device": "COPY (SELECT 42) TO '/dev/stdout'",
    "copy_into_table": "COPY klines_1m FROM '/etc/hostname'",
    "export_database": "EXPORT DATABASE {out_dir}",
    "import_database": "IMPORT DATABASE {out}",
    "install_extension": "INSTALL httpfs",
    "install_community_extension": "INSTALL h3 FROM community",
    "load_extension": "LOAD httpfs",
    "load_extension_file": "LOAD {out_ext}",
    "enable_external_access": "SET enable_external_access = true",
    "enable_external_access_globally": "SET GLOBAL enable_external_access = true",
    "enable_external_access_by_pragma": "PRAGMA enable_external_access = true",
    "reset_external_access": "RESET enable_external_access",
    "unlock_configuration": "SET lock_configuration = false",
    "reset_lock_configuration": "RESET lock_configuration",
    "allowed_directories": "SET allowed_directories = [{out}]",
    "allowed_paths": "SET allowed_paths = [{live}]",
    "temp_directory": "SET temp_directory = {out}",
    "allow_community_extensions": "SET allow_community_extensions = true",
    "allow_unsigned_extensions": "SET allow_unsigned_extensions = true",
    "autoinstall_extensions": "SET autoinstall_known_extensions = true",
    "autoload_extensions": "SET autoload_known_extensions = true",
    "profiling_output": "SET profiling_output = {out_csv}",
    "profiling_by_pragma": "PRAGMA enable_profiling",
    "log_to_file": "CALL enable_logging(storage = 'file', storage_path = {out})",
    "persistent_secret": "CREATE PERSISTENT SECRET s (TYPE http, BEARER_TOKEN 't')",
    "read_csv_of_any_file": "SELECT * FROM read_csv('/etc/passwd')",
    "read_text_of_the_live_file": "SELECT * FROM read_text({live})",
    "read_blob": "SELECT * FROM read_blob('/etc/hostname')",
    "glob_the_home": "SELECT * FROM glob({home_glob})",
    "create_table": "CREATE TABLE t AS SELECT 1",
    "create_view": "CREATE VIEW v AS SELECT 1",
    "create_macro": "CREATE MACRO plus_one(x) AS x + 1",
    "create_sequence": "CREATE SEQUENCE s",
    "insert": "INSERT INTO klines_1m SELECT * FROM klines_1m LIMIT 1",
    "update": "UPDATE klines_1m SET close = 0",
    "delete": "DELETE FROM klines_1m",
    "truncate": "TRUNCATE candles",
    "drop": "DROP TABLE candles",
    "alter": "ALTER TABLE candles ADD COLUMN x INTEGER",
    "write_after_a_read": "SELECT 1; DELETE FROM klines_1m",
    "write_in_a_transaction": "BEGIN; DELETE FROM klines_1m; COMMIT",
}

# Allowed, because they change no file: they must leave every byte as it was.
HARMLESS = {
    "checkpoint": "CHECKPOINT",
    "force_checkpoint": "FORCE CHECKPOINT",
    "vacuum": "VACUUM",
    "analyze": "ANALYZE",
    "call": "CALL pragma_version()",
    "temp_table": "CREATE TEMP TABLE t AS SELECT 1 AS x; SELECT * FROM t",
    "replica_again_read_only": "ATTACH {replica} AS again (READ_ONLY); SELECT 1",
}


def _sql(h: Home, template: str) -> str:
    out = h.outside
    return template.format(
        live=lit(h.wh.path),
        replica=lit(h.wh.replica_path),
        out=lit(out),
        out_db=lit(out / "new.duckdb"),
        out_csv=lit(out / "x.csv"),
        out_dir=lit(out / "export"),
        out_ext=lit(out / "evil.duckdb_extension"),
        home_glob=lit(h.home / "*"),
    )


def _intact(h: Home, before: dict[str, str], rows: bool = False) -> None:
    """No byte changed and no file appeared under the root; `rows`: and both files read."""
    assert h.state() == before, "a file was written, changed or created"
    for path in (h.wh.path, h.wh.replica_path) if rows else ():
        assert count(path) == 2 * 1440
        assert count(path, "SELECT count(*) FROM candles WHERE timeframe = '1h'") == 48


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_every_escape_is_refused_and_changes_no_byte(as_user: Home, name: str, capsys):
    before = as_user.state()
    code = main(["sql", _sql(as_user, ESCAPES[name])])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("signalbox sql: refused: `signalbox sql` is read-only"), err
    assert err.count("\n") == 1 and "Traceback" not in err
    _intact(as_user, before)


@pytest.mark.parametrize("name", sorted(HARMLESS))
def test_harmless_statements_run_and_change_no_byte(as_user: Home, name: str, capsys):
    before = as_user.state()
    code = main(["sql", _sql(as_user, HARMLESS[name])])
    err = capsys.readouterr().err
    assert code == 0, err
    _intact(as_user, before)


def test_the_reported_escapes_fail_through_the_real_command(filled: Home):
    """The two escapes from the issue, as a user types them, in a separate process."""
    before = filled.state()
    for sql in (
        f"ATTACH {lit(filled.wh.path)} AS w (READ_WRITE); DELETE FROM w.candles",
        f"COPY (SELECT 42) TO {lit(filled.wh.path)}",
    ):
        r = subprocess.run([*CLI, sql], env=filled.env(), capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert "refused: `signalbox sql` is read-only" in r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    _intact(filled, before, rows=True)
    r = subprocess.run(
        [*CLI, "SELECT count(*) AS n FROM candles WHERE timeframe = '1h'"],
        env=filled.env(),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "48" in r.stdout, r.stderr


def test_sql_errors_are_one_line_with_duckdbs_hint(filled: Home):
    for sql, says in [
        ("SELECT count(*) FROM candle", 'Did you mean "candles"'),
        ("SELECT clse FROM candles", 'Candidate bindings: "close"'),
        ("SELEC 1", 'syntax error at or near "SELEC"'),
    ]:
        r = subprocess.run([*CLI, sql], env=filled.env(), capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("signalbox sql: ") and says in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_csv_prints_duckdbs_text_without_writing_a_file(as_user: Home, capsys):
    before = as_user.state()
    query = "SELECT open_time, close, [1, 2] AS l, NULL AS n, 'a,\"b' AS s FROM candles"
    code = main(["sql", "--csv", f"{query} WHERE timeframe = '1h' ORDER BY 1 LIMIT 2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "open_time,close,l,n,s"
    assert lines[1].startswith("2024-01-01 00:00:00+00,") and lines[1].endswith(
        ',"[1, 2]",,"a,""b"'
    )
    assert len(lines) == 3
    _intact(as_user, before)


def test_sql_on_a_home_without_a_warehouse_says_so_and_creates_nothing(tmp_path: Path):
    h = _fresh(tmp_path)
    r = subprocess.run([*CLI, "SELECT 1"], env=h.env(), capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert f"no warehouse yet in {h.home} (expected {h.wh.path})" in r.stderr
    assert "signalbox backfill" in r.stderr and "make run" in r.stderr
    assert list(h.home.iterdir()) == []


def test_a_lost_replica_is_copied_again_from_the_warehouse(tmp_path: Path, monkeypatch, capsys):
    h = _fresh(tmp_path)
    for k, v in h.env().items():
        monkeypatch.setenv(k, v)
    h.wh.replace("klines_1m", klines(DAY0), WHERE, ["BTCUSDT", DAY0, DAY0 + DAY])
    h.wh.replica_path.unlink()
    assert main(["sql", "SELECT count(*) AS n FROM klines_1m"]) == 0
    assert "1440" in capsys.readouterr().out and count(h.wh.replica_path) == 1440


def _has_open(pid: int, path: Path) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(fd) == str(path) for fd in fds.iterdir())
    except OSError:
        return False


def test_a_long_sql_query_never_blocks_a_write(tmp_path: Path):
    """While `signalbox sql` keeps the replica open in a query that never ends, the pipeline
    writes, and the replica path shows every write at once."""
    h = _fresh(tmp_path)
    wh = h.wh
    wh.replace("klines_1m", klines(DAY0), WHERE, ["BTCUSDT", DAY0, DAY0 + DAY])
    forever = "SELECT sum(a.range * b.range) FROM range(100000000) a, range(100000000) b"
    p = subprocess.Popen([*CLI, forever], env=h.env())
    try:
        while not _has_open(p.pid, wh.replica_path):
            assert p.poll() is None, "the reader ended before opening the replica"
            time.sleep(0.02)
        for i in range(1, 4):
            d = DAY0 + i * DAY
            wh.replace("klines_1m", klines(d), WHERE, ["BTCUSDT", d, d + DAY])
            assert count(wh.replica_path) == (i + 1) * 1440
        assert p.poll() is None  # still reading its own snapshot
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()

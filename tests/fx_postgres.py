"""A real, throwaway PostgreSQL server for the tests of the Postgres instance storage.

One server per pytest process (each xdist worker has its own session), started with Debian's
`initdb` and `pg_ctl` in a temporary directory on a free loopback port, without fsync (a test
server, thrown away at the end); each test that asks gets a database of its own. PostgreSQL
refuses to run as root: under root (CI, containers) initdb, pg_ctl and the server run as the
`postgres` user (made by Debian's package; else `nobody`) through `runuser`, or `setpriv`.
Without PostgreSQL, or with neither tool under root, the tests that need it skip naming what to
install (`make test` installs Debian's `postgresql` package).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INSTALL = "install Debian's postgresql package (apt-get install postgresql; `make test` does)"


def pg_bin() -> Path | None:
    """The directory of initdb and pg_ctl: on PATH, else Debian's newest version."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb", path=str(Path(found).resolve().parent)):
        return Path(found).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(versions[-1]).parent if versions else None


def _as_user() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs a program as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return [], None
    user = next((u for u in _users("postgres", "nobody")), None)
    if user is None:
        pytest.skip("running as root with neither a `postgres` nor a `nobody` user for PostgreSQL")
    if shutil.which("runuser"):
        return ["runuser", "-u", user.pw_name, "--"], user
    if shutil.which("setpriv"):
        return [
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--init-groups",
            "--",
        ], user
    pytest.skip(
        "PostgreSQL refuses to run as root and neither runuser nor setpriv is here "
        "to run it as another user: install util-linux"
    )


def _users(*names: str) -> Iterator[pwd.struct_passwd]:
    for name in names:
        with contextlib.suppress(KeyError):
            yield pwd.getpwnam(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server: `url(db)` for a database on it, `new_database()` for a fresh one."""

    port: int
    root: Path
    _made: itertools.count = field(default_factory=itertools.count)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg2

        name = f"t{os.getpid()}_{next(self._made)}"
        con = psycopg2.connect(self.url())
        try:
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')  # name made above, not input
        finally:
            con.close()
        return self.url(name)


def _run(prefix: list[str], args: list[str], cwd: Path) -> None:
    r = subprocess.run(prefix + args, cwd=cwd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        log = cwd / "server.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"{' '.join(args[:2])} failed ({r.returncode}): {r.stderr}{tail}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this pytest process, stopped and deleted at the end."""
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL is not installed: {INSTALL}")
    prefix, user = _as_user()
    root = Path(tempfile.mkdtemp(prefix="signalbox-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    data = root / "data"
    started = False
    try:
        _run(
            prefix,
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E",
             "UTF8", "--no-sync", "--no-instructions"],
            root,
        )  # fmt: skip
        for attempt in range(3):  # a port found free may be taken before the server binds it
            port = _free_port()
            opts = (
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
                "-c shared_buffers=32MB"
            )
            try:
                _run(
                    prefix,
                    [str(bin_dir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data),
                     "-l", str(root / "server.log"), "-o", opts],
                    root,
                )  # fmt: skip
                started = True
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        yield PostgresServer(port, root)
    finally:
        if started:
            subprocess.run(
                [*prefix, str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate"],
                cwd=root,
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh database of its own for this test."""
    return postgres_server.new_database()


@pytest.fixture
def dagster_storage(request: pytest.FixtureRequest) -> dict:
    """signalbox.yaml's top-level keys for the Dagster storage named by the test's parameter
    (`indirect`): {} for the default SQLite files, a `dagster:` section for "postgres" (a fresh
    database on the session's server)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return {}
    url = request.getfixturevalue("postgres_url")
    return {"dagster": {"storage": "postgres", "postgres_url": url}}

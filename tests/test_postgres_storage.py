"""The Dagster instance on PostgreSQL (`dagster: {storage: postgres}`), on a real throwaway
server (tests/fx_postgres.py): the storage block follows signalbox.yaml, a backfill records
its run there, and bad or unreachable settings stop a command in one line before any run.
The live path on PostgreSQL is tests/test_live_e2e.py's first test, run on both storages."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_settings
from pipeline.orchestration.instance import INSTANCE_CONFIG, STAMP, InstanceError, ensure_instance
from tests.daemon import replay_env
from warehouse import connect

CLI = [sys.executable, "-m", "pipeline.runtime.cli"]
SECRET = "s3cret-pw"


def write_config(home: Path, **top: object) -> Path:
    path = home / "signalbox.yaml"
    path.write_text(yaml.safe_dump({"home": str(home), **top}))
    return path


def postgres(url: str) -> dict:
    return {"dagster": {"storage": "postgres", "postgres_url": url}}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_runs(url: str) -> list[tuple[str, str]]:
    """(job, status) of every run in the PostgreSQL database itself, not through Dagster."""
    import psycopg2

    con = psycopg2.connect(url)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT pipeline_name, status FROM runs ORDER BY create_timestamp")
            return cur.fetchall()
    finally:
        con.close()


@pytest.mark.parametrize(
    ("section", "key", "says"),
    [
        ({"storage": "mysql"}, "dagster.storage = 'mysql'", "'sqlite' or 'postgres'"),
        ({"storage": "postgres"}, "dagster.postgres_url = None", "is required with"),
        (
            {"storage": "postgres", "postgres_url": f"mysql://bob:{SECRET}@db/x"},
            "dagster.postgres_url = 'mysql://bob:***@db/x'",
            "must be a PostgreSQL URL with a database",
        ),
        (
            {"storage": "postgres", "postgres_url": f"postgresql://bob:{SECRET}@db:5432"},
            "dagster.postgres_url = 'postgresql://bob:***@db:5432'",
            "with a database",
        ),
        ({"storge": "postgres"}, "dagster.storge = 'postgres'", "not a known key"),
    ],
)
def test_bad_storage_settings_are_one_line_naming_key_value_and_what_is_allowed(
    tmp_path, section, key, says
):
    cfg = write_config(tmp_path, dagster=section)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    msg = str(err.value)
    assert msg.startswith(f"invalid configuration in {cfg}: {key}"), msg
    assert says in msg and "\n" not in msg and SECRET not in msg, msg


def test_the_environment_chooses_the_storage_and_is_named_when_wrong(tmp_path):
    from pipeline.config import load
    from pipeline.runtime.configview import effective

    url = f"postgresql://bob:{SECRET}@db.example.org/signalbox"
    env = {"SIGNALBOX_DAGSTER_STORAGE": "postgres", "SIGNALBOX_DAGSTER_POSTGRES_URL": url}
    s = load_settings(write_config(tmp_path), env=env)
    assert s.dagster.postgres and s.dagster.postgres_url == url
    shown = effective(load(write_config(tmp_path), env=env))["dagster.postgres_url"]  # config show
    assert (
        shown["value"] == url.replace(SECRET, "***")
        and "SIGNALBOX_DAGSTER_POSTGRES_URL" in (shown["from"])
    )
    assert load_settings(write_config(tmp_path), env={}).dagster.storage == "sqlite"  # default
    with pytest.raises(ConfigError, match=r"dagster.storage = 'pg' \(set by SIGNALBOX_DAGSTER_"):
        load_settings(write_config(tmp_path), env={"SIGNALBOX_DAGSTER_STORAGE": "pg"})


def test_the_instance_storage_follows_signalbox_yaml(tmp_path, postgres_url, capsys):
    import dagster as dg

    env = {"SIGNALBOX_HOME": str(tmp_path)}
    sqlite = load_settings(write_config(tmp_path), env=env)
    home = ensure_instance(sqlite)
    cfg = home / "dagster.yaml"
    assert yaml.safe_load(cfg.read_text()) == INSTANCE_CONFIG  # the default, unchanged
    cfg.write_text(cfg.read_text() + "# my note\n")  # an edit, kept through what follows

    pg = load_settings(write_config(tmp_path, **postgres(postgres_url)), env=env)
    assert ensure_instance(pg) == home
    data = yaml.safe_load(cfg.read_text())
    assert data.pop("storage") == {
        "postgres": {"postgres_url": postgres_url.replace("postgresql:", "postgresql+psycopg2:")}
    }
    assert data == INSTANCE_CONFIG and "# my note" in cfg.read_text()
    assert cfg.stat().st_mode & 0o077 == 0  # its URL may hold a password
    assert f"now PostgreSQL at {postgres_url}" in capsys.readouterr().err
    with dg.DagsterInstance.from_config(str(home)) as inst:
        assert type(inst.run_storage).__name__ == "PostgresRunStorage"
        assert inst.get_runs() == []
    assert postgres_url in (home / STAMP).read_text()  # set up there, once

    ensure_instance(sqlite)  # and back
    assert yaml.safe_load(cfg.read_text()) == INSTANCE_CONFIG
    assert "now SQLite files" in capsys.readouterr().err

    cfg.write_text("storage: [unclosed\n")  # a file broken by hand is named, not a traceback
    with pytest.raises(InstanceError, match=r"dagster.yaml is not a YAML mapping .*move it aside"):
        ensure_instance(sqlite)


def test_an_unreachable_database_stops_the_command_in_one_line_before_any_run(tmp_path):
    url = f"postgresql://signalbox:{SECRET}@127.0.0.1:{closed_port()}/signalbox"
    cfg = write_config(tmp_path, **postgres(url))
    r = subprocess.run(
        [*CLI, "backfill", "--start", "2024-01-01", "--end", "2024-01-01"],
        env={**replay_env(tmp_path), "SIGNALBOX_CONFIG": str(cfg)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    shown = url.replace(SECRET, "***")
    assert f"cannot reach the Dagster storage database {shown}" in line, line
    assert "Connection refused" in line and "dagster.storage: sqlite" in line, line
    assert SECRET not in r.stderr
    assert not (tmp_path / "dagster").exists() and not (tmp_path / "warehouse").exists()


def test_a_missing_database_is_named_with_how_to_create_it(tmp_path, postgres_server):
    url = postgres_server.url("nosuchdb")
    settings = load_settings(write_config(tmp_path, **postgres(url)), env={})
    with pytest.raises(InstanceError) as err:
        ensure_instance(settings)
    assert 'database "nosuchdb" does not exist' in str(err.value)
    assert "createdb" in str(err.value) and "\n" not in str(err.value)


def test_a_backfill_records_its_run_in_postgres(tmp_path, replay, postgres_url):
    import dagster as dg

    cfg = write_config(tmp_path, **postgres(postgres_url))
    args = ["backfill", "--start", "2024-01-01", "--end", "2024-01-02", "--symbols", "BTCUSDT"]
    env = {**replay_env(tmp_path, replay), "SIGNALBOX_CONFIG": str(cfg)}
    r = subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with connect(tmp_path / "warehouse" / "replay.duckdb", read_only=True) as con:
        assert con.execute("SELECT count(*) FROM klines_1m").fetchone() == (2 * 1440,)
    assert pg_runs(postgres_url) == [("backfill", "SUCCESS")]  # in PostgreSQL itself
    home = tmp_path / "dagster"
    assert not (home / "history").exists() and not (home / "schedules").exists()  # no SQLite
    with dg.DagsterInstance.from_config(str(home)) as inst:
        (run,) = inst.get_runs()
        records = inst.fetch_materializations(dg.AssetKey("signals"), limit=10).records
    assert {m.partition_key for m in records if m.run_id == run.run_id} == {
        "2024-01-01",
        "2024-01-02",
    }

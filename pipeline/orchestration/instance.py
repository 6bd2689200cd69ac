"""The Dagster instance under the state directory: `dagster.yaml`, written on first start.

The settings below are what the live path needs: a queued run coordinator that dequeues every
second, live runs one at a time, one concurrency pool of size 1 shared by every DuckDB writer
(DuckDB admits one process per file), sensor threads so a slow tick never stalls the others,
run monitoring so a run killed mid-write is marked failed and retried, and tick retention so
storage stays small.

Its storage is created (or migrated to the installed Dagster) here, once, before any Dagster
process opens it: webserver, daemon and a run each create missing SQLite storage when they
start, and started together on a fresh home they race (a schedules.db stamped twice with its
schema version crash-loops the daemon). Where it lives follows `dagster:` in signalbox.yaml:
SQLite files in the home (the default), or a PostgreSQL database, which is asked for before
anything else starts so that a database that is down is one clear line, not a failed run.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from importlib.metadata import version
from pathlib import Path

import yaml

from pipeline.config import REPO_ROOT, ConfigError, Settings
from pipeline.instance_storage import DagsterStorage, mask_url
from pipeline.orchestration import tags

POOL = "duckdb"

INSTANCE_CONFIG = {
    "run_launcher": {"module": "pipeline.orchestration.launcher", "class": "WarmRunLauncher"},
    "run_coordinator": {
        "module": "dagster.core.run_coordinator",
        "class": "QueuedRunCoordinator",
        "config": {
            "dequeue_interval_seconds": 1,
            "dequeue_use_threads": True,
            "dequeue_num_workers": 2,
        },
    },
    "concurrency": {
        "pools": {"default_limit": 1, "granularity": "op"},
        # The live sensor's runs one at a time, in order: a minute is never checked before
        # the one before it has been written.
        "runs": {
            "max_concurrent_runs": 4,
            "tag_concurrency_limits": [{"key": tags.SENSOR, "value": tags.LIVE_SENSOR, "limit": 1}],
        },
    },
    "sensors": {"use_threads": True, "num_workers": 4},
    "schedules": {"use_threads": True, "num_workers": 2},
    "run_monitoring": {
        "enabled": True,
        "start_timeout_seconds": 60,
        "poll_interval_seconds": 5,
        "max_resume_run_attempts": 0,
    },
    "retention": {
        "schedule": {"purge_after_days": 7},
        "sensor": {"purge_after_days": {"skipped": 1, "failure": 7, "success": 2}},
    },
    "telemetry": {"enabled": False},
    "nux": {"enabled": False},
}


# The SQLite files of Dagster's default storage, and the stamp saying they are ready.
STORAGE_FILES = ("history/runs.db", "history/runs/index.db", "schedules/schedules.db")
STAMP = ".storage-ready"
PG_CONNECT_TIMEOUT_S = 5
HEADER = (
    "# Written by signalbox on first start; edit freely (see pipeline/orchestration/instance.py)\n"
    "# except `storage:`, which follows `dagster:` in signalbox.yaml.\n"
)


class InstanceError(ConfigError):
    """The Dagster instance under the state directory cannot be set up."""


def ensure_instance(settings: Settings) -> Path:
    """Create DAGSTER_HOME with its dagster.yaml if missing (an edited file is left alone, but
    for its `storage:`) and its storage, once; later calls only read a stamp (and ask a
    PostgreSQL storage whether it is up)."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    storage = settings.dagster
    if not cfg.exists():
        block = storage.dagster_block()
        data = INSTANCE_CONFIG | ({"storage": block} if block else {})
        cfg.write_text(HEADER + yaml.safe_dump(data, sort_keys=False))
    else:
        _upgrade_live_limit(cfg)
        _follow_storage(cfg, storage)
    if storage.postgres:
        cfg.chmod(0o600)  # its URL may hold a password
        check_postgres(storage, settings.config_path)
    init_storage(home, storage.shown_url())
    return home


def _follow_storage(cfg: Path, storage: DagsterStorage) -> None:
    """Give the file the `storage:` that signalbox.yaml's `dagster:` asks for, keeping every
    other line; say so when it changes (runs recorded in the old storage stay there)."""
    text = cfg.read_text()
    try:
        current = (yaml.safe_load(text) or {}).get("storage")
    except (yaml.YAMLError, AttributeError) as err:
        why = " ".join(str(err).split())[:200]
        raise InstanceError(
            f"{cfg} is not a YAML mapping ({why}); correct it, or move it aside to have it "
            "written afresh"
        ) from None
    wanted = storage.dagster_block()
    if current == wanted:
        return
    kept, skipping = [], False
    for line in text.splitlines(keepends=True):
        if re.match(r"storage\s*:", line):
            skipping = True
        elif not (skipping and (line[:1] in (" ", "\t") or not line.strip())):
            skipping = False
            kept.append(line)
    block = yaml.safe_dump({"storage": wanted}, sort_keys=False) if wanted else ""
    cfg.write_text("".join(kept).rstrip("\n") + "\n" + block)
    shown = yaml.safe_dump(current, default_flow_style=True, width=10**6).strip()
    was = "SQLite files" if current is None else mask_url(shown)[:160]
    now = f"PostgreSQL at {storage.shown_url()}" if wanted else f"SQLite files in {cfg.parent}"
    print(
        f"signalbox: the Dagster storage in {cfg} is now {now}, as dagster.storage says "
        f"(it was {was}; runs recorded there stay there)",
        file=sys.stderr,
    )


def check_instance(settings: Settings) -> None:
    """Before a command starts anything: a PostgreSQL storage answers (SQLite needs nothing)."""
    if settings.dagster.postgres:
        check_postgres(settings.dagster, settings.config_path)


def check_postgres(storage: DagsterStorage, config: Path | None = None) -> None:
    """Connect once to the PostgreSQL storage, so that a database that is down or missing
    stops a command before it starts anything, naming the URL without its password."""
    import psycopg2

    try:
        psycopg2.connect(storage.libpq_url(), connect_timeout=PG_CONNECT_TIMEOUT_S).close()
    except psycopg2.Error as err:
        why = mask_url(" ".join(str(err).split()))[:300]
        where = f"dagster.postgres_url in {config}" if config else "dagster.postgres_url"
        raise InstanceError(
            f"cannot reach the Dagster storage database {storage.shown_url()} ({where}): {why}; "
            "start PostgreSQL there and create the database (createdb), correct the URL (a "
            "password may come from PGPASSWORD or ~/.pgpass), or set dagster.storage: sqlite"
        ) from None


def _upgrade_live_limit(cfg: Path) -> None:
    """A dagster.yaml written before the live sensor's runs were tagged `signalbox/sensor`
    limits the old `signalbox/live` tag, which no run carries any more: limit the new one."""
    text = cfg.read_text()
    old = f"key: {tags.LEGACY_LIVE[0]}\n"
    if old in text:
        indent = " " * len(text.split(old, 1)[0].rsplit("\n", 1)[-1])  # "    - " as spaces
        new = f"key: {tags.SENSOR}\n{indent}value: {tags.LIVE_SENSOR}\n"
        cfg.write_text(text.replace(old, new, 1))


def _stamp(where: str = "") -> str:
    """Which Dagster made the storage, and where (a PostgreSQL URL without its password)."""
    return f"dagster {version('dagster')}" + (f" {where}" if where else "")


def _ready(home: Path, where: str) -> bool:
    """Storage was made by this Dagster version, in this place, and none of its files has
    gone since."""
    try:
        first, *files = (home / STAMP).read_text().splitlines()
    except (OSError, ValueError):
        return False
    return first == _stamp(where) and all((home / f).exists() for f in files)


def init_storage(home: Path, where: str = "") -> None:
    """Create or migrate the instance's storage in one `dagster instance migrate`, under a lock
    (two signalbox commands starting at once on a fresh home wait for each other). `where`:
    the PostgreSQL URL (no password) of a Postgres storage, "" for SQLite files."""
    if _ready(home, where):
        return
    with (home / ".storage.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ready(home, where):
            return
        if not (home / "schedules").exists():
            print(f"signalbox: setting up the Dagster instance in {home}", file=sys.stderr)
        for f in STORAGE_FILES:
            _drop_conflicting_schema_rows(home / f)
        r = subprocess.run(
            [sys.executable, "-m", "dagster", "instance", "migrate"],
            env={**os.environ, "DAGSTER_HOME": str(home)},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            why = (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()[-1][:300]
            fix = (
                f"check the database {where}"
                if where
                else "move that directory aside to start afresh"
            )
            raise InstanceError(
                f"could not set up the Dagster storage in {home} (`dagster instance migrate` "
                f"exited {r.returncode}: {mask_url(why)}); {fix}"
            )
        made = [f for f in STORAGE_FILES if (home / f).exists()]
        tmp = home / f"{STAMP}.tmp"
        tmp.write_text("\n".join([_stamp(where), *made]) + "\n")
        tmp.replace(home / STAMP)


def _drop_conflicting_schema_rows(db: Path) -> None:
    """Heal what the start-up race left before storage was made here first: two schema versions
    recorded in one file (Dagster then refuses it: "more than one head"). Without a recorded
    version Dagster assumes the last one it ever stamped on SQLite and migrates from there (its
    migrations check what exists), which is what `init_storage` runs next."""
    if not db.exists():
        return
    with closing(sqlite3.connect(db)) as con, con:
        try:
            (rows,) = con.execute("SELECT count(*) FROM alembic_version").fetchone()
        except sqlite3.OperationalError:  # no version table yet: Dagster stamps it
            return
        if rows > 1:
            con.execute("DELETE FROM alembic_version")


def dagster_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Dagster processes: the instance, and the source resolved by the caller."""
    env = dict(os.environ)
    env["DAGSTER_HOME"] = str(ensure_instance(settings))
    env["SIGNALBOX_HOME"] = str(settings.home)
    if settings.config_path:
        env["SIGNALBOX_CONFIG"] = str(settings.config_path)
    env.update(extra or {})
    return env


# -- what `signalbox up` and `status` read from the instance (Dagster imported only here) ----
def materialized_days(dagster_home: Path, asset: str = "signals") -> set[str]:
    """The daily partitions of `asset` with a recorded materialization in the instance
    (`up`'s catch-up: which days' signals Dagster has recorded)."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return set(instance.get_materialized_partitions(dg.AssetKey(asset)))


def failed_runs(dagster_home: Path, since: dt.datetime, limit: int = 20) -> list[dict]:
    """The runs that failed since `since`: id, job and tags (`signalbox status`)."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    flt = RunsFilter(statuses=[DagsterRunStatus.FAILURE], updated_after=since)
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs(filters=flt, limit=limit)
    return [{"run_id": r.run_id, "job": r.job_name, "tags": dict(r.tags)} for r in runs]

"""The Dagster instance's storage is made once, before webserver, daemon and runs open it:
fresh homes opened by several Dagster processes at the same moment keep one schema version per
SQLite file, and the instance loads."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest

from pipeline.config import Settings, load_settings
from pipeline.orchestration.instance import STAMP, STORAGE_FILES, ensure_instance

HOMES = 3  # the race broke 5 homes out of 5 before storage was made first


def _open(dagster_home: str, role: int, barrier) -> None:
    """What webserver (0), daemon (1) and a CLI run (2) touch first, all at once."""
    import dagster as dg

    barrier.wait()
    with dg.DagsterInstance.from_config(dagster_home) as inst:
        if role == 0:
            inst.get_runs(limit=1)
        elif role == 1:
            inst.all_instigator_state()
        else:
            inst.event_log_storage.get_concurrency_keys()
    os._exit(0)


def schema_rows(dagster_home: Path) -> dict[str, int]:
    out = {}
    for f in STORAGE_FILES:
        with closing(sqlite3.connect(dagster_home / f)) as con:
            out[f] = con.execute("SELECT count(*) FROM alembic_version").fetchone()[0]
    return out


@pytest.fixture(scope="module")
def homes(tmp_path_factory) -> list[tuple[Settings, Path]]:
    """Fresh homes, each set up by two signalbox commands starting at the same moment."""
    root = tmp_path_factory.mktemp("homes")
    settings = [load_settings(env={"SIGNALBOX_HOME": str(root / f"h{i}")}) for i in range(HOMES)]
    with ThreadPoolExecutor(2 * HOMES) as pool:
        made = list(pool.map(ensure_instance, settings + settings))
    return list(zip(settings, made[:HOMES], strict=True))


def test_fresh_homes_opened_by_three_processes_at_once_keep_one_schema_each(homes):
    import dagster as dg

    fork = multiprocessing.get_context("fork")
    for settings, home in homes:
        barrier = fork.Barrier(3)
        procs = [fork.Process(target=_open, args=(str(home), r, barrier)) for r in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0], home
        assert schema_rows(home) == dict.fromkeys(STORAGE_FILES, 1)
        with dg.DagsterInstance.from_config(str(home)) as inst:
            assert inst.get_runs() == []
        stamp = (home / STAMP).stat().st_mtime_ns
        assert ensure_instance(settings) == home
        assert (home / STAMP).stat().st_mtime_ns == stamp  # a later start sets up nothing


def test_a_home_the_start_up_race_broke_is_healed(homes):
    import dagster as dg

    settings, home = homes[0]
    # What the race left before this fix: a second schema version (the older revision Dagster
    # stamps on a file whose tables another process had just made) in runs.db and schedules.db.
    heads = {}
    for f in ("history/runs.db", "schedules/schedules.db"):
        with closing(sqlite3.connect(home / f)) as con, con:
            heads[f] = con.execute("SELECT version_num FROM alembic_version").fetchall()
            con.execute("INSERT INTO alembic_version VALUES ('5771160a95ad')")
    (home / STAMP).unlink()  # as on a home set up before the stamp existed
    ensure_instance(settings)
    assert schema_rows(home) == dict.fromkeys(STORAGE_FILES, 1)
    for f, head in heads.items():
        with closing(sqlite3.connect(home / f)) as con:
            assert con.execute("SELECT version_num FROM alembic_version").fetchall() == head
    with dg.DagsterInstance.from_config(str(home)) as inst:
        assert inst.get_runs() == [] and inst.all_instigator_state() == []

"""A run whose process is gone never blocks the next one: it is reported failed (naming its
pid) and its DuckDB pool slot is freed, by whoever waits for the pool, in seconds.

Real Dagster instances in a temporary directory, real (dead and live) processes; the slow test
SIGKILLs a real `signalbox backfill` while it holds the pool and runs another one after it."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.orchestration.instance import POOL

RANGE = {
    "dagster/asset_partition_range_start": "2024-01-01",
    "dagster/asset_partition_range_end": "2024-01-07",
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """An empty instance directory with a `duckdb` pool of 1 (made once: it takes seconds)."""
    import dagster as dg

    path = tmp_path_factory.mktemp("pristine")
    overrides = {"concurrency": {"pools": {"default_limit": 1, "granularity": "op"}}}
    with dg.DagsterInstance.local_temp(str(path), overrides=overrides) as inst:
        inst.event_log_storage.initialize_concurrency_limit_to_default(POOL)
    return path


@pytest.fixture
def instance(pristine: Path, tmp_path: Path):
    """A fresh copy of the pristine instance."""
    import dagster as dg

    path = tmp_path / "dagster"
    shutil.copytree(pristine, path)
    overrides = {"concurrency": {"pools": {"default_limit": 1, "granularity": "op"}}}
    with dg.DagsterInstance.local_temp(str(path), overrides=overrides) as inst:
        yield inst


def started_run(instance, pid: int, at: float | None = None) -> str:
    """A backfill run that started in process `pid` at `at` (a RUN_START event, as Dagster
    writes it), as a run killed after that would have left it."""
    import dagster as dg
    from dagster._core.events import DagsterEvent
    from dagster._core.events.log import EventLogEntry
    from dagster._core.utils import make_new_run_id

    run = instance.add_run(dg.DagsterRun("__ASSET_JOB", run_id=make_new_run_id(), tags=RANGE))
    event = DagsterEvent(dg.DagsterEventType.RUN_START.value, "__ASSET_JOB", pid=pid)
    entry = EventLogEntry(
        error_info=None,
        level="DEBUG",
        user_message="",
        run_id=run.run_id,
        timestamp=time.time() if at is None else at,
        dagster_event=event,
    )
    instance.handle_new_event(entry)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    return run.run_id


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def holders(instance) -> set[str]:
    return {s.run_id for s in instance.event_log_storage.get_concurrency_info(POOL).claimed_slots}


def failure_message(instance, run_id: str) -> str:
    import dagster as dg

    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    return records[-1].event_log_entry.dagster_event.message


def test_a_run_whose_process_is_gone_is_failed_and_its_slot_freed(instance):
    import dagster as dg

    from pipeline.orchestration.reaper import reap

    pid = dead_pid()
    dead = started_run(instance, pid)
    assert instance.event_log_storage.claim_concurrency_slot(POOL, dead, "candles").is_claimed
    notes = reap(instance, by="by the test")
    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
    assert f"pid {pid}" in failure_message(instance, dead)
    assert holders(instance) == set()
    assert notes == [
        f"freed the {POOL} pool: run {dead[:8]} (backfill 2024-01-01…2024-01-07, pid {pid}) "
        "is gone (killed or crashed); marked it failed"
    ]
    assert reap(instance) == []  # once


def test_a_live_process_is_left_alone_and_a_recycled_pid_is_not_taken_for_it(instance):
    import dagster as dg

    from pipeline.orchestration.reaper import reap

    alive = started_run(instance, os.getpid())
    # Our pid, but the run started a day before this process did: the pid was recycled.
    recycled = started_run(instance, os.getpid(), at=time.time() - 86400)
    reap(instance)
    assert instance.get_run_by_id(alive).status == dg.DagsterRunStatus.STARTED
    assert instance.get_run_by_id(recycled).status == dg.DagsterRunStatus.FAILURE


def test_in_the_daemon_a_dead_run_of_any_launcher_is_failed(instance):
    """The daemon's two watchers: run monitoring (through the launcher's health check) and the
    reap_dead_runs sensor. Both judge a CLI run, which no launcher tagged, by its RUN_START."""
    import dagster as dg
    from dagster._core.launcher import WorkerStatus

    from pipeline.orchestration.launcher import WarmRunLauncher
    from sensors.reaper import reap_dead_runs

    launcher = WarmRunLauncher()
    launcher.register_instance(instance)
    pid = dead_pid()
    health = launcher.check_run_worker_health(instance.get_run_by_id(started_run(instance, pid)))
    assert health.status == WorkerStatus.FAILED and f"pid {pid}" in (health.msg or "")
    alive = instance.get_run_by_id(started_run(instance, os.getpid()))
    assert launcher.check_run_worker_health(alive).status == WorkerStatus.RUNNING

    dead = started_run(instance, dead_pid())
    assert instance.event_log_storage.claim_concurrency_slot(POOL, dead, "candles").is_claimed
    reap_dead_runs(dg.build_sensor_context(instance=instance))
    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
    assert holders(instance) == set()
    assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED


def test_a_waiting_run_says_whom_it_waits_for_and_frees_the_pool_once_it_dies(instance):
    import dagster as dg

    from pipeline.orchestration.reaper import PoolWatch

    storage = instance.event_log_storage
    child = subprocess.Popen(["sleep", "60"])
    holder = started_run(instance, child.pid)
    waiter = started_run(instance, os.getpid())
    try:
        assert storage.claim_concurrency_slot(POOL, holder, "candles").is_claimed
        assert not storage.claim_concurrency_slot(POOL, waiter, "signals").is_claimed
        said: list[str] = []
        watch = PoolWatch(instance, waiter, said.append, steps={"signals"})
        watch.check()
        watch.check()  # said once, not on every check
        assert said == [
            f"waiting for the {POOL} pool: run {holder[:8]} "
            f"(backfill 2024-01-01…2024-01-07, pid {child.pid}) is writing"
        ]
    finally:
        child.kill()
        child.wait()
    watch.check()
    assert said[1:] == [
        f"freed the {POOL} pool: run {holder[:8]} (backfill 2024-01-01…2024-01-07, "
        f"pid {child.pid}) is gone (killed or crashed); marked it failed"
    ]
    assert instance.get_run_by_id(holder).status == dg.DagsterRunStatus.FAILURE
    assert f"by run {waiter[:8]}" in failure_message(instance, holder)
    assert storage.claim_concurrency_slot(POOL, waiter, "signals").is_claimed


def test_pool_slot_frees_the_pool_from_a_dead_run_and_goes_on(instance, home):
    import dagster as dg

    from assets.common import pool_slot

    pid = dead_pid()
    dead = started_run(instance, pid)
    assert instance.event_log_storage.claim_concurrency_slot(POOL, dead, "candles").is_claimed

    @dg.asset
    def writer(context) -> int:
        with pool_slot(context, wait_s=30):
            return 1

    result = dg.materialize([writer], instance=instance)
    assert result.success
    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
    logs = [r.user_message for r in instance.all_logs(result.run_id)]
    assert any(f"freed the {POOL} pool: run {dead[:8]}" in m and f"pid {pid}" in m for m in logs)


def test_backfill_shows_whom_its_run_waits_for():
    from pipeline.runtime.backfill import render

    note = f"waiting for the {POOL} pool: run 1a2b3c4d (backfill 2024-01-01…2024-01-07, pid 4242)"
    line = f"2024-05-01 12:00:00 +0000 - dagster - INFO - __ASSET_JOB - 9f8e7d6c - candles - {note}"
    out = io.StringIO()
    render([line + " is writing\n"], out)
    assert out.getvalue() == f"  {note} is writing\n"


# --- end to end: SIGKILL a real `signalbox backfill` that holds the pool -------------------

CLI = [sys.executable, "-m", "pipeline.runtime.cli", "backfill"]
DAY = ["--start", "2024-01-01", "--end", "2024-01-01", "--symbols", "BTCUSDT"]


@pytest.mark.slow
def test_a_killed_backfill_never_blocks_the_next_one(tmp_path, replay):
    """The first backfill is killed (the whole process tree, SIGKILL) while a step holds the
    pool; the next backfill of that step is held back by Dagster for the pool before any of
    our code runs, yet finishes, and says whose slot it freed."""
    import dagster as dg

    from pipeline.config import load_settings
    from pipeline.orchestration.instance import ensure_instance
    from pipeline.orchestration.reaper import worker
    from tests.daemon import replay_env

    env = replay_env(tmp_path, replay)
    dagster_home = str(ensure_instance(load_settings(env=env)))
    first = subprocess.Popen(
        CLI + DAY, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    held = proc = None
    try:
        deadline = time.monotonic() + 120
        with dg.DagsterInstance.from_config(dagster_home) as inst:
            while held is None and first.poll() is None and time.monotonic() < deadline:
                if inst.event_log_storage.get_concurrency_keys():
                    info = inst.event_log_storage.get_concurrency_info(POOL)
                    # A whole step holds it (Dagster's own pool claim, not pool_slot's).
                    held = next((s for s in info.claimed_slots if ":" not in s.step_key), None)
                    proc = held and worker(inst, inst.get_run_by_id(held.run_id))
                time.sleep(0.05)
        assert held is not None and proc is not None, "the first backfill never held the pool"
        os.kill(proc.pid, signal.SIGKILL)  # the run's process, then the CLI above it
    finally:
        first.kill()
        first.wait()

    second = subprocess.run(
        [*CLI, *DAY, "--assets", "candles"], env=env, capture_output=True, text=True, timeout=90
    )
    assert second.returncode == 0, second.stderr[-3000:]
    said = f"freed the {POOL} pool: run {held.run_id[:8]} (backfill 2024-01-01, pid {proc.pid})"
    assert said in second.stderr, second.stderr[-3000:]
    with dg.DagsterInstance.from_config(dagster_home) as inst:
        assert inst.get_run_by_id(held.run_id).status == dg.DagsterRunStatus.FAILURE
        assert f"pid {proc.pid}" in failure_message(inst, held.run_id)

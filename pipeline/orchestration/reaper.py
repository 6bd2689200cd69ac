"""Runs whose process is gone: reported failed and their DuckDB pool slots freed, in seconds.

A run killed with SIGKILL (a `signalbox backfill` whose terminal was killed, the OOM killer)
never reports its end: Dagster keeps it STARTED forever, and the slot it held in the `duckdb`
pool (size 1) blocks every later writer. Every run names its process in its RUN_START event
(pid, time); the run launcher also tags the runs it forks, for the moment before they start.
A run whose process is gone is reported failed with a message naming the pid, and its slots
are freed.

Who checks: every run that waits for the pool (`PoolWatch`, from `pool_slot` and from the
run's executor while Dagster holds a step back for the pool), so a CLI run needs no daemon;
and in the daemon the `reap_dead_runs` sensor (sensors/reaper.py) and the run launcher's
health check.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass

import dagster as dg
from dagster._core.executor.in_process import InProcessExecutor

from pipeline.orchestration import tags
from pipeline.orchestration.instance import POOL
from pipeline.runtime import pids

# Metadata keys of the event the run launcher logs when it forks a run
# (pipeline/orchestration/launcher.py).
WORKER_PID = "worker_pid"
WORKER_SEEN_AT = "worker_seen_at"
IN_FLIGHT = [
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
WATCH_EVERY_S = 1.0


@dataclass(frozen=True)
class Worker:
    """The process a run executes in, and a moment (Unix time) it was known to be running."""

    pid: int
    seen_at: float

    def alive(self) -> bool:
        return pids.alive(self.pid, self.seen_at)


def worker(instance: dg.DagsterInstance, run: dg.DagsterRun) -> Worker | None:
    """The run's process: the one that logged its RUN_START, else the one the run launcher
    forked (the engine event it logged)."""
    records = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.RUN_START, limit=1, ascending=False
    ).records
    for rec in records:
        event = rec.event_log_entry.dagster_event
        if event is not None and event.pid:
            return Worker(event.pid, rec.event_log_entry.timestamp)
    records = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=5
    ).records
    for rec in records:
        event = rec.event_log_entry.dagster_event
        meta = event.engine_event_data.metadata if event and event.engine_event_data else {}
        if WORKER_PID in meta:
            return Worker(int(meta[WORKER_PID].value), float(meta[WORKER_SEEN_AT].value))
    return None


def label(run: dg.DagsterRun) -> str:
    """What a run is, for people: `backfill 2024-01-01…2024-01-07`, `live 2024-05-01`."""
    t = run.tags
    lo, hi = t.get(tags.RANGE_START), t.get(tags.RANGE_END)
    job = "materialize" if run.job_name.startswith("__ASSET_JOB") else run.job_name
    kind = t.get(tags.MODE) or ("backfill" if lo else job)
    span = (lo if lo == hi else f"{lo}…{hi}") if lo else t.get(tags.PARTITION, "")
    return f"{kind} {span}".strip()


def describe(instance: dg.DagsterInstance, run_id: str) -> str:
    run = instance.get_run_by_id(run_id)
    if run is None:
        return f"run {run_id[:8]} (deleted)"
    w = worker(instance, run)
    return f"run {run_id[:8]} ({label(run)}{f', pid {w.pid}' if w else ''})"


def reap(
    instance: dg.DagsterInstance, run_ids: Iterable[str] | None = None, by: str = ""
) -> list[str]:
    """Report runs whose process is gone as failed and free their pool slots; free the slots
    runs kept after they ended. Returns one line per run dealt with.

    `run_ids`: only these runs (default: every run in flight and every run holding or queueing
    for a pool slot). `by` says who noticed, for the failure message.
    """
    storage = instance.event_log_storage
    slots = storage.supports_global_concurrency_limits
    holding = storage.get_concurrency_run_ids() if slots else set()
    if run_ids is None:
        ids = {r.run_id for r in instance.get_runs(dg.RunsFilter(statuses=IN_FLIGHT))} | holding
    else:
        ids = set(run_ids)
    notes = []
    for run_id in sorted(ids):
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            if run_id in holding:
                storage.free_concurrency_slots_for_run(run_id)
                state = "deleted" if run is None else run.status.value
                notes.append(f"freed the {POOL} pool: run {run_id[:8]} had ended ({state})")
            continue
        if run.status not in IN_FLIGHT:
            continue
        w = worker(instance, run)
        if w is None or w.alive():
            continue
        current = instance.get_run_by_id(run_id)
        if current is None or current.is_finished:  # someone else was quicker
            continue
        verb = "canceled" if current.status == dg.DagsterRunStatus.CANCELING else "failed"
        message = (
            f"the run's process (pid {w.pid}) is gone: killed or crashed mid-run. Marked {verb}"
            f"{' ' + by if by else ''}; any slot it held in the {POOL!r} pool was freed. What it "
            "had not committed was rolled back: materialize its partitions again (the live "
            "sensor retries its own runs)."
        )
        if verb == "canceled":
            instance.report_run_canceled(current, message)
        else:
            instance.report_run_failed(current, message)
        if slots:
            storage.free_concurrency_slots_for_run(run_id)
        notes.append(
            f"freed the {POOL} pool: run {run_id[:8]} ({label(run)}, pid {w.pid}) is gone "
            f"(killed or crashed); marked it {verb}"
        )
    return notes


class PoolWatch:
    """One run waiting for the pool: frees the pool from dead runs and says whom it waits for.

    `steps`: only these steps of the run count as waiting (the run's own claims elsewhere are
    watched by whoever made them); `say` gets each new line.
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        run_id: str,
        say: Callable[[str], object],
        steps: Collection[str] | None = None,
    ) -> None:
        self.instance, self.run_id, self.say, self.steps = instance, run_id, say, steps
        self.last: str | None = None  # the last line said about whom we wait for

    def _waiting(self) -> tuple[bool, list[str], list[str]]:
        """(whether we wait, runs holding a slot, other runs queued for one)."""
        info = self.instance.event_log_storage.get_concurrency_info(POOL)
        claimed = {(s.run_id, s.step_key) for s in info.claimed_slots}
        ours = [
            p
            for p in info.pending_steps
            if p.run_id == self.run_id
            and (self.steps is None or p.step_key in self.steps)
            and (p.run_id, p.step_key) not in claimed
        ]
        holders = sorted({s.run_id for s in info.claimed_slots} - {self.run_id})
        queued = sorted({p.run_id for p in info.pending_steps} - {self.run_id, *holders})
        return bool(ours), holders, queued

    def check(self) -> None:
        if not self.instance.event_log_storage.supports_global_concurrency_limits:
            return
        waiting, holders, queued = self._waiting()
        if not waiting:
            self.last = None
            return
        by = f"by run {self.run_id[:8]}, which was waiting for the {POOL!r} pool"
        reaped = reap(self.instance, holders + queued, by=by)
        for note in reaped:
            self.say(note)
        if reaped:
            waiting, holders, queued = self._waiting()
        if not waiting or not (holders or queued):
            return
        who = [f"{describe(self.instance, r)} is writing" for r in holders]
        who += [f"{describe(self.instance, r)} is queued first" for r in queued if not holders]
        note = f"waiting for the {POOL} pool: " + "; ".join(who)
        if note != self.last:
            self.say(note)
            self.last = note


class _Watcher(threading.Thread):
    """Runs `watch.check()` every few seconds until stopped (storage errors are retried)."""

    def __init__(self, watch: PoolWatch, every: float = WATCH_EVERY_S) -> None:
        super().__init__(name=f"pool-watch-{watch.run_id[:8]}", daemon=True)
        self.watch, self.every, self._stop_event = watch, every, threading.Event()
        self._failed = False

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            try:
                self.watch.check()
            except Exception as err:  # storage busy or locked: the next check retries
                if not self._failed:
                    self.watch.say(f"could not check the {POOL} pool (retrying): {err}")
                self._failed = True

    def stop(self) -> None:
        self._stop_event.set()


class WatchedInProcessExecutor(InProcessExecutor):
    """Dagster's in-process executor, plus a thread that watches the DuckDB pool while Dagster
    holds one of the run's steps back for it (before any of our code runs)."""

    def execute(self, plan_context, execution_plan) -> Iterator[dg.DagsterEvent]:
        watch = PoolWatch(
            plan_context.instance,
            plan_context.run_id,
            plan_context.log.info,
            steps=set(execution_plan.step_keys_to_execute),
        )
        watcher = _Watcher(watch)
        watcher.start()
        try:
            yield from super().execute(plan_context, execution_plan)
        finally:
            watcher.stop()


def _create_executor(init_context) -> WatchedInProcessExecutor:
    base = dg.in_process_executor.executor_creation_fn(init_context)
    return WatchedInProcessExecutor(base.retries, base.step_dependency_config, base.marker_to_close)


watched_in_process_executor = dg.ExecutorDefinition(
    name="in_process",
    config_schema=dg.in_process_executor.config_schema,
    requirements=dg.in_process_executor.get_requirements,
    executor_creation_fn=_create_executor,
    description="Execute all steps in one process; free the DuckDB pool from dead runs.",
)

"""Fail runs whose worker process is gone, so a crash never wedges the live path.

Dagster's default run launcher cannot tell that a run's process died (SIGKILL, OOM, the daemon
killed with its children): such a run stays STARTED forever and holds a run slot. The worker
logs its pid when it starts, so we can check it is still there.
"""

import os
from pathlib import Path

import dagster as dg


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
    for rec in records:
        event = rec.dagster_event
        meta = event.engine_event_data.metadata if event and event.engine_event_data else {}
        if "Started process for run" in (rec.user_message or "") and "pid" in meta:
            return int(meta["pid"].value)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a recycled pid belongs to something else
        return b"dagster" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def reap_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark STARTED runs with a dead worker as failed; returns their ids."""
    reaped = []
    for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]), limit=50):
        pid = _worker_pid(instance, run.run_id)
        if pid is not None and not _alive(pid):
            instance.report_run_failed(
                run,
                f"the run's process (pid {pid}) is gone: it was killed or crashed. Marked "
                "failed so its partition is planned again; any write it was doing was rolled back.",
            )
            reaped.append(run.run_id)
    return reaped

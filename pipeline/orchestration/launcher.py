"""A run launcher that starts runs in milliseconds instead of seconds.

Dagster's default launcher starts every run as a fresh `dagster api execute_run` process that
imports Dagster, polars, DuckDB, pybit and TA-Lib again: 2-4 s on a 2-core machine, every
minute, on the live path's critical path. This launcher keeps a multiprocessing forkserver
with those imports already done, and forks each run from it. The run then executes exactly as
in `dagster api execute_run` (same code path, same events), in its own process. The
forkserver also imports what a run would import late (warm.py: Dagster's storage layer when
the run opens the instance, the rooms the assets import in their bodies: ~1 s a run).

The forkserver is rebuilt when the project's code or configuration changes, so edits are
picked up like with the default launcher. Worker health is judged as in reaper.py (the pid
and start time of the run's process), so the monitoring daemon fails a run whose
process was killed (and the live sensor plans its minutes again) instead of leaving it STARTED
forever.
"""

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.events import EngineEventData
from dagster._core.launcher import (
    CheckRunHealthResult,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from pipeline.orchestration.reaper import WORKER_PID, WORKER_SEEN_AT, worker
from pipeline.runtime import pids

ROOT = Path(__file__).resolve().parents[2]
WATCHED = ("pipeline", "assets", "sensors", "warehouse")
PRELOAD = [
    "dagster",
    "dagster._cli.api",
    "numpy",
    "polars",
    "pyarrow",
    "duckdb",
    "pybit.unified_trading",
    "talib",
    "pipeline.orchestration.definitions",
    "pipeline.orchestration.warm",  # what runs import late, and the resolved definitions
]


def code_stamp() -> float:
    """Newest mtime of the project's code and configuration."""
    newest = 0.0
    for top in WATCHED:
        for p in (ROOT / top).rglob("*"):
            if p.suffix in (".py", ".yaml", ".sql"):
                newest = max(newest, p.stat().st_mtime)
    cfg = os.environ.get("SIGNALBOX_CONFIG") or str(ROOT / "signalbox.yaml")
    if os.path.exists(cfg):
        newest = max(newest, os.stat(cfg).st_mtime)
    return newest


def _worker(instance_ref_json: str, run_id: str) -> None:
    """The run process: what `dagster api execute_run` does, minus the imports."""
    from dagster._cli.api import _execute_run_command_body
    from dagster._serdes import deserialize_value

    signal.signal(signal.SIGINT, signal.default_int_handler)
    with dg.DagsterInstance.from_ref(deserialize_value(instance_ref_json)) as instance:
        code = _execute_run_command_body(run_id, instance, lambda _event: None, True)
    os._exit(code)


class WarmRunLauncher(RunLauncher, ConfigurableClass):
    """Forks runs from a pre-imported forkserver (see the module docstring)."""

    def __init__(
        self, preload: list[str] | None = None, inst_data: ConfigurableClassData | None = None
    ):
        self._inst_data = inst_data
        self._preload = list(preload or PRELOAD)
        self._lock = threading.Lock()
        self._ctx: Any = None
        self._stamp = -1.0
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {"preload": dg.Field([str], is_required=False)}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> "WarmRunLauncher":
        return cls(preload=config_value.get("preload"), inst_data=inst_data)

    def _context(self) -> Any:
        """The forkserver context, rebuilt when the code changed since it was made."""
        stamp = code_stamp()
        if self._ctx is None or stamp != self._stamp:
            if self._ctx is not None:
                from multiprocessing import forkserver

                forkserver._forkserver._stop()  # the next start spawns a fresh server
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(self._preload)
            self._ctx, self._stamp = ctx, stamp
        return self._ctx

    def launch_run(self, context: LaunchRunContext) -> None:
        from dagster._serdes import serialize_value

        run = context.dagster_run
        with self._lock:
            multiprocessing.active_children()  # reap finished runs
            proc = self._context().Process(
                target=_worker,
                args=(serialize_value(self._instance.get_ref()), run.run_id),
                name=f"dagster-run-{run.run_id[:8]}",
            )
            proc.start()
        # Other daemon threads (run monitoring) hold their own launcher: the pid goes in the
        # run's event log (not its tags, which are for people), with a moment it was running
        # (so a recycled pid is not mistaken for it).
        seen = pids.started_at(proc.pid) or time.time()
        self._instance.report_engine_event(
            f"forked the run's process (pid {proc.pid}) from the warm run launcher",
            run,
            EngineEventData(metadata={WORKER_PID: proc.pid, WORKER_SEEN_AT: seen}),
            cls=self.__class__,
        )

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        w = worker(self._instance, run)
        if w is None or not w.alive():
            return False
        os.kill(w.pid, signal.SIGINT)  # Dagster turns this into a clean cancellation
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        w = worker(self._instance, run)
        if w is None:  # no pid logged: nothing to judge by
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no worker pid known")
        if w.alive():
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(w.pid))
        # A killed worker never released its DuckDB pool slot: free it, or every later run
        # would wait for it forever.
        self._instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"the run's process (pid {w.pid}) is gone: killed or crashed. Any write it was "
            "doing was rolled back; the partition will be planned again.",
        )

"""The Dagster instance under the state directory: `dagster.yaml`, written on first start.

The settings below are what the live path needs: a queued run coordinator that dequeues every
second, live runs one at a time, one concurrency pool of size 1 shared by every DuckDB writer
(DuckDB admits one process per file), sensor threads so a slow tick never stalls the others,
run monitoring so a run killed mid-write is marked failed and retried, and tick retention so
storage stays small.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from pipeline.config import Settings

POOL = "duckdb"

INSTANCE_CONFIG = {
    "run_launcher": {"module": "sensors.launcher", "class": "WarmRunLauncher"},
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
        # Live runs one at a time, in order: a minute is never checked before the one
        # before it has been written.
        "runs": {
            "max_concurrent_runs": 4,
            "tag_concurrency_limits": [{"key": "signalbox/live", "limit": 1}],
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


def ensure_instance(settings: Settings) -> Path:
    """Create DAGSTER_HOME with its dagster.yaml if missing (an edited file is left alone)."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    if not cfg.exists():
        header = "# Written by signalbox on first start; edit freely (see pipeline/instance.py).\n"
        cfg.write_text(header + yaml.safe_dump(INSTANCE_CONFIG, sort_keys=False))
    return home


def dagster_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Dagster processes: the instance, and the source resolved by the caller."""
    env = dict(os.environ)
    env["DAGSTER_HOME"] = str(ensure_instance(settings))
    env["SIGNALBOX_HOME"] = str(settings.home)
    if settings.config_path:
        env["SIGNALBOX_CONFIG"] = str(settings.config_path)
    env.update(extra or {})
    return env

"""What the warm run launcher's forkserver does once so that no run does it again: imported by
the forkserver (launcher.PRELOAD) and by nothing else.

A forked run inherits every module its forkserver imported, and nothing else. Much of what a
run needs is imported late on purpose (inside functions, so that the daemon and the CLI start
fast): Dagster's storage layer (SQLAlchemy and alembic, imported when the run opens the
instance: the biggest part), TA-Lib's abstract API, and the rooms the assets import in their
bodies (candles, indicators, strategy, exchanges, sidecar, fast lane, warehouse). Imported
here, once per forkserver (which the launcher rebuilds when the code changes), every run starts
with them; the definitions' repository and jobs are resolved here too (plain objects), and the
settings, personalities and indicator set are loaded into their caches (keyed by the files'
content or mtime, so an edited file is read again by the run that sees it).

Nothing here opens a file for writing, a socket or a thread: imports, the instance's
dagster.yaml read to learn which storage classes it names, and pure-Python resolution. A
module that fails to import here is skipped: the run that needs it imports it again and
reports the error where it belongs, in that run's log.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
from typing import Any

# Packages whose every module a run may import in a function body.
ROOMS = (
    "assets",
    "warehouse",
    "pipeline.candles",
    "pipeline.context",
    "pipeline.indicators",
    "pipeline.strategy",
    "pipeline.exchanges",
    "pipeline.fastlane",
    "pipeline.sidecar",
    "pipeline.quality",
    "pipeline.orderflow",
    "pipeline.backtest",
    "pipeline.bots",
)
# Single modules a run imports late, outside those rooms.
MODULES = (
    "talib.abstract",
    "tenacity",  # the exchanges' retry policy (with tornado, which it imports when present)
    "pipeline.markets",
    "pipeline.runtime.latency",
    "pipeline.runtime.partitions",
    "pipeline.runtime.processes",
    "pipeline.runtime.progress",
    # what a run's process imports to open the instance (DagsterInstance.from_ref)
    "dagster._core.instance.factory",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.root",
    "dagster._core.storage.migration.utils",
    "upath.implementations.local",
    "fsspec.implementations.local",
    # what it imports to start the run
    "dagster._core.execution.plan.active",
    "dagster._core.system_config.composite_descent",
    "dagster._core.utility_ops",
    "dagster._core.workspace.autodiscovery",
    "dagster._utils.temp_file",
    "dagster._utils.test.definitions",
)


def run_modules() -> list[str]:
    """The modules of ROOMS (found by walking their packages) and MODULES."""
    names: list[str] = []
    for room in ROOMS:
        with contextlib.suppress(Exception):
            pkg = importlib.import_module(room)
            names.append(room)
            names += [m.name for m in pkgutil.walk_packages(pkg.__path__, f"{room}.")]
    return names + list(MODULES)


def instance_modules() -> list[str]:
    """The modules of the classes this process's instance names (its storage, run
    coordinator, launcher, compute logs: SQLite or PostgreSQL alike), from its dagster.yaml."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return []
    from dagster._core.instance.ref import InstanceRef

    ref = InstanceRef.from_dir(home)
    return [v.module_name for v in ref._asdict().values() if hasattr(v, "module_name")]


def remember_alembic_scripts() -> None:
    """Opening the instance, Dagster checks each storage's schema revision against the head of
    its alembic scripts, and alembic reads every revision file to find it (~90 files, 3-4 times
    a run: ~0.1 s). The scripts are the installed Dagster's, fixed for the life of the
    forkserver: read them once, here, and hand forked runs the same ScriptDirectory."""
    from alembic.script import ScriptDirectory
    from dagster._core.storage.runs.sqlite import sqlite_run_storage
    from dagster._core.storage.sql import get_alembic_config

    made: dict[str | None, ScriptDirectory] = {}
    fresh = ScriptDirectory.from_config.__func__  # type: ignore[attr-defined]

    def from_config(cls: type[ScriptDirectory], config: Any) -> ScriptDirectory:
        where = config.get_main_option("script_location")
        if where not in made:
            made[where] = fresh(cls, config)
        return made[where]

    ScriptDirectory.from_config = classmethod(from_config)  # type: ignore[method-assign,assignment]
    config = get_alembic_config(sqlite_run_storage.__file__)  # Dagster's one script location
    ScriptDirectory.from_config(config).as_revision_number("head")


def warm() -> None:
    names = run_modules()
    with contextlib.suppress(Exception):
        names = instance_modules() + names
    for name in names:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    with contextlib.suppress(Exception):
        remember_alembic_scripts()
    with contextlib.suppress(Exception):
        from pipeline.orchestration.definitions import defs

        defs.get_repository_def().get_all_jobs()
    with contextlib.suppress(Exception):  # cached by file content / mtime: a change reloads
        from pipeline.config import load_settings
        from pipeline.indicators.spec import load_spec
        from pipeline.strategy.personality import load_personalities

        s = load_settings()
        load_personalities(s.personalities, s.timeframes)
        load_spec()


warm()

"""The warm run launcher's forkserver (pipeline/orchestration/launcher.py, warm.py): a run it
forks finds what it imports late (in function bodies) already imported, so no live run pays
for those imports again every minute."""

from __future__ import annotations

import ast
import multiprocessing
import sys
from multiprocessing import forkserver
from pathlib import Path

import yaml

from pipeline.config import REPO_ROOT


def _imported(queue) -> None:
    """In the forked process: what it inherited, and whether alembic's revision scripts
    (read to check the storage's schema when a run opens the instance) are read only once."""
    from alembic.script import ScriptDirectory
    from dagster._core.storage.runs.sqlite import sqlite_run_storage
    from dagster._core.storage.sql import get_alembic_config

    modules = sorted(sys.modules)
    cfg = get_alembic_config(sqlite_run_storage.__file__)
    queue.put((modules, ScriptDirectory.from_config(cfg) is ScriptDirectory.from_config(cfg)))


def _late_imports(path: Path) -> set[str]:
    """Absolute imports inside the function bodies of a module."""
    out: set[str] = set()
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    out |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    out.add(node.module)
    return out


def test_a_forked_run_finds_its_late_imports_done(tmp_path, monkeypatch):
    from pipeline.orchestration.instance import INSTANCE_CONFIG
    from pipeline.orchestration.launcher import PRELOAD

    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(INSTANCE_CONFIG))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))  # the forkserver reads its instance
    forkserver._forkserver._stop()  # one started by an earlier test had another environment
    try:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        queue = ctx.Queue()
        proc = ctx.Process(target=_imported, args=(queue,))
        proc.start()
        modules, scripts_read_once = queue.get(timeout=120)
        inherited = set(modules)
        proc.join()
    finally:
        forkserver._forkserver._stop()

    # the live job's assets (the daily backtest reports are not on the minute's path)
    files = ["assets/common.py", "assets/klines.py", "assets/timeframes.py", "assets/signals.py"]
    late = set().union(*(_late_imports(REPO_ROOT / f) for f in files))
    late |= _late_imports(REPO_ROOT / "pipeline" / "orchestration" / "resources.py")
    ours = {m for m in late if m.split(".")[0] in ("pipeline", "warehouse", "talib", "polars")}
    assert "pipeline.strategy.build" in ours  # the walk found the assets' late imports
    assert sorted(ours - inherited) == []
    # what the run imports to open its instance (SQLite here): SQLAlchemy and alembic with it
    assert {"dagster._core.storage.sqlite_storage", "sqlalchemy", "alembic"} <= inherited
    assert "great_expectations" not in inherited  # the daily checks' import stays theirs
    assert scripts_read_once

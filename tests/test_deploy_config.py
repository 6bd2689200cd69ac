"""The sketched deployment beyond one machine (deploy/, README "Beyond one machine") is real
configuration: Dagster's own validation accepts its dagster.yaml, its run launcher and run
coordinator are built from it, it keeps the single-writer rules of the one-machine instance,
it opens on a real PostgreSQL server, and its signalbox.yaml loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import REPO_ROOT, load_settings
from pipeline.orchestration.instance import INSTANCE_CONFIG

DEPLOY = REPO_ROOT / "deploy"


def _pg_env(monkeypatch: pytest.MonkeyPatch, port: int, db: str) -> None:
    for var, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(port),
        "DAGSTER_PG_USER": "postgres",
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": db,
        "SIGNALBOX_IMAGE": "signalbox:test",
    }.items():
        monkeypatch.setenv(var, value)


def _ref(base_dir: Path):
    """Dagster's InstanceRef of deploy/dagster.yaml: the file checked against Dagster's
    instance schema, as every Dagster process loading it would."""
    from dagster._core.instance.ref import InstanceRef

    return InstanceRef.from_dir(str(base_dir), config_dir=str(DEPLOY))


def test_the_sketched_instance_passes_dagsters_validation(tmp_path, monkeypatch):
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_docker import DockerRunLauncher
    from dagster_postgres import DagsterPostgresStorage

    _pg_env(monkeypatch, 5432, "signalbox")
    ref = _ref(tmp_path)
    launcher = ref.run_launcher  # built from its config, checked against its schema
    assert isinstance(launcher, DockerRunLauncher) and launcher.image == "signalbox:test"
    assert isinstance(ref.run_coordinator, QueuedRunCoordinator)
    storage = ref.storage_data
    assert storage is not None and storage.class_name == DagsterPostgresStorage.__name__
    schema = resolve_to_config_type(DagsterPostgresStorage.config_type())
    checked = process_config(schema, storage.config_dict)
    assert checked.success, checked.errors
    assert checked.value["postgres_db"]["port"] == 5432  # from the environment


def test_the_sketched_instance_keeps_the_single_writer_rules():
    sketch = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    assert sketch["concurrency"]["pools"] == INSTANCE_CONFIG["concurrency"]["pools"]
    live = INSTANCE_CONFIG["concurrency"]["runs"]["tag_concurrency_limits"][0]
    assert live in sketch["concurrency"]["runs"]["tag_concurrency_limits"]


def test_the_sketched_instance_opens_on_postgres(tmp_path, monkeypatch, postgres_server):
    import dagster as dg

    db = postgres_server.new_database().rsplit("/", 1)[1]
    _pg_env(monkeypatch, postgres_server.port, db)
    with dg.DagsterInstance.from_ref(_ref(tmp_path)) as inst:
        assert type(inst.run_storage).__name__ == "PostgresRunStorage"
        assert inst.get_runs() == []
        assert type(inst.run_launcher).__name__ == "DockerRunLauncher"


def test_the_sketched_signalbox_yaml_loads():
    s = load_settings(DEPLOY / "signalbox.yaml", env={})
    assert s.dagster.postgres and s.dagster.postgres_url.endswith("@postgres:5432/signalbox")
    assert s.home == Path("/srv/signalbox") and s.sidecar.tcp_port is not None

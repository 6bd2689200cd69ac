"""What the Dagster UI lists: named jobs for every kind of run, and live runs whose tags a
person can read (Dagster's own idioms: the loaded `Definitions`, `build_sensor_context`)."""

from __future__ import annotations

import datetime as dt
import json
import re

import dagster as dg
import pytest

from pipeline.runtime.backfill import BACKFILL_ASSETS
from tests.daemon import write_config

NOW = "2024-01-05T03:53:30Z"  # the replay exchange's clock


def test_every_run_kind_has_a_named_job():
    from pipeline.orchestration.definitions import defs

    repo = defs.get_repository_def()
    names = {j.name for j in repo.get_all_jobs() if not j.name.startswith("__ASSET_JOB")}
    assert names == {
        "live", "backfill", "quality", "backtest_reports", "paper_reconcile",
    }  # fmt: skip
    backfill = defs.resolve_job_def("backfill")
    keys = {k.to_user_string() for k in backfill.asset_layer.executable_asset_keys}
    assert keys == set(BACKFILL_ASSETS)  # what `signalbox backfill --assets` accepts
    assert backfill.partitions_def == defs.resolve_job_def("live").partitions_def  # daily, UTC
    assert backfill.description and "ONE run" in backfill.description


@pytest.fixture
def sensor_resources(tmp_path, replay_factory):
    """The live sensor's resources, for a replay exchange living at NOW, passed in-process."""
    from pipeline.orchestration.resources import resources

    ex = replay_factory(clock_start=NOW)
    cfg = write_config(tmp_path, history_days=0)
    endpoint = {
        "kind": "replay",
        "rest_url": ex.rest_url,
        "ws_url": ex.ws_url,
        "warehouse_id": "replay",
        "label": "replay seed=7",
    }
    return resources(config_path=str(cfg), endpoint=json.dumps(endpoint))


def _stored_up_to(instance: dg.DagsterInstance, last_open: str) -> None:
    """What a run that stored candles up to `last_open` records on the 1m asset."""
    meta = {"last_open_time": dg.MetadataValue.json({"bybit:BTCUSDT": last_open})}
    instance.report_runless_asset_event(
        dg.AssetMaterialization("klines_1m", partition="2024-01-05", metadata=meta)
    )


def test_a_live_run_request_carries_a_few_readable_tags(sensor_resources):
    from sensors.live import live_candles

    with dg.instance_for_test() as instance:
        _stored_up_to(instance, "2024-01-05T03:51:00+00:00")
        with dg.build_sensor_context(instance=instance, resources=sensor_resources) as ctx:
            result = live_candles(ctx)
    (req,) = result.run_requests
    assert req.partition_key == "2024-01-05"
    assert req.tags == {
        "signalbox/sensor": "live_candles",
        "signalbox/mode": "live",
        "signalbox/candles": "03:52",
        "signalbox/detected": "rest",  # no fast lane here: the exchange was asked
        "dagster/max_runtime": "900",
    }
    for value in req.tags.values():  # no epoch floats, no pids: words, times, small numbers
        assert not re.fullmatch(r"\d{5,}(\.\d+)?", value), value
    ops = req.run_config["ops"]  # what the run needs, where people do not read it as a label
    assert ops["klines_1m"]["config"] == {
        "start": "2024-01-05T03:52:00+00:00",
        "end": "2024-01-05T03:53:00+00:00",
    }
    assert ops["signals"]["config"] == {"exchange_now": "2024-01-05T03:53:00+00:00"}


def test_the_live_sensor_resumes_after_what_a_backfill_stored(sensor_resources):
    """A cursor from before a backfill (e.g. `up`'s catch-up) is not replayed: with nothing in
    flight the sensor resumes from the last stored candle. (The cursor names a symbol alone,
    as before venues: it is Bybit's.)"""
    from sensors.live import live_candles

    cursor = json.dumps({"symbols": {"BTCUSDT": "2024-01-05T01:00:00+00:00"}, "checked_at": 1.0})
    with dg.instance_for_test() as instance:
        _stored_up_to(instance, "2024-01-05T03:40:00+00:00")
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=sensor_resources)
        with ctx:
            result = live_candles(ctx)
    (req,) = result.run_requests
    window = req.run_config["ops"]["klines_1m"]["config"]
    assert window["start"] == "2024-01-05T03:41:00+00:00"
    assert req.tags["signalbox/candles"] == "03:41–03:52"
    assert req.tags["signalbox/mode"] == "catchup"
    handed = json.loads(result.cursor)["symbols"]["bybit:BTCUSDT"]
    assert dt.datetime.fromisoformat(handed) == dt.datetime(2024, 1, 5, 3, 52, tzinfo=dt.UTC)


def test_the_run_launcher_logs_the_worker_pid_as_an_event_not_a_tag():
    """pipeline/orchestration/launcher.py names the process it forked in the run's event log; the
    reaper and
    the run monitor find it there (before the run logs its own start)."""
    import os

    from dagster._core.events import EngineEventData

    from pipeline.orchestration.reaper import WORKER_PID, WORKER_SEEN_AT, worker
    from pipeline.runtime import pids

    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(dg.GraphDefinition("g").to_job(), run_id=None)
        assert worker(instance, run) is None
        seen = pids.started_at(os.getpid())
        meta = {WORKER_PID: os.getpid(), WORKER_SEEN_AT: seen}
        instance.report_engine_event("forked", run, EngineEventData(metadata=meta))
        w = worker(instance, instance.get_run_by_id(run.run_id))
        tags = instance.get_run_by_id(run.run_id).tags
    assert w is not None and w.pid == os.getpid() and w.alive()
    assert not any("pid" in k for k in tags)

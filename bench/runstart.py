"""Where a live run's fixed cost goes, in a minute instead of `bench live`'s twelve.

`python -m bench.runstart [N]`: N live-mode runs (plus one warm-up that ingests the day so far)
of the `live` job, each for the newest closed minute of the replay exchange, launched through
the real warm run launcher (pipeline/orchestration/launcher.py) back to back. It skips the
daemon's queue and the sensor (about 1 s of `bench live`'s run start: the 1 s dequeue
interval), so it measures what the launcher and the run's own process cost. Prints, per run
and as medians (seconds from the launch): the run's RUN_START, its first asset's code
starting, each step's duration, the run's end and its event count. Not part of `make bench`.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _one(instance, job, origin, start: dt.datetime, end: dt.datetime, home: Path) -> dict:
    from pipeline.orchestration import tags
    from pipeline.runtime.latency import read

    day = start.date().isoformat()
    run = instance.create_run_for_job(
        job_def=job,
        run_config={
            "ops": {
                "klines_1m": {"config": {"start": start.isoformat(), "end": end.isoformat()}},
                "signals": {"config": {"exchange_now": end.isoformat()}},
            }
        },
        tags={**tags.sensor_tags(tags.LIVE, "bench"), tags.PARTITION: day},
        job_code_origin=origin,
    )
    t0 = time.time()
    instance.launch_run(run.run_id, workspace=None)
    while not instance.get_run_by_id(run.run_id).is_finished:
        time.sleep(0.02)
    rec: dict = {"end": time.time() - t0}
    first: dict = {}
    events = instance.all_logs(run.run_id)
    for e in events:
        kind = e.dagster_event.event_type.name if e.dagster_event else "LOG"
        first.setdefault((kind, e.step_key), e.timestamp)
    lat = [x for x in read(home, "ingest") if x.get("run_id") == run.run_id]
    rec["run_start"] = first.get(("RUN_START", None), float("nan")) - t0
    rec["asset_code_starts"] = lat[0]["asset_started_at"] - t0 if lat else float("nan")
    for step in sorted({k[1] for k in first if k[1]}):
        a, b = first.get(("STEP_START", step)), first.get(("STEP_SUCCESS", step))
        if a and b:
            rec[f"step {step}"] = b - a
    rec["events"] = len(events)
    if not instance.get_run_by_id(run.run_id).is_success:
        raise RuntimeError(f"run {run.run_id} failed: see its events")
    return rec


def live_runs(n: int) -> list[dict]:
    """N live-mode runs of the `live` job (after one warm-up ingesting the day so far) through
    the real warm launcher against a wall-clock replay exchange: each run's record (`_one`)."""
    import dagster as dg
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from pipeline.config import REPO_ROOT
    from pipeline.replay import ReplayExchange
    from tests.daemon import Daemon, write_config

    saved = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp, ReplayExchange(seed=7) as ex:
        home = Path(tmp)
        env = Daemon(home, ex, write_config(home, history_days=0)).env  # as the daemon's
        os.environ.clear()
        os.environ.update(env)
        try:
            repo = ReconstructableRepository.for_module(
                "pipeline.orchestration.definitions", "defs", working_directory=str(REPO_ROOT)
            )
            recon = repo.get_reconstructable_job("live")
            job, origin = recon.get_definition(), recon.get_python_origin()
            rows = []
            with dg.DagsterInstance.get() as instance:
                for i in range(n + 1):
                    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
                    start = (
                        now.replace(hour=0, minute=0) if i == 0 else now - dt.timedelta(minutes=1)
                    )
                    rec = _one(instance, job, origin, start, now, home)
                    print("warm-up" if i == 0 else i, {k: round(v, 3) for k, v in rec.items()})
                    rows += [rec] if i else []
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return rows


def main(n: int) -> None:
    rows = live_runs(n)
    print(f"median of {len(rows)} runs, s from the launch:")
    for k in rows[0]:
        print(f"  {k:28s} {statistics.median(r[k] for r in rows):8.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)

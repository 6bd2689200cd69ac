"""`reap_dead_runs`: the daemon's watch for runs whose process is gone (the mechanism is in
pipeline/orchestration/reaper.py)."""

import dagster as dg

from pipeline.orchestration.reaper import reap


@dg.sensor(
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every few seconds, mark runs whose process is gone (killed, crashed) as failed "
    "and free the DuckDB pool slots they held, however they were launched (CLI, sensor, UI).",
)
def reap_dead_runs(context: dg.SensorEvaluationContext):
    notes = reap(context.instance, by="by the reap_dead_runs sensor")
    for note in notes:
        context.log.warning(note)
    return dg.SkipReason("; ".join(notes) or "no dead runs")

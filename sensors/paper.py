"""`paper_journals`: requests a `paper_trades` run whenever a paper bot's committed journal
grew (a few file reads per tick: each bot's state.json names its committed length)."""

import hashlib
import json

import dagster as dg

from pipeline.orchestration.resources import SettingsResource


@dg.sensor(
    asset_selection=["paper_trades"],
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every 15 s: when a paper bot's journal grew, ingest it into paper_trades and "
    "paper_equity. Cursor: each bot's committed journal length when last requested.",
)
def paper_journals(context: dg.SensorEvaluationContext, settings: SettingsResource):
    from pipeline.bots.ingest import committed_bytes

    s = settings.get()
    if not s.bots:
        return dg.SkipReason("no paper bots are configured (`bots:` in signalbox.yaml)")
    try:
        now = {b.name: committed_bytes(s.home, b.name) for b in s.bots}
    except ValueError as err:  # a state file being replaced or damaged: the next tick
        return dg.SkipReason(f"cannot read a bot's state: {err}")
    before = json.loads(context.cursor) if context.cursor else {}
    grown = sorted(n for n, size in now.items() if size and size != before.get(n))
    if not grown:
        return dg.SkipReason("no bot journaled anything new")
    cursor = json.dumps(now, sort_keys=True)
    context.update_cursor(cursor)
    key = hashlib.sha1(cursor.encode()).hexdigest()[:16]
    return dg.RunRequest(run_key=f"paper-{key}", tags={"signalbox/bots": ",".join(grown)})

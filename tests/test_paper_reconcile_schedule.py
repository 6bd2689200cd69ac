"""The paper_reconcile schedule (Dagster's idioms: `build_schedule_context`, the schedule's
own evaluation, then a real run of the job it requests): yesterday, once every bot has
processed the day's last bar and no live or repair run of the day is in flight; at 23:45
anyway. The run ingests the journals before it reconciles."""

from __future__ import annotations

import datetime as dt
import uuid

import dagster as dg

from tests.test_bots_reconcile import CFG, MARKET, home_with_bots
from tests.test_bots_trader import market

# execute_in_process's executor holds a `duckdb` slot for the step and the asset's write
# block claims one more (a home's watched executor does not hold the step's): two, not one
POOLS = {"concurrency": {"pools": {"default_limit": 2, "granularity": "op"}}}


def bot(name: str) -> dict:
    return {"name": name, "personality": "swing", "symbols": ["BTCUSDT"],
            "params": CFG.params, "emergency_stop": None}  # fmt: skip


def definitions(res: dict) -> dg.Definitions:
    """The schedule, the job it requests and that job's assets, on these resources."""
    from assets import paper
    from pipeline.orchestration.jobs import paper_reconcile_job
    from sensors.schedules import paper_reconcile

    return dg.Definitions(
        assets=[paper.paper_trades, paper.paper_vs_backtest],
        jobs=[paper_reconcile_job],
        schedules=[paper_reconcile],
        resources=res,
    )


_DEFS: dict[int, tuple[dict, dg.Definitions]] = {}  # the home's resources kept: ids unique


def tick(instance, res, day: dt.date, hour: int):
    """One evaluation of the schedule at `hour`:45 of the day after `day`. The repository is
    resolved once per home: resolving it again inside a test instance can find Dagster's
    definitions-state storage bound to an instance already gone (it failed so in a full run)."""
    _, defs = _DEFS.setdefault(id(res), (res, definitions(res)))
    at = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(hour, 45), dt.UTC)
    ctx = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=at,
        resources={"settings": res["settings"]},
        repository_def=defs.get_repository_def(),
    )
    return defs.get_schedule_def("paper_reconcile").evaluate_tick(ctx)


def test_yesterday_is_reconciled_once_the_bots_closed_it_after_the_journals_are_ingested(
    tmp_path,
):
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
    t0 = end - dt.timedelta(minutes=150)
    candles, sigs = market(152, every=7, t0=t0)  # to 00:02 of today: the day is closed
    # "behind" stopped at 23:30 (e.g. it crashed and has not been restarted)
    settings, res = home_with_bots(
        tmp_path, [bot("steady"), bot("behind")], {MARKET: (candles, sigs)}, t0, {"behind": 120}
    )
    with dg.instance_for_test(overrides=POOLS) as instance:
        got = tick(instance, res, day, 0)
        assert not got.run_requests and got.skip_message
        assert "behind (through" in got.skip_message and "steady" not in got.skip_message
        # a repair run of the day in flight: its signals may still change, even at 23:45
        repair = dg.DagsterRun(
            job_name="live", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED,
            tags={"dagster/partition": day.isoformat()},
        )  # fmt: skip
        instance.add_run(repair)
        got = tick(instance, res, day, 23)
        assert not got.run_requests and repair.run_id in str(got.skip_message)
        instance.report_run_failed(repair)  # ended

        (req,) = tick(instance, res, day, 23).run_requests  # the last tick: anyway
        assert req.partition_key == day.isoformat()
        assert req.run_key == f"paper-reconcile:{day}" and req.tags["signalbox/bots_behind"] == (
            "behind"
        )
        # the job it names, for real, on a warehouse that has not ingested any journal yet
        job = definitions(res).resolve_job_def(req.job_name or "paper_reconcile")
        run = job.execute_in_process(
            partition_key=req.partition_key, tags=req.tags, instance=instance
        )
        assert run.success
    done = [
        e.asset_key.to_user_string()
        for e in run.get_asset_materialization_events()
        if e.asset_key is not None
    ]
    assert done == ["paper_trades", "paper_vs_backtest"]  # ingested first, in the same run
    checks = {c.check_name: c.passed for c in run.get_asset_check_evaluations()}
    assert checks == {"journal_complete": True, "fills_have_orders": True, "reconciled": True}
    # (the reconciled check passed with "behind"'s last half hour explained as bot_down)
    meta = run.asset_materializations_for_node("paper_vs_backtest")[0].metadata
    bots = meta["bots"].value
    assert "| steady " in bots and "| behind " in bots
    for name in ("steady", "behind"):
        path = meta[f"{name}_report_path"].value
        assert meta[f"{name}_report"].value == settings.report_url(path)
    assert "bot_down" in meta["differences"].value


def test_without_bots_the_schedule_says_so(tmp_path):
    from pipeline.orchestration.resources import (
        ExchangeResource,
        SettingsResource,
        WarehouseResource,
    )
    from tests.daemon import write_config

    s_res = SettingsResource(config_path=str(write_config(tmp_path, top={"source": "replay"})))
    wh = WarehouseResource(exchange=ExchangeResource(settings=s_res), path=str(tmp_path / "w"))
    with dg.instance_for_test() as instance:
        got = tick(instance, {"settings": s_res, "warehouse": wh}, dt.date(2024, 1, 5), 0)
    assert not got.run_requests and "no paper bots" in str(got.skip_message)

"""`signalbox up` on a warm home materializes only what is missing (pipeline/runtime/catchup.py): a
real
warehouse filled by the real ingest from the replay exchange, what a real Dagster instance
recorded, and (once) the real `backfill` run it starts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pytest

from pipeline.runtime.catchup import plan_catchup
from tests.daemon import replay_env, write_config

NOW = dt.datetime(2024, 1, 5, 3, 53, 30, tzinfo=dt.UTC)  # the exchange's clock
M = dt.timedelta(minutes=1)


def _t(day: int, hh: int = 0, mm: int = 0) -> dt.datetime:
    return dt.datetime(2024, 1, day, hh, mm, tzinfo=dt.UTC)


class Home:
    """A home whose exchange lives at NOW and keeps 3 days of history (2 Jan → 5 Jan)."""

    def __init__(self, path: Path, replay, monkeypatch: pytest.MonkeyPatch, **top) -> None:
        from pipeline.config import load_settings
        from pipeline.exchanges.sources import home_source

        cfg = write_config(path, top, history_days=3)
        for k, v in {**replay_env(path, replay), "SIGNALBOX_CONFIG": str(cfg)}.items():
            monkeypatch.setenv(k, v)
        self.settings = load_settings()
        self.ep = home_source(self.settings)
        self.done: set[str] = set()  # days whose signals Dagster recorded

    def store(self, start: dt.datetime, end: dt.datetime) -> None:
        """Ingest [start, end) as the pipeline does, and record the days' signals as done."""
        from pipeline.exchanges.ingest import ingest

        ingest(self.settings, self.ep, start, end, closed_by=NOW.replace(second=0))
        day = start.date()
        while day <= (end - M).date():
            self.done.add(day.isoformat())
            day += dt.timedelta(days=1)

    def plan(self, done: set[str] | None = None):
        from pipeline.exchanges.sources import warehouse_for

        first = NOW.date() - dt.timedelta(days=3)
        with warehouse_for(self.settings, self.ep).writer() as con:
            return plan_catchup(
                con, self.settings.markets, first, NOW, self.done if done is None else done
            )

    def delete(self, start: dt.datetime, end: dt.datetime) -> None:
        from pipeline.exchanges.sources import warehouse_for

        with warehouse_for(self.settings, self.ep).writer() as con:
            con.execute(
                "DELETE FROM klines_1m WHERE open_time >= ? AND open_time < ?", [start, end]
            )


@pytest.fixture
def home(tmp_path, monkeypatch, replay_factory) -> Home:
    return Home(tmp_path, replay_factory(clock_start=NOW), monkeypatch)


def _runs(plan) -> list[tuple]:
    return [(r.first.day, r.last.day, r.ingest_from) for r in plan.runs]


def test_cold_home_backfills_the_whole_window(home):
    plan = home.plan()
    assert _runs(plan) == [(2, 5, None)]
    assert plan.describe() == "cold home: backfilling 2024-01-02 → 2024-01-05: 4 days never stored"


def test_current_home_goes_live_at_once(home):
    home.store(_t(2), _t(5, 3, 53))
    plan = home.plan()
    assert plan.runs == []
    assert plan.describe() == "warm home: last candle 03:52 UTC, everything current: going live"


def test_a_short_tail_is_left_to_the_live_sensor(home):
    home.store(_t(2), _t(5, 3, 42))  # the last candle opened at 03:41
    plan = home.plan()
    assert plan.runs == [] and plan.tail_from == _t(5, 3, 42)
    assert plan.describe() == (
        "warm home: last candle 03:41 UTC; catching up 11 minutes (the live sensor)"
    )  # 03:42 … 03:52: the candles closed since


def test_days_never_stored_are_one_run_that_ingests_only_from_the_last_candle(home):
    home.store(_t(2), _t(3, 17, 1))  # stopped at 17:00 on 3 Jan
    plan = home.plan()
    assert _runs(plan) == [(3, 5, _t(3, 17, 1))]
    assert plan.describe() == (
        "warm home: last candle 2024-01-03 17:00 UTC; backfilling 2024-01-03 17:01 → 2024-01-05: "
        "1d 10h 52m since the last candle, 2 days never stored"
    )


def test_a_day_with_minutes_missing_or_without_signals_is_done_again(home):
    home.store(_t(2), _t(5, 3, 53))
    home.delete(_t(3, 10), _t(3, 10, 30))
    plan = home.plan()
    assert _runs(plan) == [(3, 3, None)]
    assert plan.describe() == (
        "warm home: last candle 03:52 UTC; backfilling 2024-01-03: "
        "1 day incomplete (30 minutes missing)"
    )
    home.done.discard("2024-01-04")  # its run failed before the signals
    assert _runs(home.plan()) == [(3, 4, None)]
    home.done.discard("2024-01-05")  # the tail's own day: redone by whoever ingests the tail
    assert _runs(home.plan()) == [(3, 4, None)]


def test_a_symbol_never_stored_makes_the_home_cold(tmp_path, monkeypatch, replay_factory):
    home = Home(tmp_path, replay_factory(clock_start=NOW), monkeypatch)
    home.store(_t(2), _t(5, 3, 53))
    monkeypatch.setenv("SIGNALBOX_SYMBOLS", "BTCUSDT,ETHUSDT")
    home.settings = home.settings.with_overrides(exchanges={"bybit": ["BTCUSDT", "ETHUSDT"]})
    assert _runs(home.plan()) == [(2, 5, None)]


def test_catch_up_runs_only_the_missing_range_as_one_backfill_run(home, capfd):
    """The real thing: `up`'s catch-up on a home stopped at 17:00 on 3 Jan starts ONE run of
    the `backfill` job over 3 → 5 Jan whose ingest covers 17:01 on 3 Jan → now, no more."""
    from pipeline.orchestration.instance import ensure_instance
    from pipeline.runtime.partitions import ensure_recorded
    from pipeline.runtime.supervisor import catch_up

    home.store(_t(2), _t(3, 17, 1))
    ensure_recorded(home.settings, NOW.date(), 3)  # what `up` records before catching up
    with dg.DagsterInstance.from_config(str(ensure_instance(home.settings))) as instance:
        for day in sorted(home.done):  # what the run that stored these days recorded
            instance.report_runless_asset_event(dg.AssetMaterialization("signals", partition=day))
    assert catch_up(home.settings, home.ep, 3) == 0
    err = capfd.readouterr().err
    assert "warm home: last candle 2024-01-03 17:00 UTC; backfilling 2024-01-03 17:01" in err
    with dg.DagsterInstance.from_config(str(home.settings.dagster_home)) as instance:
        (run,) = instance.get_runs()
        klines = instance.fetch_materializations(dg.AssetKey("klines_1m"), limit=10).records
        signals = instance.get_materialized_partitions(dg.AssetKey("signals"))
    assert run.job_name == "backfill" and run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["dagster/asset_partition_range_start"] == "2024-01-03"
    assert run.tags["dagster/asset_partition_range_end"] == "2024-01-05"
    ((meta),) = [r.asset_materialization.metadata for r in klines if r.run_id == run.run_id][:1]
    assert meta["ingested_range"].value.startswith("2024-01-03 17:01→2024-01-05 03:5")
    assert signals == {"2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"}
    # and now the home is current: a second start has nothing to run
    assert home.plan(done=signals).runs == []
    # were Dagster's records gone (live runs are purged after two days), the warehouse still
    # shows the days the run computed; only 2 Jan, ingested alone above, would be done again
    assert _runs(home.plan(done=set())) == [(2, 2, None)]

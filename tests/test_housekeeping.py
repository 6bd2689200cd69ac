"""Housekeeping: purging old live runs, and finding the gaps the repair sensor mends."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from pipeline.markets import Market
from tests.test_warehouse import WHERE, klines
from warehouse import Replacement, Warehouse


def test_purge_deletes_only_finished_live_runs(tmp_path: Path):
    import dagster as dg

    from sensors.repair import purge_before

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:

        def add(tags: dict, status) -> str:
            run = instance.create_run_for_job(
                dg.GraphDefinition("noop").to_job(), tags=tags, status=status
            )
            return run.run_id

        sensor = {"signalbox/sensor": "live_candles", "signalbox/mode": "live"}
        live_done = add(sensor, dg.DagsterRunStatus.SUCCESS)
        live_failed = add({"signalbox/live": "1"}, dg.DagsterRunStatus.FAILURE)  # older tag
        live_running = add(sensor, dg.DagsterRunStatus.STARTED)
        backfill = add({"dagster/backfill": "x"}, dg.DagsterRunStatus.SUCCESS)
        report = add({}, dg.DagsterRunStatus.SUCCESS)
        # Nothing is old enough yet.
        assert purge_before(instance, dt.datetime.now(dt.UTC) - dt.timedelta(days=2)) == 0
        assert purge_before(instance, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)) == 2
        left = {r.run_id for r in instance.get_runs()}
        assert live_done not in left and live_failed not in left
        assert {live_running, backfill, report} <= left


def test_gap_scan_finds_lost_minutes_but_not_exchange_gaps(tmp_path: Path):
    """Two days in the warehouse: minutes the pipeline lost are found; a minute the exchange
    confirmed it has no candle for is not; nothing before the data or after its end is."""
    home = tmp_path / "home"
    wh = Warehouse(home / "warehouse" / "replay.duckdb")
    d0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    rows = klines(d0, 2)
    lost = [d0 + dt.timedelta(hours=5, minutes=m) for m in range(3)]  # day 1: 3 lost minutes
    exchange_gap = d0 + dt.timedelta(days=1, hours=2)  # day 2: a known exchange gap
    rows = rows.filter(~pl.col("open_time").is_in([*lost, exchange_gap]))
    ts = pl.Datetime("us", "UTC")
    gaps = pl.DataFrame(
        {
            "exchange": ["bybit"],
            "symbol": ["BTCUSDT"],
            "open_time": [exchange_gap],
            "checked_at": [exchange_gap],
        },
        schema={"exchange": pl.String, "symbol": pl.String, "open_time": ts, "checked_at": ts},
    )
    span = ("BTCUSDT", d0, d0 + dt.timedelta(days=2))
    wh.replace_many(
        [
            Replacement("klines_1m", rows, WHERE, span),
            Replacement("kline_gaps", gaps, WHERE, span),
        ]
    )
    from sensors.repair import unexplained_gaps

    assert unexplained_gaps(wh, [Market("bybit", "BTCUSDT")], 5) == {"2024-03-01": 3}

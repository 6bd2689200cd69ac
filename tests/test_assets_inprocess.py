"""The daily assets materialized in-process (`dg.materialize`) with test resources: the replay
exchange on loopback, a temporary home and warehouse, no Dagster daemon or CLI."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from assets import klines, signals, timeframes
from pipeline.orchestration.resources import resources
from tests.daemon import write_config
from tests.fx_replay import endpoint_json


@pytest.fixture(scope="module")
def day_materialized(tmp_path_factory, replay_session):
    """Yesterday (UTC, a whole day on the replay's wall clock) through klines → candles →
    indicators → signals, once for the module, and the resources it used."""
    replay, tmp_path = replay_session, tmp_path_factory.mktemp("inprocess")
    endpoint = endpoint_json(replay)
    cfg = write_config(tmp_path, top={"source": "replay"})
    res = resources(config_path=str(cfg), endpoint=endpoint)
    day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date()
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [klines.klines_1m, timeframes.candles, timeframes.indicators, signals.signals],
            partition_key=day.isoformat(),
            resources=res,
            instance=instance,
        )  # the assets with their blocking checks (the slow checks are separate definitions)
    return result, res, day


def test_a_day_flows_from_the_exchange_to_signals(day_materialized):
    result, res, day = day_materialized
    assert result.success
    wh = res["warehouse"].get()
    assert wh.path.parent.parent == res["settings"].get().home  # the test home, not the user's
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    end = start + dt.timedelta(days=1)
    symbols = res["settings"].get().markets
    n1m = wh.query(
        "SELECT count(*) AS n FROM klines_1m WHERE open_time >= ? AND open_time < ?",
        [start, end],
    )["n"][0]
    assert n1m == 1440 * len(symbols)  # the replay market has every minute
    per_tf = dict(
        wh.query(
            "SELECT timeframe, count(*) AS n FROM candles WHERE close_time > ? AND close_time <= ?"
            " GROUP BY timeframe",
            [start, end],
        ).iter_rows()
    )
    assert per_tf["1m"] == 1440 * len(symbols) and per_tf["1h"] == 24 * len(symbols)
    assert per_tf["37m"] >= 38 * len(symbols)  # buckets whose last minute falls in the day
    ind = wh.query(
        "SELECT count(*) AS n, count(rsi_14) AS rsi FROM indicators WHERE timeframe = '1m'"
        " AND close_time > ? AND close_time <= ?",
        [start, end],
    )
    # One day of history: NULL until the derived warm-up is inside the day, a value after.
    assert ind["n"][0] == 1440 * len(symbols) and ind["rsi"][0] > 1000 * len(symbols)
    sig = wh.query(
        "SELECT count(*) AS n FROM signals WHERE close_time > ? AND close_time <= ?", [start, end]
    )
    meta = result.asset_materializations_for_node("signals")[0].metadata
    assert meta["rows_written"].value == sig["n"][0]
    assert meta["source"].value == res["exchange"].source().label


def test_every_blocking_check_passed_on_the_day(day_materialized):
    result, _, _ = day_materialized
    evaluations = [
        e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ]
    names = {(ev.asset_key.to_user_string(), ev.check_name) for ev in evaluations}
    assert {
        ("klines_1m", "complete_minutes"),
        ("candles", "counts_match_1m"),
        ("indicators", "no_lookahead"),
        ("signals", "valid"),
    } <= names
    failed = [(ev.check_name, ev.description) for ev in evaluations if not ev.passed]
    assert not failed

"""The assets in mode=live take the tail path (pipeline/candles/tail.py): materialized
in-process (`dg.materialize`) against the replay exchange on loopback, a run ingesting one
minute rebuilds, writes and checks exactly the buckets that closed with it, not the day."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from assets import klines, signals, timeframes
from pipeline.candles.timeframes import bucket_end, bucket_start, parse_timeframes, to_ms
from pipeline.orchestration import tags
from pipeline.orchestration.resources import resources
from tests.daemon import write_config
from tests.fx_replay import endpoint_json

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
ASSETS = [klines.klines_1m, timeframes.candles, timeframes.indicators, signals.signals]


def _run(res, instance, day: dt.date, start: dt.datetime | None, end: dt.datetime, **tagged):
    config = {"end": end.isoformat(), **({"start": start.isoformat()} if start else {})}
    result = dg.materialize(
        ASSETS,
        partition_key=day.isoformat(),
        resources=res,
        instance=instance,
        run_config={"ops": {"klines_1m": {"config": config}}},
        tags=tagged,
    )
    assert result.success
    checks = [c for c in result.get_asset_check_evaluations()]
    failed = [(c.asset_key.path[-1], c.check_name, c.description) for c in checks if not c.passed]
    assert not failed, failed
    return {
        node: result.asset_materializations_for_node(node)[0].metadata
        for node in ("candles", "indicators", "signals")
    }


def test_a_live_run_writes_the_buckets_that_closed_and_nothing_else(tmp_path, replay_session):
    replay = replay_session
    endpoint = endpoint_json(replay)
    cfg = write_config(tmp_path, top={"source": "replay", "exchanges": {"bybit": SYMBOLS}})
    res = resources(config_path=str(cfg), endpoint=endpoint)
    s = res["settings"].get()
    day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date()
    d0 = dt.datetime.combine(day, dt.time(), dt.UTC)
    minute = d0 + dt.timedelta(minutes=44)  # 00:44: closes 1m, 3m, 5m and 15m (and 37m? grid)
    with dg.DagsterInstance.ephemeral() as instance:
        _run(res, instance, day, None, minute)  # the day so far, whole (a catch-up)
        live = _run(res, instance, day, minute, minute + dt.timedelta(minutes=1), **{
            tags.MODE: tags.LIVE
        })  # fmt: skip
        after = minute + dt.timedelta(minutes=1)  # a live run with no new minute: nothing
        idle = _run(res, instance, day, after, after, **{tags.MODE: tags.LIVE})
    close = to_ms(minute) + 60_000
    closed = [
        t.name
        for t in parse_timeframes(s.timeframes)
        if bucket_end(t, bucket_start(t, close - 1)) == close
    ]
    assert {"1m", "3m", "5m", "15m"} <= set(closed)
    assert live["candles"]["rows_written"].value == len(closed) * len(SYMBOLS)
    assert live["indicators"]["rows_written"].value == len(closed) * len(SYMBOLS)
    assert live["candles"]["klines_read"].value == 15 * len(SYMBOLS)  # the 15m bucket's minutes
    assert set(live["candles"]["rebuilt"].value["bybit"]) == set(closed)
    assert [idle[a]["rows_written"].value for a in idle] == [0, 0, 0]
    wh = res["warehouse"].get()
    kept = wh.query(
        "SELECT timeframe, count(*) AS n FROM candles WHERE close_time > ? AND close_time <= ?"
        " GROUP BY timeframe",
        [d0, minute + dt.timedelta(minutes=1)],
    )
    assert dict(kept.iter_rows())["1m"] == 45 * len(SYMBOLS)  # the day's other rows stay

"""A whole replayed day: the fast lane (its real process code and engine, the replay's REST and
WebSocket) computes every minute of it, the pipeline then builds the day's partition, and the
`fast_lane_parity` check finds every fast-lane signal among the pipeline's rows.

The replay clock runs the day in about a minute (1440x), so the stream skips minutes and the
lane fills them over REST: the gap path runs hundreds of times. Two days before it are
backfilled first, as `signalbox up` would have, so the lane starts from a final replica.
"""

from __future__ import annotations

import datetime as dt
import time

import dagster as dg
import pytest

from assets import klines, signals, timeframes
from pipeline.fastlane import journal
from pipeline.fastlane.engine import VenueLane
from pipeline.orchestration.resources import resources
from pipeline.runtime.fastlane import FastLane
from pipeline.runtime.fastvenue import Timing
from tests.daemon import write_config
from tests.fx_replay import endpoint_json

pytestmark = pytest.mark.slow

# Recent days: the assets' daily partitions start a week back (fixed when they are imported).
DAY = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=2)
MIDNIGHT = dt.datetime.combine(DAY, dt.time(), dt.UTC)
NEXT = MIDNIGHT + dt.timedelta(days=1)
SPEED = 1440.0  # exchange seconds per wall second: the day in a minute
ASSETS = [klines.klines_1m, timeframes.candles, timeframes.indicators, signals.signals]


def _parity(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    found = [e for e in result.get_asset_check_evaluations() if e.check_name == "fast_lane_parity"]
    assert len(found) == 1
    return found[0]


def test_the_fast_lane_agrees_with_the_pipeline_over_a_replayed_day(tmp_path, replay_factory):
    ex = replay_factory(clock_start=MIDNIGHT + dt.timedelta(seconds=30), ws_push_s=0.05)
    endpoint = endpoint_json(ex)
    cfg = write_config(tmp_path, top={"source": "replay"})
    res = resources(config_path=str(cfg), endpoint=endpoint)
    settings, ep = res["settings"].get(), res["exchange"].source()
    with dg.DagsterInstance.ephemeral() as instance:
        for day in (DAY - dt.timedelta(days=2), DAY - dt.timedelta(days=1)):
            done = dg.materialize(
                ASSETS, partition_key=day.isoformat(), resources=res, instance=instance
            )
            assert done.success

        ex.clock.set(speed=SPEED)
        # The watchdog's stall is in exchange seconds: at 1440x, 70 s would be 50 ms of wall.
        lane = FastLane(settings, ep, VenueLane, Timing(stall_s=6 * 3600, tick_s=1.0)).start()
        runner = lane.runners[0]
        deadline = time.monotonic() + 240
        try:
            while (runner.lane.expected("BTCUSDT") or MIDNIGHT) <= NEXT:  # through 23:59 + 1
                assert not lane.failed, f"the fast lane failed: {runner.failure}"
                assert time.monotonic() < deadline, (
                    f"the fast lane did not get through the day: at "
                    f"{runner.lane.expected('BTCUSDT')}, silent: {runner.lane.silent()}"
                )
                time.sleep(0.2)
        finally:
            lane.stop()
        fast = journal.read(settings.home, "bybit", DAY)
        assert journal.conflicts(settings.home, "bybit", DAY) == []
        assert {r["personality"] for r in fast} >= {"scalping"}  # real signals, not a handful
        assert len(fast) >= 20

        ex.clock.set(NEXT + dt.timedelta(minutes=5), speed=1.0)
        result = dg.materialize(
            ASSETS, partition_key=DAY.isoformat(), resources=res, instance=instance
        )
    assert result.success
    parity = _parity(result)
    meta = {k: v.value for k, v in parity.metadata.items()}
    assert parity.passed, f"{parity.description}\n{meta.get('differences', '')}"
    assert meta["compared"] == len(fast) and meta["pending"] == 0, meta

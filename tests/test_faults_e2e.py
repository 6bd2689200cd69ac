"""Faults the live path survives, with a real daemon: an exchange outage of minutes while
someone keeps the read replica open; and a candle the exchange revises after we stored it."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap

import pytest

from pipeline.runtime.latency import read as latency_log
from tests.daemon import Daemon, replay_env, replica_rows, wait_for, write_config
from tests.test_live_e2e import KLINES, MINUTE, assert_exact
from warehouse import connect


@pytest.mark.slow
def test_outage_of_minutes_with_the_replica_held_loses_nothing(tmp_path, replay_factory):
    # A minute every 10 s, so a three-minute outage takes 30 s of the test's time.
    ex = replay_factory(clock_start="2024-05-01T12:00:00Z", clock_speed=6.0)
    daemon = Daemon(tmp_path, ex, write_config(tmp_path, history_days=0)).start()
    replica = tmp_path / "warehouse" / "replay.replica.duckdb"
    holder = None
    try:
        wait_for(lambda: len(replica_rows(tmp_path, KLINES)) > 720, 300, "the first run", daemon)
        # Someone opens the replica read-write (as the DuckDB CLI does) and keeps it.
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""
            import duckdb, time
            con = duckdb.connect({str(replica)!r})
            print("holding", flush=True)
            time.sleep(600)
        """),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout.readline().strip() == "holding"
        # Every request fails for three exchange-minutes: 5xx, rate limits, dropped
        # connections, malformed pages, long delays.
        ex.set_faults(rate=1.0, duration_s=30)
        outage_end = ex.now() + dt.timedelta(minutes=3)
        wait_for(lambda: ex.now() > outage_end + 2 * MINUTE, 120, "the outage to pass")
        target = ex.now().replace(second=0, microsecond=0) - MINUTE
        wait_for(lambda: replica_rows(tmp_path, KLINES)[-1][0] >= target, 180, "recovery", daemon)
    finally:
        daemon.stop()
        if holder:
            holder.kill()
    injected = ex.stats()["faults"]
    assert sum(injected.values()) >= 4, injected  # every tick during the outage failed
    rows = replica_rows(tmp_path, KLINES)
    assert_exact(rows, dt.datetime(2024, 5, 1, tzinfo=dt.UTC), rows[-1][0])
    # Every run that wrote also passed its checks: nothing bad reached the table.
    assert all(r["checks_passed"] for r in latency_log(tmp_path, "ingest"))


def test_revised_candle_ends_with_the_exchange_final_values(tmp_path, replay):
    """The exchange revises a stored candle (same open_time, new values): the daily repair's
    full re-ingest of the partition stores the final values, and the timeframes follow."""
    env = replay_env(tmp_path, replay)
    cmd = [
        sys.executable,
        "-m",
        "pipeline.runtime.cli",
        "backfill",
        "--start",
        "2024-01-02",
        "--end",
        "2024-01-02",
    ]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0
    t = dt.datetime(2024, 1, 2, 10, 59, tzinfo=dt.UTC)
    sql = "SELECT close, high, volume FROM klines_1m WHERE open_time = ?"
    with connect(tmp_path / "warehouse" / "replay.duckdb", read_only=True) as con:
        before = con.execute(sql, [t]).fetchall()[0]
    revised = {"close": before[0] + 50.0, "high": max(before[1], before[0] + 60.0), "volume": 999.5}
    replay.revise("BTCUSDT", t, **revised)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with connect(tmp_path / "warehouse" / "replay.duckdb", read_only=True) as con:
        after = con.execute(sql, [t]).fetchall()[0]
        hour = con.execute(
            "SELECT close, volume FROM candles WHERE timeframe = '1h' AND symbol = 'BTCUSDT' "
            "AND open_time = ?",
            [t.replace(minute=0)],
        ).fetchall()[0]
        count = con.execute("SELECT count(*) FROM klines_1m").fetchall()[0][0]
    assert after == (revised["close"], revised["high"], revised["volume"])
    assert hour[0] == revised["close"]  # the 1h bucket's last minute is the revised one
    assert count == 1440  # replaced, not duplicated

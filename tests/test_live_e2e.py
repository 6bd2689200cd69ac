"""The live path end to end: a real dagster-daemon runs the live_candles sensor against the
replay exchange and writes every closed minute exactly once, through crashes and midnight."""

from __future__ import annotations

import datetime as dt

import pytest

from pipeline.runtime.latency import read as latency_log
from tests.daemon import Daemon, replica_rows, wait_for, write_config

pytestmark = pytest.mark.slow
MINUTE = dt.timedelta(minutes=1)
KLINES = "SELECT open_time, count(*) FROM klines_1m GROUP BY ALL ORDER BY 1"


def assert_exact(rows: list[tuple], first: dt.datetime, last: dt.datetime) -> None:
    """Every minute in [first, last] present exactly once, nothing outside."""
    times = [r[0] for r in rows]
    assert all(r[1] == 1 for r in rows)
    assert times[0] == first and times[-1] == last, (times[0], times[-1])
    assert len(times) == int((last - first) / MINUTE) + 1, "a minute is missing"


# The Dagster instance on its default SQLite files, and on a real PostgreSQL database
# (tests/fx_postgres.py; skipped when PostgreSQL is not installed).
@pytest.mark.parametrize("dagster_storage", ["sqlite", "postgres"], indirect=True)
def test_daemon_ingests_each_closed_minute_once(tmp_path, replay_factory, dagster_storage):
    # The exchange's clock runs 6x (a minute every 10 s): three closes in half a minute, still
    # slower than a live run takes, so each minute is its own run (bench/ has real time).
    replay = replay_factory(clock_speed=6.0)
    cfg = write_config(tmp_path, dagster_storage, history_days=0)
    daemon = Daemon(tmp_path, replay, cfg).start()
    try:
        started = replay.now()
        first_close = started.replace(second=0, microsecond=0) + MINUTE
        target = first_close + 2 * MINUTE  # two more minutes close after the first one
        wait_for(lambda: replay.now() > target + dt.timedelta(seconds=2), 240, "two minutes")

        def caught_up() -> bool:
            rows = replica_rows(tmp_path, KLINES)
            return bool(rows) and rows[-1][0] >= target - MINUTE

        wait_for(caught_up, 60, "the last closed minute in the warehouse", daemon)
    finally:
        daemon.stop()
    rows = replica_rows(tmp_path, KLINES)
    last = rows[-1][0]
    assert_exact(rows, rows[0][0], last)
    assert rows[0][0] <= first_close - MINUTE  # it started from the minute closed at start
    assert last >= target - MINUTE
    runs = latency_log(tmp_path, "ingest")
    # one run per close, or fewer when a loaded machine lets two closes meet in one run (the
    # rows above are exact either way); every live run was clean
    assert len(runs) >= 2 and all(r["checks_passed"] for r in runs)
    sqlite_runs = (tmp_path / "dagster" / "history" / "runs.db").exists()
    assert sqlite_runs == (not dagster_storage)  # the runs are where the storage says


def test_daemon_killed_across_midnight_catches_up_exactly(tmp_path, replay_factory):
    # The exchange lives at 23:57 on 28 Feb 2024 on a real-time clock, so the first run (the
    # day so far) ends before midnight however loaded the machine (at 6x it once ran to 00:05).
    ex = replay_factory(clock_start="2024-02-28T23:57:00Z")
    cfg = write_config(tmp_path, history_days=0)
    daemon = Daemon(tmp_path, ex, cfg).start()
    midnight = dt.datetime(2024, 2, 29, tzinfo=dt.UTC)
    try:
        wait_for(lambda: len(replica_rows(tmp_path, KLINES)) >= 2, 300, "live ingestion", daemon)
        daemon.kill()  # down from before midnight ...
        first = replica_rows(tmp_path, KLINES)[0][0]
        # While it is down, the exchange's clock jumps past midnight and runs on at 6x (a minute
        # every 10 s): no process of ours sees the minutes between, so none is waited out.
        ex.clock.set(midnight + 2 * MINUTE + dt.timedelta(seconds=5), speed=6.0)
        # a replay minute (10 s) for anything left of the killed daemon (a run worker) to write
        wait_for(lambda: ex.now() > midnight + 3 * MINUTE, 60, "the exchange to pass 00:03")
        assert replica_rows(tmp_path, KLINES)[-1][0] < midnight  # nothing arrived meanwhile
        daemon.start()  # ... to after it
        target = ex.now().replace(second=0, microsecond=0) - MINUTE

        def caught_up() -> bool:
            return replica_rows(tmp_path, KLINES)[-1][0] >= target

        wait_for(caught_up, 300, "the catch-up", daemon)  # a hang guard: a loaded machine is slow
    finally:
        daemon.stop()
    rows = replica_rows(tmp_path, KLINES)
    assert_exact(rows, first, rows[-1][0])
    days = {r[0].date() for r in rows}
    assert days == {dt.date(2024, 2, 28), dt.date(2024, 2, 29)}
    assert all(r["checks_passed"] for r in latency_log(tmp_path, "ingest"))

"""`signalbox backfill` and `signalbox sql` end to end: the real CLI, a real Dagster run
against a temporary instance, the real pybit client talking to the replay exchange."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from warehouse import connect

CLI = [sys.executable, "-m", "pipeline.cli"]


def run_cli(args: list[str], home: Path, replay=None, **env: str) -> subprocess.CompletedProcess:
    e = dict(os.environ, SIGNALBOX_HOME=str(home), SIGNALBOX_SOURCE="replay", **env)
    if replay is not None:
        e["SIGNALBOX_BYBIT_URL"] = replay.rest_url
        e["SIGNALBOX_BYBIT_WS"] = replay.ws_url
    return subprocess.run(CLI + args, env=e, capture_output=True, text=True, timeout=300)


def table(home: Path) -> list[tuple]:
    with connect(home / "warehouse" / "replay.duckdb", read_only=True) as con:
        return con.execute(
            "SELECT symbol, open_time, open, high, low, close, volume, turnover "
            "FROM bybit_klines_1m ORDER BY symbol, open_time"
        ).fetchall()


@pytest.fixture(scope="module")
def week(tmp_path_factory):
    """One backfill of 2024-01-01..07 for two symbols, shared by the tests below."""
    from pipeline.replay import ReplayExchange

    home = tmp_path_factory.mktemp("home")
    with ReplayExchange(seed=7) as ex:
        r = run_cli(["backfill", "--start", "2024-01-01", "--end", "2024-01-07",
                     "--symbols", "BTCUSDT,ETHUSDT"], home, ex)  # fmt: skip
        yield home, ex, r, table(home)


def test_backfill_writes_every_minute_of_every_day(week):
    home, _, r, rows = week
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(rows) == 2 * 7 * 1440
    per_symbol = {}
    for sym, *_ in rows:
        per_symbol[sym] = per_symbol.get(sym, 0) + 1
    assert per_symbol == {"BTCUSDT": 7 * 1440, "ETHUSDT": 7 * 1440}
    assert "100.0%" in r.stderr and "complete_minutes" in r.stderr  # progress and checks shown


def test_backfill_again_leaves_the_table_identical(week):
    home, ex, _, before = week
    r = run_cli(["backfill", "--start", "2024-01-01", "--end", "2024-01-07",
                 "--symbols", "BTCUSDT,ETHUSDT"], home, ex)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert table(home) == before


def test_backfill_with_ten_percent_faults_gives_the_identical_result(week, tmp_path):
    from pipeline.replay import ReplayExchange

    _, _, _, expected = week
    with ReplayExchange(seed=7, faults=0.10, long_delay_s=1.0) as flaky:
        r = run_cli(["backfill", "--start", "2024-01-01", "--end", "2024-01-07",
                     "--symbols", "BTCUSDT,ETHUSDT"], tmp_path, flaky,
                    SIGNALBOX_CONFIG=str(_fast_timeouts(tmp_path)))  # fmt: skip
        injected = sum(flaky.stats().get("faults", {}).values())
    assert r.returncode == 0, r.stderr[-3000:]
    assert injected > 0
    assert table(tmp_path) == expected


def test_sql_reads_the_replica(week):
    home, ex, _, _ = week
    r = run_cli(["sql", "SELECT symbol, count(*) AS n FROM bybit_klines_1m GROUP BY ALL ORDER BY 1"],
                home, ex)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "BTCUSDT" in r.stdout and "10080" in r.stdout
    r = run_cli(["sql", "SELECT nope FROM bybit_klines_1m"], home, ex)
    assert r.returncode != 0 and "nope" in r.stderr


def test_bad_dates_are_refused_with_a_reason(tmp_path):
    r = run_cli(["backfill", "--start", "2024-01-07", "--end", "2024-01-01"], tmp_path)
    assert r.returncode == 2 and "before --start" in r.stderr
    r = run_cli(["backfill", "--start", "2019-01-01", "--end", "2019-01-02"], tmp_path)
    assert r.returncode == 2 and "first partition" in r.stderr
    r = run_cli(["backfill", "--start", "2024-13-01", "--end", "2024-01-02"], tmp_path)
    assert r.returncode == 2 and "YYYY-MM-DD" in r.stderr


def _fast_timeouts(tmp_path: Path) -> Path:
    """The repo config with a short client timeout, so injected long delays retry quickly."""
    from pipeline.config import DEFAULT_CONFIG

    text = DEFAULT_CONFIG.read_text().replace("timeout_s: 10", "timeout_s: 0.8")
    p = tmp_path / "signalbox.yaml"
    p.write_text(text)
    return p

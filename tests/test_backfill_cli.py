"""`signalbox backfill` and `signalbox sql` end to end: the real CLI, a real Dagster run
against a temporary instance, the real pybit client talking to the replay exchange."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon import replay_env
from warehouse import connect

CLI = [sys.executable, "-m", "pipeline.runtime.cli"]
QUOTED = 'bob\'s "home" x'
WEEK = ["backfill", "--start", "2024-01-01", "--end", "2024-01-07", "--symbols", "BTCUSDT,ETHUSDT"]


def run_cli(args: list[str], home: Path, replay=None, **env: str) -> subprocess.CompletedProcess:
    e = {**replay_env(home, replay), **env}
    return subprocess.run(CLI + args, env=e, capture_output=True, text=True, timeout=300)


def table(home: Path) -> list[tuple]:
    with connect(home / "warehouse" / "replay.duckdb", read_only=True) as con:
        return con.execute(
            "SELECT symbol, open_time, open, high, low, close, volume, turnover "
            "FROM klines_1m ORDER BY symbol, open_time"
        ).fetchall()


@pytest.fixture(scope="module")
def week(tmp_path_factory):
    """One backfill of 2024-01-01..07 for two symbols, shared by the tests below, in a home
    whose path has both quotes and a space (no SQL may paste a path)."""
    from pipeline.replay import ReplayExchange

    home = tmp_path_factory.mktemp("home") / QUOTED
    home.mkdir()
    with ReplayExchange(seed=7) as ex:
        r = run_cli(
            WEEK,
            home,
            ex,
        )
        yield home, ex, r, table(home)


def test_backfill_writes_every_minute_of_every_day(week):
    _, _, r, rows = week
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(rows) == 2 * 7 * 1440
    per_symbol = {}
    for sym, *_ in rows:
        per_symbol[sym] = per_symbol.get(sym, 0) + 1
    assert per_symbol == {"BTCUSDT": 7 * 1440, "ETHUSDT": 7 * 1440}
    assert "100.0%" in r.stderr and "complete_minutes" in r.stderr  # progress and checks shown


def test_backfill_shows_progress_of_every_long_step(week):
    _, _, r, _ = week
    lines = r.stderr.splitlines()
    for unit in ("candle-minutes", "days", "timeframes", "personalities"):
        assert any("100.0%" in x and unit in x for x in lines), f"no {unit} progress"
    assert all(x.strip() for x in lines), "a blank line in the output"


def test_backfill_is_one_run_of_the_backfill_job(week):
    import dagster as dg

    home, _, _, _ = week
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = instance.get_runs()
        records = instance.fetch_materializations(dg.AssetKey("signals"), limit=100).records
    assert runs and {r.job_name for r in runs} == {"backfill"}  # (other tests backfill again)
    for run in runs:
        assert run.tags["dagster/asset_partition_range_start"] == "2024-01-01"
        assert run.tags["dagster/asset_partition_range_end"] == "2024-01-07"
        days = {m.partition_key for m in records if m.run_id == run.run_id}
        assert days == {f"2024-01-0{d}" for d in range(1, 8)}  # the whole range in ONE run


def test_backfill_again_leaves_the_table_identical(week):
    home, ex, _, before = week
    r = run_cli(
        WEEK,
        home,
        ex,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert table(home) == before


def test_backfill_with_ten_percent_faults_gives_the_identical_result(week, tmp_path):
    from pipeline.replay import ReplayExchange

    _, _, _, expected = week
    with ReplayExchange(seed=7, faults=0.10, long_delay_s=1.0) as flaky:
        r = run_cli(
            WEEK,
            tmp_path,
            flaky,
            SIGNALBOX_CONFIG=str(_fast_timeouts(tmp_path)),
        )
        injected = sum(flaky.stats().get("faults", {}).values())
    assert r.returncode == 0, r.stderr[-3000:]
    assert injected > 0
    assert table(tmp_path) == expected


def test_sql_reads_the_replica(week):
    home, ex, _, _ = week
    query = "SELECT symbol, count(*) AS n FROM klines_1m GROUP BY ALL ORDER BY 1"
    r = run_cli(["sql", query], home, ex)
    assert r.returncode == 0, r.stderr
    assert "BTCUSDT" in r.stdout and "10080" in r.stdout
    r = run_cli(["sql", "SELECT nope FROM klines_1m"], home, ex)
    assert r.returncode != 0 and "nope" in r.stderr


def test_bad_dates_are_refused_with_a_reason(tmp_path):
    r = run_cli(["backfill", "--start", "2024-01-07", "--end", "2024-01-01"], tmp_path)
    assert r.returncode == 2 and "before --start" in r.stderr
    cfg = tmp_path / "signalbox.yaml"
    cfg.write_text("start_date: 2023-01-01\n")
    r = run_cli(
        ["backfill", "--start", "2019-01-01", "--end", "2019-01-02"],
        tmp_path,
        SIGNALBOX_CONFIG=str(cfg),
    )
    assert r.returncode == 2 and "first partition 2023-01-01" in r.stderr
    assert "set start_date: 2019-01-01" in r.stderr
    r = run_cli(["backfill", "--start", "2024-13-01", "--end", "2024-01-02"], tmp_path)
    assert r.returncode == 2 and "YYYY-MM-DD" in r.stderr
    week = ["--start", "2024-01-01", "--end", "2024-01-02"]
    r = run_cli(["backfill", *week, "--assets", "candles,indicatrs"], tmp_path)
    assert r.returncode == 2 and "unknown asset 'indicatrs'" in r.stderr
    assert "klines_1m, candles, indicators, signals" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _fast_timeouts(tmp_path: Path) -> Path:
    """The repo config with a short client timeout, so injected long delays retry quickly."""
    from pipeline.config import DEFAULT_CONFIG

    text = DEFAULT_CONFIG.read_text().replace("timeout_s: 10", "timeout_s: 0.8")
    p = tmp_path / "signalbox.yaml"
    p.write_text(text)
    return p


def _frame(home: Path, sql: str, params: list | None = None):
    with connect(home / "warehouse" / "replay.duckdb", read_only=True) as con:
        return con.sql(sql, params=params).pl()


def test_backfill_builds_every_timeframe_exactly_as_one_pass_would(week):
    """The warehouse's candles equal a whole-history resample of the same 1m data, for the
    buckets the 7 partitions own."""
    import datetime as dt

    import polars as pl

    from pipeline.candles.resample import resample
    from pipeline.config import load_settings

    home, _, _, _ = week
    klines = _frame(home, "SELECT * FROM klines_1m ORDER BY symbol, open_time")
    stored = _frame(home, "SELECT * FROM candles ORDER BY timeframe, symbol, open_time")
    assert stored["exchange"].unique().to_list() == ["bybit"]
    stored = stored.drop("exchange")
    lo, hi = dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 1, 8, tzinfo=dt.UTC)
    expected = resample(klines, load_settings(env={}).timeframes, as_of=hi).filter(
        (pl.col("close_time") > lo) & (pl.col("close_time") <= hi)
    )
    key = ["timeframe", "symbol", "open_time"]
    assert stored.sort(key).equals(expected.select(stored.columns).sort(key))
    per_tf = dict(
        stored.filter(pl.col("symbol") == "BTCUSDT").group_by("timeframe").len().iter_rows()
    )
    assert per_tf["1h"] == 7 * 24 and per_tf["1d"] == 7 and per_tf["1w"] == 1  # Mon 1 Jan 2024
    assert "1M" not in per_tf  # January closes on 1 Feb: owned by a later partition


def test_exchange_intervals_match_our_timeframes(week):
    """Bybit serves 60, 240 and D klines; the replay exchange derives them from its own 1m.
    What we build from 1m must be what the exchange reports."""
    import datetime as dt

    import polars as pl

    from pipeline.exchanges.bybit import BybitClient

    home, ex, _, _ = week
    client = BybitClient(ex.rest_url)
    lo, hi = dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 1, 8, tzinfo=dt.UTC)
    cols = ["open_time", "open", "high", "low", "close", "volume"]
    for interval, tf in [("60", "1h"), ("240", "4h"), ("D", "1d")]:
        theirs = client.fetch_klines("BTCUSDT", lo, hi, interval=interval).select(cols)
        ours = _frame(
            home,
            "SELECT * FROM candles WHERE symbol = 'BTCUSDT' AND timeframe = ? ORDER BY open_time",
            [tf],
        ).select(cols)
        assert theirs.height == ours.height > 0, tf
        assert theirs.select(cols[:5]).equals(ours.select(cols[:5])), tf
        assert (theirs["volume"] - ours["volume"]).abs().max() < 1e-6, tf
    del pl


def test_indicators_cover_every_timeframe_with_nulls_only_in_warm_up(week):
    home, _, _, _ = week
    rows = _frame(
        home,
        "SELECT timeframe, count(*) AS n, count(ema_9) AS ema_9, count(rsi_14) AS rsi "
        "FROM indicators WHERE symbol = 'BTCUSDT' GROUP BY 1",
    )
    by_tf = {r["timeframe"]: r for r in rows.iter_rows(named=True)}
    assert by_tf["1m"]["n"] == 7 * 1440
    # Values appear once the derived warm-up is available: 70 bars for EMA 9, 263 for RSI.
    assert by_tf["1m"]["ema_9"] == 7 * 1440 - 70 and by_tf["1m"]["rsi"] == 7 * 1440 - 263
    assert by_tf["1d"]["rsi"] == 0  # 7 days are far from 263 daily bars: NULL, not a guess

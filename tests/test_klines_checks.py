"""The completeness check on 1m klines names every day with missing minutes, per symbol, split
into minutes the exchange confirmed absent and minutes lost, in its description (what the CLI
prints) and in its metadata (a table in the UI), bounded however long the range."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import polars as pl

from pipeline.candles.timeframes import DAY_MS, to_ms
from pipeline.quality.checks import MAX_DAY_RUNS, Markdown, complete_minutes
from pipeline.replay import synthetic
from pipeline.runtime.backfill import check_line
from tests.conftest import SEED
from tests.daemon import replay_env

D0 = dt.datetime(2021, 4, 19, tzinfo=dt.UTC)
CLI = [sys.executable, "-m", "pipeline.runtime.cli", "backfill"]
UTC = dt.UTC


def minutes(symbol: str, days: int, start: dt.datetime = D0) -> pl.DataFrame:
    ms = to_ms(start)
    return synthetic.frame(symbol, ms, ms + days * DAY_MS, seed=SEED)


def span(day: int, hour: int, n: int, start: dt.datetime = D0) -> list[dt.datetime]:
    t = start + dt.timedelta(days=day, hours=hour)
    return [t + dt.timedelta(minutes=i) for i in range(n)]


def without(frame: pl.DataFrame, drop: list[dt.datetime]) -> pl.DataFrame:
    return frame.filter(~pl.col("open_time").is_in(drop))


def gaps(symbol: str, times: list[dt.datetime]) -> pl.DataFrame:
    return pl.DataFrame(
        {"symbol": symbol, "open_time": times}, schema={"symbol": pl.String, "open_time": None}
    )


def test_every_day_with_missing_minutes_is_named() -> None:
    """60 lost minutes on day 2 and 3 on day 7: the first 50 minutes listed used to be all of
    day 2, and day 7 was nowhere."""
    first, second = span(1, 2, 60), span(6, 23, 3)
    frame = without(minutes("BTCUSDT", 10), first + second)
    out = complete_minutes(frame, ["BTCUSDT"], D0, D0 + dt.timedelta(days=10))
    assert not out.passed
    assert "BTCUSDT 2021-04-20 (60 min), 2021-04-25 (3 min)" in out.description
    table = out.metadata["missing_days"]
    assert isinstance(table, Markdown)
    assert (
        "| BTCUSDT | 2021-04-20 | 1 | 60 | 0 | 60 | 2021-04-20 02:00 | 2021-04-20 02:59 |" in table
    )
    assert "| BTCUSDT | 2021-04-25 | 1 | 3 | 0 | 3 | 2021-04-25 23:00 | 2021-04-25 23:02 |" in table
    assert out.metadata["missing"] == 63 and out.metadata["days_with_missing"] == 2


def test_exchange_gaps_and_lost_minutes_per_day_and_symbol() -> None:
    """Two real-looking maintenance gaps the exchange confirmed (pass), then two days the
    pipeline lost for ETHUSDT (fail): days of one kind merge into a range."""
    maintenance = span(1, 2, 150) + span(6, 4, 284)
    lost = span(7, 0, 1440) + span(8, 0, 1440)
    btc = without(minutes("BTCUSDT", 10), maintenance)
    eth = without(minutes("ETHUSDT", 10), maintenance + lost)
    end = D0 + dt.timedelta(days=10)
    out = complete_minutes(btc, ["BTCUSDT"], D0, end, gaps("BTCUSDT", maintenance))
    assert out.passed
    assert out.description.endswith("BTCUSDT 2021-04-20 (150 min), 2021-04-25 (284 min)")
    assert out.metadata["exchange_gaps"] == 434 and out.metadata["lost"] == 0
    both = pl.concat([btc, eth])
    known = pl.concat([gaps("BTCUSDT", maintenance), gaps("ETHUSDT", maintenance)])
    out = complete_minutes(both, ["BTCUSDT", "ETHUSDT"], D0, end, known)
    assert not out.passed
    assert out.description.startswith("2,880 of 3,748 minute(s) missing")
    assert (
        "ETHUSDT 2021-04-20 (150 min, exchange gap), 2021-04-25 (284 min, exchange gap),"
        " 2021-04-26..2021-04-27 (2,880 min, all lost)" in out.description
    )
    assert (
        "| ETHUSDT | 2021-04-26..2021-04-27 | 2 | 2880 | 0 | 2880 |" in out.metadata["missing_days"]
    )
    assert out.metadata["days_with_missing"] == 2 + 4


def test_a_long_range_stays_bounded_and_omits_no_day_silently() -> None:
    """A minute lost every other day for 400 days: 200 runs. The description names the first
    MAX_DAY_RUNS and says how many more the table holds; the table holds every one."""
    start = dt.datetime(2023, 1, 1, tzinfo=UTC)
    drop = [start + dt.timedelta(days=d, hours=12) for d in range(0, 400, 2)]
    ms = to_ms(start)
    frame = pl.DataFrame(
        {
            "symbol": "BTCUSDT",
            "open_time": pl.datetime_range(
                start, start + dt.timedelta(days=400, minutes=-1), "1m", eager=True
            ).dt.replace_time_zone("UTC"),
        }
    )
    frame = without(frame, drop)
    assert frame.height == 400 * 1440 - 200 and ms
    out = complete_minutes(frame, ["BTCUSDT"], start, start + dt.timedelta(days=400))
    assert out.description.count("(1 min)") == MAX_DAY_RUNS
    assert "and 188 more day(s) in 188 run(s), listed in the metadata table" in out.description
    assert len(out.description) < 600
    rows = [r for r in out.metadata["missing_days"].splitlines() if r.startswith("| BTCUSDT")]
    assert len(rows) == 200 and "2024-02-03" in rows[-1]


def test_the_cli_prints_a_check_description_whole() -> None:
    days = ", ".join(f"2021-04-{d:02d} ({d} min)" for d in range(1, 29))
    line = (
        "2026-12-02 21:11:01 +0000 - dagster - DEBUG - __ASSET_JOB - 2d0f - 16480 -"
        " klines_1m - ASSET_CHECK_EVALUATION - Asset check 'complete_minutes' on"
        f" 'klines_1m' did not pass. Description: '406 minute(s) missing: BTCUSDT {days}'"
    )
    text = check_line(line)
    assert text.startswith("  check: complete_minutes on klines_1m FAILED: 406 minute(s)")
    assert all(f"2021-04-{d:02d} ({d} min)" in text.replace("\n      ", " ") for d in range(1, 29))
    assert max(len(r) for r in text.splitlines()) <= 150


def test_a_backfill_shows_every_gap_day(tmp_path: Path) -> None:
    """The real path: a file with candles missing on days 1 and 3, served by the replay exchange
    (which confirms them absent), ingested by a real Dagster run of the klines asset; the
    CLI's output names both days."""
    from pipeline.replay import ReplayExchange

    day0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
    holes = span(0, 5, 7, day0) + span(2, 17, 2, day0)
    frame = without(minutes("BTCUSDT", 3, day0), holes).select(
        pl.col("open_time").dt.epoch("ms").alias("ts"), "open", "high", "low", "close", "volume"
    )
    data = tmp_path / "BTCUSDT_1m_gaps.parquet"
    frame.write_parquet(data)
    home = tmp_path / "home"
    config = tmp_path / "signalbox.yaml"
    config.write_text(f"replay: {{data: {data}}}\n")  # the home's source is this file
    with ReplayExchange(data=data) as ex:
        r = subprocess.run(
            [*CLI, "--start", "2024-01-01", "--end", "2024-01-03", "--assets", "klines_1m"],
            env={**replay_env(home, ex), "SIGNALBOX_CONFIG": str(config)},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert r.returncode == 0, r.stderr[-3000:]
    flat = r.stderr.replace("\n      ", " ")
    assert (
        "check: complete_minutes on klines_1m passed: 9 minute(s) missing, all confirmed"
        " absent at the exchange (signals on these windows are marked degraded):"
        " bybit:BTCUSDT 2024-01-01 (7 min), 2024-01-03 (2 min)" in flat
    ), r.stderr[-3000:]

"""The whole pipeline on real candles: every file in ../shared/data (read its README) served by
the replay exchange that `signalbox backfill` starts from `replay.data`, backfilled through
Dagster with every blocking check, must exit 0 with the file's candles and signals stored.

Real data finds what seeded data never shows: TA-Lib's rounding noise at the Stochastic's
bounds, first buckets of 37m/148m cut by the start of a range, real exchange gaps. To fit
the suite's time budget each file is backfilled over ten days from its first (partial) day,
the 2021-2025 regime file over 2021-04-18..26, in the middle of its first segment, around its
two real exchange maintenance gaps (2021-04-20 and 2021-04-25). The backfills run side by
side, each with its own home, exchange and Dagster instance.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from bench.common import SHARED_DATA as SHARED
from warehouse import connect

FILES = sorted(SHARED.glob("*.parquet")) if SHARED.is_dir() else []
GAP_DAYS = {"regime_segments": ["2021-04-20", "2021-04-25"]}
WINDOWS = {"regime_segments": (dt.date(2021, 4, 18), dt.date(2021, 4, 26))}
DAYS = 10

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not FILES, reason=f"no real candles at {SHARED}: CI has ../shared/data (see its README)"
    ),
]


@dataclass
class Backfill:
    path: Path
    home: Path
    first: dt.date
    last: dt.date
    rows: int  # the file's candles in [first, last]
    proc: subprocess.Popen
    stderr: str = ""


def _span(path: Path) -> tuple[dt.date, dt.date, int]:
    """Days to backfill (a window, else DAYS from the file's first) and the file's candles in
    them."""
    import polars as pl

    df = pl.read_parquet(path).with_columns(day=pl.from_epoch("ts", time_unit="ms").dt.date())
    window = next((w for k, w in WINDOWS.items() if k in path.name), None)
    first, last = window or (df["day"].min(), df["day"].min() + dt.timedelta(days=DAYS - 1))
    return first, last, df.filter(pl.col("day").is_between(first, last)).height


def _start(path: Path, root: Path) -> Backfill:
    first, last, rows = _span(path)
    home = root / path.stem / "home"
    home.mkdir(parents=True)
    cfg = home.parent / "signalbox.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "home": str(home),
                "source": "replay",
                "start_date": first.isoformat(),
                "replay": {"data": str(path)},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALBOX_")}
    args = [sys.executable, "-m", "pipeline.runtime.cli", "--config", str(cfg), "backfill"]
    args += ["--start", first.isoformat(), "--end", last.isoformat()]
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    return Backfill(path, home, first, last, rows, proc)


@pytest.fixture(scope="module")
def backfills(tmp_path_factory) -> dict[str, Backfill]:
    root = tmp_path_factory.mktemp("real")
    runs = {p.name: _start(p, root) for p in FILES}
    for run in runs.values():
        _, run.stderr = run.proc.communicate(timeout=900)
    return runs


def _warehouse(run: Backfill) -> Path:
    (path,) = [
        p for p in (run.home / "warehouse").glob("replay-*.duckdb") if ".replica" not in p.name
    ]
    return path


@pytest.mark.parametrize("name", [p.name for p in FILES])
def test_real_file_backfills_with_exit_0_and_signals(backfills, name):
    run = backfills[name]
    assert run.proc.returncode == 0, f"{name}:\n{run.stderr[-4000:]}"
    with connect(_warehouse(run), read_only=True) as con:
        (candles, sources) = con.execute(
            "SELECT count(*), list(DISTINCT source) FROM klines_1m"
        ).fetchone()
        signals = dict(
            con.execute("SELECT personality, count(*) FROM signals GROUP BY 1").fetchall()
        )
    assert candles == run.rows  # every real candle, and not one invented
    assert sources == [f"replay file={run.path.resolve()}"]
    assert signals.get("scalping", 0) > 0, signals
    assert "check: ranges on indicators passed" in run.stderr


@pytest.mark.parametrize("name", [p.name for p in FILES if "regime_segments" in p.name])
def test_real_exchange_gaps_name_every_day(backfills, name):
    run = backfills[name]
    assert run.proc.returncode == 0, run.stderr[-4000:]
    text = run.stderr[run.stderr.index("check: complete_minutes on klines_1m") :]
    check = text[: text.find("\n  check:")]  # the check's wrapped lines
    for day in GAP_DAYS["regime_segments"]:
        assert day in check, (day, check)
    assert "confirmed absent" in check

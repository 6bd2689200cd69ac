"""Real market data backfills cleanly: every real file in ../shared/data, served by the replay
exchange, goes through a real `signalbox backfill` (every asset and blocking check) with exit 0
and signals at the end. A window of days per file keeps it to about half a minute each: for
the 2021-25 segments, the April 2021 days with the exchange's two maintenance gaps."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.daemon import replay_env
from warehouse import connect

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = sorted(DATA.glob("*.parquet")) if DATA.is_dir() else []
# Days chosen per file (inclusive); any other file: its first 7 whole days.
WINDOWS = {
    "bybit_linear_BTCUSDT_1m_2025-05-29_2025-06-29.parquet": ("2025-06-01", "2025-06-07"),
    "binance_spot_BTCUSDT_1m_regime_segments_2021-2025.parquet": ("2021-04-18", "2021-04-26"),
}

pytestmark = pytest.mark.slow


def _window(path: Path) -> tuple[str, str]:
    if path.name in WINDOWS:
        return WINDOWS[path.name]
    first = pl.read_parquet(path, columns=["ts"])["ts"].min()
    day = dt.datetime.fromtimestamp(first / 1000, dt.UTC).date() + dt.timedelta(days=1)
    return day.isoformat(), (day + dt.timedelta(days=6)).isoformat()


@pytest.mark.parametrize("path", FILES or [None], ids=lambda p: p.name if p else "no-data")
def test_a_real_file_backfills_with_exit_0_and_gives_signals(
    path: Path | None, tmp_path: Path
) -> None:
    if path is None:
        pytest.skip(f"{DATA} is absent: real-data backfills need ../shared/data (see its README)")
    from pipeline.replay import ReplayExchange

    start, end = _window(path)
    config = tmp_path / "signalbox.yaml"
    config.write_text(f"symbols: [BTCUSDT]\nstart_date: {start}\n")
    home = tmp_path / "home"
    with ReplayExchange(data=path) as ex:
        r = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "backfill", "--start", start, "--end", end],
            env={**replay_env(home, ex), "SIGNALBOX_CONFIG": str(config)},
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "check: ranges on indicators passed" in r.stderr
    with connect(home / "warehouse" / "replay.duckdb", read_only=True) as con:
        (signals,) = con.execute("SELECT count(*) FROM signals").fetchone()
    assert signals > 0

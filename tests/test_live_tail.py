"""A live run's tail (pipeline/candles/tail.py) against the whole partition, on real candles.

A warehouse holds real BTCUSDT (and a second market with a shorter history) as a live home
does at 23:40; then live runs go minute by minute to 00:10 the next day through the tail path
(the very functions the assets call in mode=live): across midnight (1d and 4h closes), the 37m
and 148m buckets that span it (closing 00:08), and a minute skipped at 23:45 and filled late at
23:55 (its closed 5m/15m buckets and every bar after it change). Then both days are rebuilt
whole: candles, indicators and signals must be identical, bit for bit (floats compared exactly;
NULL equal to NULL), and a tail run must have read and written only what its minutes change.
"""

from __future__ import annotations

import datetime as dt
import functools
import shutil
from pathlib import Path

import polars as pl
import pytest

from pipeline.candles.tail import build_tail_candles, live_tail, write_tail_candles
from pipeline.config import Settings
from pipeline.indicators import load_spec
from pipeline.indicators.build import (
    build_indicators,
    indicator_runs,
    write_indicator_runs,
    write_indicators,
)
from pipeline.strategy.build import build_signals, write_signals
from pipeline.strategy.personality import load_personalities
from tests.test_fastlane_engine import FILE, OTHER, SYMBOL, VENUE, build, ingest, klines
from warehouse import Warehouse

DAY, HALF, MINUTE = dt.timedelta(days=1), dt.timedelta(hours=12), dt.timedelta(minutes=1)
CUT = dt.datetime(2025, 6, 14, 23, 40, tzinfo=dt.UTC)  # what the warehouse holds at first
END = dt.datetime(2025, 6, 15, 0, 10, tzinfo=dt.UTC)  # live runs ingest [CUT, END)
D0 = dt.datetime(2025, 6, 14, tzinfo=dt.UTC)  # CUT's day
FIRST = D0 - DAY  # BTCUSDT's history; the other market's: from CUT - 12 h
LATE, FILLED = CUT + 5 * MINUTE, CUT + 15 * MINUTE  # 23:45, skipped; ingested at 23:55
TABLES = {
    "candles": ["exchange", "symbol", "timeframe", "open_time"],
    "indicators": ["exchange", "symbol", "timeframe", "open_time"],
    "signals": ["exchange", "symbol", "personality", "close_time"],
}

pytestmark = pytest.mark.skipif(
    not FILE.is_file(), reason=f"no real candles at {FILE}: CI has ../shared/data (see its README)"
)


@functools.cache
def _stretch(symbol: str) -> pl.DataFrame:
    return klines(FIRST, END, symbol)


def minutes(lo: dt.datetime, hi: dt.datetime, symbol: str = SYMBOL) -> pl.DataFrame:
    """`klines` of [lo, hi) from one read of the file per market."""
    frame = _stretch(symbol)
    return frame.filter((pl.col("open_time") >= lo) & (pl.col("open_time") < hi))


def live_run(wh: Warehouse, s: Settings, start: dt.datetime, end: dt.datetime) -> dict[str, int]:
    """One live run's minutes [start, end) ingested for both markets, then the tail of their
    partition as the assets build it in mode=live; rows written per table, and 1m rows read."""
    for sym in (SYMBOL, OTHER):
        ingest(wh, minutes(start, end, sym), start, end, sym)
    p_start = dt.datetime.combine(start.date(), dt.time(), dt.UTC)
    p_end = p_start + DAY
    ps = load_personalities(s.personalities, s.timeframes)
    with wh.session() as w:  # one connection for the run's steps, as the assets hold it
        tail = live_tail(w, VENUE, p_start, p_end, start, s.timeframes)
        built = build_tail_candles(w, tail, s.timeframes)
        out = {
            "candles": write_tail_candles(w, [built], [tail]),
            "klines_read": built.klines.height,
        }
        ind, found = build_indicators(
            w, VENUE, [p_start.date()], p_end, s.timeframes, load_spec(), ranges=tail.ranges
        )
        assert all(o.passed for listed in found.values() for o in listed), found
        out["indicators"] = write_indicators(w, {VENUE: ind}, p_start, p_end, {VENUE: tail.ranges})
        sig = build_signals(w, VENUE, start.date(), start.date(), ps, ranges=tail.ranges)
        out["signals"] = write_signals(w, [sig], p_start, p_end, [p.name for p in ps])
    out["ranges"] = tail.ranges  # type: ignore[assignment]
    return out


def table(wh: Warehouse, name: str) -> pl.DataFrame:
    keys = ", ".join(TABLES[name])
    return wh.query(f"SELECT * FROM {name} WHERE close_time > ? ORDER BY {keys}", [FIRST])


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The warehouse as a live home holds it at CUT (23:40), built once."""
    path = tmp_path_factory.mktemp("tail") / "w.duckdb"
    wh = Warehouse(path, replica_sync=False)
    ingest(wh, klines(FIRST, CUT), FIRST, CUT)
    ingest(wh, klines(CUT - HALF, CUT, OTHER), CUT - HALF, CUT, OTHER)
    build(wh, Settings(), FIRST, D0 + DAY)
    return path


@pytest.fixture(scope="module")
def lived(template: Path, tmp_path_factory) -> tuple[Warehouse, list[dict]]:
    """A copy of the template after the live runs of [CUT, END), with what each run did."""
    tmp = tmp_path_factory.mktemp("lived")
    shutil.copy(template, tmp / template.name)
    wh, s = Warehouse(tmp / template.name, replica_sync=False), Settings()
    runs = []
    t = CUT
    while t < END:
        if t != LATE:
            runs.append({"at": t, **live_run(wh, s, t, t + MINUTE)})
        if t == FILLED:  # the skipped minute arrives: a live run of that minute alone
            runs.append({"at": LATE, **live_run(wh, s, LATE, LATE + MINUTE)})
        t += MINUTE
    return wh, runs


def test_live_runs_minute_by_minute_equal_the_whole_partition(lived):
    wh, runs = lived
    got = {name: table(wh, name) for name in TABLES}
    assert sum(r["signals"] for r in runs) > 0  # the tail wrote signals (not a vacuous match)
    build(wh, Settings(), D0, D0 + 2 * DAY)  # both days, whole
    for name in TABLES:
        want = table(wh, name)
        assert got[name].height == want.height > 0, name
        assert got[name].columns == want.columns, name
        # exact: the same functions over the same inputs (NaN/NULL compare equal here)
        assert got[name].equals(want), (name, _first_difference(got[name], want, TABLES[name]))
    late = wh.query(
        "SELECT timeframe, n_1m, complete FROM candles WHERE symbol = ? AND open_time = ?"
        " AND timeframe IN ('1m', '5m', '15m') ORDER BY timeframe",
        [SYMBOL, LATE],
    )
    assert late.rows() == [("15m", 15, True), ("1m", 1, True), ("5m", 5, True)]


def test_a_live_run_rebuilds_only_what_its_minutes_change(lived):
    _, runs = lived
    by_at = {}
    for r in runs:
        by_at.setdefault(r["at"], []).append(r)
    plain = by_at[CUT + 3 * MINUTE][0]  # 23:43: its 1m bar alone
    assert plain["ranges"] == {"1m": (CUT + 3 * MINUTE, CUT + 4 * MINUTE)}
    assert plain["candles"] == plain["indicators"] == 2  # two markets
    assert plain["klines_read"] == 2
    closing = by_at[CUT + 4 * MINUTE][0]  # 23:44 closes 1m, 3m, 5m and 15m
    assert closing["ranges"] == {
        "1m": (CUT + 4 * MINUTE, LATE),
        "3m": (CUT + 2 * MINUTE, LATE),
        "5m": (CUT, LATE),
        "15m": (CUT - 10 * MINUTE, LATE),
    }
    assert closing["candles"] == closing["indicators"] == 2 * 4
    assert closing["klines_read"] == 2 * 15  # the 15m bucket's minutes, not the day
    after = by_at[LATE + MINUTE][0]  # 23:46, after the unknown 23:45: from 23:45 on
    assert after["ranges"] == {"1m": (LATE, LATE + 2 * MINUTE)}
    assert after["candles"] == 2  # 23:45 has no bar yet
    midnight = by_at[END.replace(minute=7)][0]  # 00:07 closes 1m, 37m and 148m
    assert set(midnight["ranges"]) == {"1m", "37m", "148m"}
    assert midnight["candles"] == 2 * 3
    assert midnight["klines_read"] == 2 * 148  # the 148m bucket spanning midnight, whole
    late = by_at[LATE][-1]  # the late fill at 23:55: every bar from 23:45 on again, no more
    assert late["ranges"] == {
        "1m": (LATE, FILLED + MINUTE),
        "3m": (LATE, FILLED + MINUTE),
        "5m": (LATE, FILLED + MINUTE),
    }
    assert late["candles"] == 2 * (11 + 3 + 2)


def test_indicators_written_run_by_run_equal_one_pass(template: Path, tmp_path: Path):
    """A backfill's indicators in runs of about `most` rows, each committed as it is made
    (`write_indicator_runs`, what the asset does for whole days), equal one pass written at
    once (the template's, `build_indicators` + `write_indicators`): same rows, same values,
    same check outcomes, and more than one run."""
    shutil.copy(template, tmp_path / template.name)
    wh, s, spec = Warehouse(tmp_path / template.name, replica_sync=False), Settings(), load_spec()
    days, end = [FIRST.date(), D0.date()], D0 + DAY
    want = table(wh, "indicators")
    _, once = build_indicators(wh, VENUE, days, end, s.timeframes, spec)
    found: dict[str, list] = {}
    sizes: list[int] = []
    runs = indicator_runs(wh, VENUE, days, end, s.timeframes, spec, outcomes=found, most=2000)
    counted = (sizes.append(r.height) or r for r in runs)
    assert write_indicator_runs(wh, {VENUE: counted}, FIRST, end, spec.columns) == want.height
    assert len(sizes) > 2 and sum(sizes) == want.height
    got = table(wh, "indicators")
    assert got.equals(want), _first_difference(got, want, TABLES["indicators"])
    assert found == once and all(o.passed for listed in found.values() for o in listed)


def _first_difference(a: pl.DataFrame, b: pl.DataFrame, keys: list[str]) -> str:
    """The first row (by key) where two tables differ, for the assertion's message."""
    if a.height != b.height:
        gone = b.join(a, on=keys, how="anti").head(3).select(keys).rows()
        extra = a.join(b, on=keys, how="anti").head(3).select(keys).rows()
        return f"rows only in the whole rebuild {gone}, only in the live tail {extra}"
    for i, (ra, rb) in enumerate(
        zip(a.iter_rows(named=True), b.iter_rows(named=True), strict=True)
    ):
        diff = {k: (ra[k], rb[k]) for k in ra if ra[k] != rb[k] and ra[k] == ra[k]}
        if diff:
            return f"row {i} {[ra[k] for k in keys]}: {diff}"
    return "no difference found row by row"

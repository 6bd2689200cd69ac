"""Two venues side by side in one warehouse: the same symbol name on Bybit and Hyperliquid,
with different prices, built through the domain functions the assets run (candles, indicators,
signals per venue) on a real DuckDB file. Re-running one venue's partition leaves every row of
the other byte-identical."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from pipeline.candles.build import build_candles, write_candles
from pipeline.config import Settings
from pipeline.exchanges.ingest import VENUE_WHERE
from pipeline.indicators import load_spec
from pipeline.indicators.build import build_indicators, write_indicators
from pipeline.replay import synthetic
from pipeline.strategy.build import build_signals, write_signals
from pipeline.strategy.personality import load_personalities
from tests.conftest import SEED
from warehouse import Replacement, Warehouse

DAY = dt.timedelta(days=1)
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
DAYS = 2
TIMEFRAMES = ["1m", "5m", "15m", "1h"]
PERSONALITIES = ["scalping"]
# (symbol of the synthetic series, price factor): same name BTC, different markets
VENUES = {"bybit": ("BTCUSDT", 1.0), "hyperliquid": ("ETHUSDT", 1.0)}
TABLES = {
    "klines_1m": "symbol, open_time",
    "kline_gaps": "symbol, open_time",
    "candles": "symbol, timeframe, open_time",
    "indicators": "symbol, timeframe, open_time",
    "signals": "symbol, personality, timeframe, close_time",
}


def store_1m(wh: Warehouse, venue: str, series: str, factor: float) -> None:
    """A venue's 1m candles for BTC, replaced as ingest replaces them (one venue's range)."""
    lo, hi = START, START + DAYS * DAY
    frame = synthetic.frame(series, int(lo.timestamp() * 1000), int(hi.timestamp() * 1000), SEED)
    prices = [pl.col(c) * factor for c in ("open", "high", "low", "close")]
    now = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    frame = frame.with_columns(
        *prices,
        symbol=pl.lit("BTC"),
        exchange=pl.lit(venue),
        source=pl.lit("test"),
        ingested_at=pl.lit(now, dtype=pl.Datetime("us", "UTC")),
    )
    where = VENUE_WHERE.format(marks="?")
    gaps = frame.head(0).select("exchange", "symbol", "open_time", checked_at="ingested_at")
    wh.replace_many(
        [
            Replacement("klines_1m", frame, where, (venue, "BTC", lo, hi)),
            Replacement("kline_gaps", gaps, where, (venue, "BTC", lo, hi)),
        ]
    )


def build(wh: Warehouse, venue: str, first: dt.datetime = START, days: int = DAYS) -> None:
    """Candles, indicators and signals of every day, for one venue (what the assets run)."""
    spec = load_spec()
    personalities = load_personalities(PERSONALITIES, TIMEFRAMES)
    names = [p.name for p in personalities]
    for i in range(days):
        start, end = first + i * DAY, first + (i + 1) * DAY
        write_candles(wh, [build_candles(wh, venue, start, end, TIMEFRAMES)], start, end)
        ind, checks = build_indicators(wh, venue, [start.date()], end, TIMEFRAMES, spec)
        failed = [o.description for found in checks.values() for o in found if not o.passed]
        assert checks and not failed, failed
        write_indicators(wh, {venue: ind}, start, end)
        sig = build_signals(wh, venue, start.date(), start.date(), personalities)
        write_signals(wh, [sig], start, end, names)


def rows(wh: Warehouse, venue: str) -> dict[str, pl.DataFrame]:
    return {
        t: wh.query(f"SELECT * FROM {t} WHERE exchange = ? ORDER BY {key}", [venue])
        for t, key in TABLES.items()
    }


def test_two_venues_share_a_warehouse_without_disturbing_each_other(tmp_path: Path):
    assert set(PERSONALITIES) <= set(Settings().personalities)
    wh = Warehouse(tmp_path / "w.duckdb", replica_sync=False)
    for venue, (series, factor) in VENUES.items():
        store_1m(wh, venue, series, factor)
        build(wh, venue)
    bybit, hyper = rows(wh, "bybit"), rows(wh, "hyperliquid")
    for t in ("klines_1m", "candles", "indicators"):
        assert bybit[t].height == hyper[t].height > 0, t
    assert bybit["signals"].height > 0 and hyper["signals"].height > 0
    # the same name, different markets: nothing mixed between them
    assert (bybit["candles"]["close"] - hyper["candles"]["close"]).abs().min() > 1.0
    assert set(bybit["indicators"]["symbol"]) == set(hyper["indicators"]["symbol"]) == {"BTC"}

    # Bybit re-ingested with other prices and rebuilt: Hyperliquid's rows stay byte-identical.
    store_1m(wh, "bybit", "BTCUSDT", 1.01)
    build(wh, "bybit")
    again = rows(wh, "hyperliquid")
    for t, frame in hyper.items():
        assert again[t].equals(frame), t
    rebuilt = rows(wh, "bybit")
    ratio = rebuilt["candles"]["close"] / bybit["candles"]["close"]
    assert (ratio - 1.01).abs().max() < 1e-9  # and Bybit's did change (tolerance: float noise)


def test_both_venues_backfill_through_the_replay_into_one_warehouse(
    tmp_path: Path, monkeypatch, replay_factory
):
    """The real ingest from the replay exchange's two faces (Bybit REST, Hyperliquid /info) into
    one warehouse; re-ingesting and rebuilding Bybit leaves Hyperliquid's rows untouched."""
    from pipeline.exchanges.ingest import ingest
    from pipeline.exchanges.sources import warehouse_for
    from pipeline.markets import Market
    from tests.test_catchup import NOW, Home

    markets = {"bybit": ["BTCUSDT"], "hyperliquid": ["BTC"]}
    home = Home(tmp_path, replay_factory(clock_start=NOW), monkeypatch, exchanges=markets)
    day = dt.datetime(2024, 1, 3, tzinfo=dt.UTC)
    summary = ingest(home.settings, home.ep, day, day + DAY)
    both = [Market("bybit", "BTCUSDT"), Market("hyperliquid", "BTC")]
    assert summary.rows_by_market == dict.fromkeys(both, 1440)
    wh = warehouse_for(home.settings, home.ep)
    for venue in markets:
        build(wh, venue, day, 1)
    hyper = rows(wh, "hyperliquid")
    assert hyper["klines_1m"].height == 1440 and hyper["candles"].height > 1440
    ingest(home.settings, home.ep, day, day + DAY, markets=both[:1])  # Bybit again, alone
    build(wh, "bybit", day, 1)
    again = rows(wh, "hyperliquid")
    for t, frame in hyper.items():
        assert again[t].equals(frame), t


def test_a_span_of_days_gives_the_rows_of_its_days_each_checked_on_its_own(tmp_path: Path):
    """A backfill's indicators over a span of days equal those built day by day, and each
    day x timeframe is checked against exactly the candles it was computed from."""
    wh = Warehouse(tmp_path / "w.duckdb", replica_sync=False)
    store_1m(wh, "bybit", "BTCUSDT", 1.0)
    end = START + DAYS * DAY
    write_candles(wh, [build_candles(wh, "bybit", START, end, TIMEFRAMES)], START, end)
    days = [(START + i * DAY).date() for i in range(DAYS)]
    spec = load_spec()
    whole, checks = build_indicators(wh, "bybit", days, end, TIMEFRAMES, spec)
    assert {n: len(o) for n, o in checks.items()} == dict.fromkeys(checks, DAYS * len(TIMEFRAMES))
    failed = [o.description for v in checks.values() for o in v if not o.passed]
    assert not failed, failed
    one_by_one = []
    for day in days:
        built, _ = build_indicators(
            wh, "bybit", [day], dt.datetime.combine(day + DAY, dt.time(), dt.UTC), TIMEFRAMES, spec
        )
        assert built is not None
        one_by_one.append(built)
    daily = pl.concat(one_by_one).sort("timeframe", "symbol", "open_time")
    assert whole is not None and whole.sort("timeframe", "symbol", "open_time").equals(daily)


def test_signals_of_a_span_built_over_runs_of_days_equal_one_pass(tmp_path: Path, monkeypatch):
    """A backfill's signals are read and computed over runs of days (up to SIGNAL_ROWS candle
    rows each, from each run's own signal_input_window): the rows are those of one pass over
    the span, in the same order; the lookahead check sees the last run (the last day's
    frames) and the fast lane's parity the newest bar of every run."""
    from pipeline.fastlane import parity
    from pipeline.strategy import build as sig_build
    from pipeline.strategy.build import merge_windows
    from pipeline.strategy.checks import check_signals_lookahead
    from pipeline.strategy.signals import signal_input_window

    wh = Warehouse(tmp_path / "w.duckdb", replica_sync=False)
    store_1m(wh, "bybit", "BTCUSDT", 1.0)
    end = START + DAYS * DAY
    write_candles(wh, [build_candles(wh, "bybit", START, end, TIMEFRAMES)], START, end)
    days = [(START + i * DAY).date() for i in range(DAYS)]
    ind, _ = build_indicators(wh, "bybit", days, end, TIMEFRAMES, load_spec())
    write_indicators(wh, {"bybit": ind}, START, end)
    ps = load_personalities(["scalping", "swing", "vote"], TIMEFRAMES)
    whole = build_signals(wh, "bybit", days[0], days[-1], ps)
    reads = []
    real_read = sig_build.read_frames
    monkeypatch.setattr(sig_build, "read_frames", lambda *a: reads.append(a[2]) or real_read(*a))
    monkeypatch.setattr(sig_build, "SIGNAL_ROWS", 1)  # a run a day
    runs = build_signals(wh, "bybit", days[0], days[-1], ps)
    # one read per run, of its own day's input windows (those a daily partition reads)
    assert reads == [merge_windows([signal_input_window(d, p) for p in ps]) for d in days]
    assert reads[1]["1m"][0] > START + DAY / 2 > reads[0]["1m"][0]
    assert whole.by_personality["scalping"].height > 0
    for p in ps:
        assert whole.by_personality[p.name].equals(runs.by_personality[p.name]), p.name
    assert whole.rows().equals(runs.rows())
    assert parity.reached("bybit", runs.reached()) == parity.reached("bybit", whole.reached())
    for p in ps:
        want = check_signals_lookahead(whole.frames, p, sample=12, day=days[-1])
        assert want.passed and check_signals_lookahead(runs.frames, p, 12, day=days[-1]) == want

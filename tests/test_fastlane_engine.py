"""The fast lane's engine against the pipeline on real candles (../shared/data, Bybit BTCUSDT).

A warehouse is backfilled through the domain functions the assets run (candles, indicators,
signals) up to 22:00 of a day, as a live home would hold it then; a VenueLane bootstraps from
its replica and is fed the next 22 hours minute by minute (across midnight); then the pipeline
ingests those minutes and rebuilds both days, and its `signals` rows for the fed bars must be
exactly the lane's (all four shipped personalities fire in that span; `vote`, which reads
market context the lane does not have, comes from the pipeline only). Then the feed's rules:
duplicates, revisions, gaps and absent minutes.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import polars as pl
import pytest

from bench.common import SHARED_DATA
from pipeline.candles.build import build_candles, write_candles
from pipeline.config import Settings
from pipeline.exchanges.ingest import VENUE_WHERE
from pipeline.exchanges.protocol import ClosedCandle
from pipeline.fastlane.engine import DUPLICATE, GAP, REVISED, SILENT, USED, VenueLane
from pipeline.indicators import load_spec
from pipeline.indicators.build import build_indicators, write_indicators
from pipeline.strategy.build import build_signals, write_signals
from pipeline.strategy.personality import load_personalities
from warehouse import Replacement, Warehouse

FILE = SHARED_DATA / "bybit_linear_BTCUSDT_1m_2025-05-29_2025-06-29.parquet"
SYMBOL, VENUE = "BTCUSDT", "bybit"
# A second market beside it: the same candles scaled, stored from three days before CUT only
# (its early bars incomplete, its indicators partly NULL: another history in the same lane).
OTHER, OTHER_SCALE = "ETHUSDT", 0.0271
FIRST = dt.datetime(2025, 5, 29, tzinfo=dt.UTC)  # the file starts 19:00
CUT = dt.datetime(2025, 6, 14, 22, 0, tzinfo=dt.UTC)  # what the warehouse holds at bootstrap
END = dt.datetime(2025, 6, 15, 20, 0, tzinfo=dt.UTC)  # the lane is fed [CUT, END)
DAY = dt.timedelta(days=1)
MINUTE = dt.timedelta(minutes=1)
CONFIDENCE_TOL = 1e-9

pytestmark = pytest.mark.skipif(
    not FILE.is_file(), reason=f"no real candles at {FILE}: CI has ../shared/data (see its README)"
)


def klines(lo: dt.datetime, hi: dt.datetime, symbol: str = SYMBOL) -> pl.DataFrame:
    """The file's candles with open_time in [lo, hi), as an exchange client returns them."""
    ts = pl.Datetime("us", "UTC")
    k = OTHER_SCALE if symbol == OTHER else 1.0
    return (
        pl.read_parquet(FILE)
        .select(
            pl.lit(symbol).alias("symbol"),
            (pl.col("ts") * 1000).cast(ts).alias("open_time"),
            ((pl.col("ts") + 60_000) * 1000).cast(ts).alias("close_time"),
            *[(pl.col(c) * k).round(2) for c in ("open", "high", "low", "close")],
            (pl.col("volume") / k).round(3),
            pl.lit(None, pl.Float64).alias("turnover"),  # the file has none, as Bybit's REST
        )
        .filter((pl.col("open_time") >= lo) & (pl.col("open_time") < hi))
    )


def ingest(
    wh: Warehouse, frame: pl.DataFrame, lo: dt.datetime, hi: dt.datetime, symbol: str = SYMBOL
) -> None:
    """Replace [lo, hi) of the venue's 1m candles and confirmed gaps, as `ingest` does."""
    now = dt.datetime(2025, 7, 1, tzinfo=dt.UTC)
    frame = frame.with_columns(
        exchange=pl.lit(VENUE),
        source=pl.lit("test"),
        ingested_at=pl.lit(now, pl.Datetime("us", "UTC")),
    )
    gaps = frame.head(0).select("exchange", "symbol", "open_time", checked_at="ingested_at")
    where, params = VENUE_WHERE.format(marks="?"), (VENUE, symbol, lo, hi)
    wh.replace_many(
        [
            Replacement("klines_1m", frame, where, params),
            Replacement("kline_gaps", gaps, where, params),
        ]
    )


def build(wh: Warehouse, s: Settings, start: dt.datetime, end: dt.datetime) -> None:
    """Candles, indicators and signals of the days in [start, end) in one pass (a backfill)."""
    days = [(start + i * DAY).date() for i in range((end - start) // DAY)]
    ps = load_personalities(s.personalities, s.timeframes)
    write_candles(wh, [build_candles(wh, VENUE, start, end, s.timeframes)], start, end)
    ind, _ = build_indicators(
        wh, VENUE, days, end, s.timeframes, load_spec(), checked=lambda tf: False
    )
    write_indicators(wh, {VENUE: ind}, start, end)
    sig = build_signals(wh, VENUE, days[0], days[-1], ps)
    write_signals(wh, [sig], start, end, [p.name for p in ps])


def candle(row: dict, **change: float) -> ClosedCandle:
    values = {k: row[k] for k in ("open", "high", "low", "close", "volume", "turnover")}
    return ClosedCandle(row["symbol"], row["open_time"], **{**values, **change})


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The warehouse (and its replica) as a live home holds it at CUT; built once."""
    path = tmp_path_factory.mktemp("fastlane") / "w.duckdb"
    wh = Warehouse(path)
    ingest(wh, klines(FIRST, CUT), FIRST, CUT)
    ingest(wh, klines(CUT - 3 * DAY, CUT, OTHER), CUT - 3 * DAY, CUT, OTHER)
    build(wh, Settings(), FIRST, CUT.replace(hour=0) + DAY)
    return path


@pytest.fixture
def wh(template: Path, tmp_path: Path) -> Warehouse:
    """A copy of the template for one test to change."""
    for p in template.parent.glob("*.duckdb"):
        shutil.copy(p, tmp_path / p.name)
    return Warehouse(tmp_path / template.name)


@pytest.fixture(scope="module")
def fed() -> list[dict]:
    return list(klines(CUT, END).iter_rows(named=True))


@pytest.mark.parametrize("batch", [1, 5], ids=["feed", "feed_many"])
def test_signals_fed_minute_by_minute_equal_the_pipelines_rows(wh, batch):
    """`feed` one candle at a time, and `feed_many` in batches of five (both symbols' minute
    evaluated together; a symbol's next minute in the same batch too)."""
    s, both = Settings(), [SYMBOL, OTHER]
    lane = VenueLane(s, VENUE, both)
    assert lane.bootstrap(wh) == {SYMBOL: CUT, OTHER: CUT}
    minutes = pl.concat([klines(CUT, END, sym) for sym in both]).sort("open_time", "symbol")
    rows = [candle(row) for row in minutes.iter_rows(named=True)]
    got = []
    for i in range(0, len(rows), batch):
        outs = [lane.feed(rows[i])] if batch == 1 else lane.feed_many(rows[i : i + batch])
        assert len(outs) == len(rows[i : i + batch])
        for c, out in zip(rows[i : i + batch], outs, strict=True):
            assert out.status == USED, out
            assert {r["symbol"] for r in out.signals} <= {c.symbol}
            assert {r["close_time"] for r in out.signals} <= {c.open_time + MINUTE}
        got += [r for out in outs for r in out.signals]
    assert lane.expected(SYMBOL) == lane.expected(OTHER) == END and not lane.silent()

    # the pipeline on the final data: the rest of the day ingested, both days rebuilt
    day_end = END.replace(hour=0) + DAY
    for sym in both:
        ingest(wh, klines(CUT, day_end, sym), CUT, day_end, sym)
    build(wh, s, CUT.replace(hour=0), day_end)
    want = wh.query(
        "SELECT * EXCLUDE (snapshot) FROM signals WHERE exchange = ? AND close_time > ?"
        " AND close_time <= ? ORDER BY close_time, personality",
        [VENUE, CUT, END],
    )
    fired = want.filter(pl.col("symbol") == SYMBOL)["personality"]
    assert set(fired) == set(s.personalities)  # every personality fired
    assert set(lane.plan.silent) == {"vote"}  # it reads order flow and funding
    want = want.filter(pl.col("personality").is_in([p.name for p in lane.plan.personalities]))
    assert set(want["symbol"]) == set(both)
    for sym in both:
        assert_same_bars(lane, wh, sym)

    def key(r: dict) -> tuple:
        return (r["exchange"], r["symbol"], r["personality"], r["timeframe"], r["close_time"])

    mine = {key(r): r for r in got}
    theirs = {key(r): r for r in want.iter_rows(named=True)}
    assert len(mine) == len(got)  # one row per key
    assert sorted(mine) == sorted(theirs)
    for k, w in theirs.items():
        g = mine[k]
        assert (g["action"], g["quality"], g["open_time"]) == (
            w["action"],
            w["quality"],
            w["open_time"],
        ), k
        assert abs(g["confidence"] - w["confidence"]) <= CONFIDENCE_TOL, k
        assert list(g["reasons"]) == list(w["reasons"]), k
        assert g["price"] == w["price"], k


def assert_same_bars(lane: VenueLane, wh: Warehouse, symbol: str) -> None:
    """The lane's bars of every timeframe it keeps, fed ones and those of the day before
    midnight, equal the pipeline's stored candles and indicators bit for bit (NULL as NaN)."""
    for tf in lane.plan.names:
        mine = lane.bars(symbol, tf).filter(pl.col("close_time") > CUT.replace(hour=0))
        cols = [c for c in mine.columns if c not in ("open_time", "close_time")]
        stored = wh.query(
            "SELECT c.open_time, c.close_time, "
            + ", ".join(f'CAST("{c}" AS DOUBLE) AS "{c}"' for c in cols)
            + " FROM candles c LEFT JOIN indicators i USING (exchange, symbol, timeframe,"
            " open_time) WHERE exchange = ? AND symbol = ? AND timeframe = ? AND c.close_time > ?"
            " AND c.close_time <= ? ORDER BY c.open_time",
            [VENUE, symbol, tf, CUT.replace(hour=0), END],
        ).fill_null(float("nan"))
        assert mine.height == stored.height > 0, (symbol, tf)
        assert mine.equals(stored.select(mine.columns)), (symbol, tf)  # NaN equals NaN here


def test_a_duplicate_is_ignored_and_an_older_candle_already_stored_too(wh, fed):
    lane = VenueLane(Settings(), VENUE, [SYMBOL])
    lane.bootstrap(wh)
    assert lane.feed(candle(fed[0])).status == USED
    assert lane.feed(candle(fed[0])).status == DUPLICATE
    stored = klines(CUT - 5 * MINUTE, CUT).row(0, named=True)  # from the replica
    assert lane.feed(candle(stored)).status == DUPLICATE
    assert lane.expected(SYMBOL) == CUT + MINUTE and not lane.silent()
    assert lane.feed(candle(fed[1])).status == USED


def test_a_batch_gives_each_candle_the_fate_feed_would(wh, fed):
    lane = VenueLane(Settings(), VENUE, [SYMBOL, OTHER])
    lane.bootstrap(wh)
    other = [candle(r) for r in klines(CUT, CUT + 3 * MINUTE, OTHER).iter_rows(named=True)]
    batch = [candle(fed[0]), other[2], candle(fed[0]), candle(fed[1]), other[0], candle(fed[1])]
    outs = lane.feed_many(batch)
    assert [o.status for o in outs] == [USED, GAP, DUPLICATE, USED, USED, DUPLICATE]
    assert outs[1].missing == (CUT, CUT + 2 * MINUTE)
    assert lane.expected(SYMBOL) == CUT + 2 * MINUTE and lane.expected(OTHER) == CUT + MINUTE
    revised = candle(fed[1], close=fed[1]["close"] + 0.1)
    outs = lane.feed_many([other[1], revised, candle(fed[2])])
    assert [o.status for o in outs] == [USED, REVISED, SILENT]
    assert list(lane.silent()) == [SYMBOL] and lane.expected(OTHER) == CUT + 2 * MINUTE


def test_a_revision_silences_the_symbol_until_bootstrap_loads_past_it(wh, fed):
    lane = VenueLane(Settings(), VENUE, [SYMBOL])
    lane.bootstrap(wh)
    for row in fed[:3]:
        assert lane.feed(candle(row)).status == USED
    revised = candle(fed[1], close=fed[1]["close"] + 0.1)
    assert lane.feed(revised).status == REVISED
    assert lane.expected(SYMBOL) is None
    assert "revised 2025-06-14 22:01" in lane.silent()[SYMBOL]
    out = lane.feed(candle(fed[3]))
    assert out.status == SILENT and not out.signals
    # the replica has not ingested the revised minute yet: still silent
    assert lane.bootstrap(wh) == {SYMBOL: None}
    assert lane.feed(candle(fed[3])).status == SILENT
    # once the pipeline holds it, bootstrap brings the symbol back after the stored minutes
    ingest(wh, klines(CUT, CUT + 3 * MINUTE), CUT, CUT + 3 * MINUTE)
    assert lane.bootstrap(wh) == {SYMBOL: CUT + 3 * MINUTE}
    assert not lane.silent()
    assert lane.feed(candle(fed[3])).status == USED


def test_a_gap_names_the_missing_minutes_and_uses_nothing(wh, fed):
    lane = VenueLane(Settings(), VENUE, [SYMBOL])
    lane.bootstrap(wh)
    out = lane.feed(candle(fed[3]))
    assert out.status == GAP and not out.signals
    assert out.missing == (CUT, CUT + 3 * MINUTE)
    assert lane.expected(SYMBOL) == CUT  # nothing used
    for row in fed[:4]:  # the missing minutes fetched and fed first, then the candle again
        assert lane.feed(candle(row)).status == USED
    assert lane.expected(SYMBOL) == CUT + 4 * MINUTE


def test_minutes_the_venue_has_no_candle_for_silence_the_symbol(wh, fed):
    lane = VenueLane(Settings(), VENUE, [SYMBOL])
    lane.bootstrap(wh)
    lane.absent(SYMBOL, CUT, CUT + 2 * MINUTE)
    assert lane.expected(SYMBOL) is None and SYMBOL in lane.silent()
    assert lane.feed(candle(fed[2])).status == SILENT
    assert lane.bootstrap(wh) == {SYMBOL: None}  # the replica has not recorded them yet
    assert lane.feed(candle(fed[2])).status == SILENT


def test_bootstrap_waits_for_the_day_before_to_be_final_in_the_replica(wh):
    from pipeline.candles.timeframes import OWNED

    d0 = CUT.replace(hour=0)
    wh.replace("indicators", pl.DataFrame(), OWNED, (VENUE, d0 - DAY, d0))  # run not done yet
    lane = VenueLane(Settings(), VENUE, [SYMBOL])
    assert lane.bootstrap(wh) == {SYMBOL: None}
    assert "has not finished that day" in lane.silent()[SYMBOL]
    build(wh, Settings(), d0 - DAY, d0)
    assert lane.bootstrap(wh) == {SYMBOL: CUT}


def test_bootstrap_waits_for_minutes_the_pipeline_may_still_fill(wh):
    lo, hole = CUT - dt.timedelta(hours=1), CUT - 30 * MINUTE
    rows = klines(lo, CUT)
    ingest(wh, rows.filter(pl.col("open_time") != hole), lo, CUT)  # lost, not confirmed absent
    lane = VenueLane(Settings(), VENUE, [SYMBOL])
    assert lane.bootstrap(wh) == {SYMBOL: None}
    assert "lacks 1 minute(s)" in lane.silent()[SYMBOL]
    ingest(wh, rows, lo, CUT)  # repaired
    assert lane.bootstrap(wh) == {SYMBOL: CUT}


def test_bootstrap_before_the_pipeline_wrote_anything_leaves_the_symbols_silent(tmp_path):
    lane = VenueLane(Settings(), VENUE, [SYMBOL])
    wh = Warehouse(tmp_path / "w.duckdb")
    assert lane.bootstrap(wh) == {SYMBOL: None}  # no warehouse at all
    assert "cannot be read" in lane.silent()[SYMBOL]
    ingest(wh, klines(CUT - DAY, CUT), CUT - DAY, CUT)  # 1m candles, nothing built yet
    assert lane.bootstrap(wh) == {SYMBOL: None}
    assert "has not finished that day" in lane.silent()[SYMBOL]


def test_a_personality_reading_market_context_is_left_to_the_pipeline(caplog):
    """The lane has no order flow or funding: it never evaluates such a personality, and says
    why once per process however many lanes it runs."""
    from pipeline.fastlane import plan

    plan._SAID.clear()
    with caplog.at_level("INFO", logger="signalbox.fast"):
        lanes = [VenueLane(Settings(), venue, [SYMBOL]) for venue in ("bybit", "hyperliquid")]
    said = [r.getMessage() for r in caplog.records if "silent on personality" in r.getMessage()]
    assert said == [
        "silent on personality vote: its rules read market context (buy_ratio, delta,"
        " funding_rate), which the fast lane does not have: its signals come from the pipeline"
        " only"
    ]
    for lane in lanes:
        assert "vote" not in [p.name for p in lane.plan.personalities]
        assert [p.name for p in lane.plan.personalities] == ["scalping", "swing", "ma_trend"]
    only_vote = VenueLane(Settings(personalities=["vote"]), VENUE, [SYMBOL])
    assert only_vote.bootstrap(None) == {SYMBOL: None}  # nothing to evaluate: silent, says why
    assert "no personality the fast lane can evaluate: vote:" in only_vote.silent()[SYMBOL]

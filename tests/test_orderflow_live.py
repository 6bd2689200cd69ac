"""Order flow in a live run (pipeline/orderflow/live.py): the journal is ingested from a cursor
and only the buckets its new minutes change are rebuilt, and that comes out exactly as the
whole day built at once; a live run through Dagster ingests the minute with its candle."""

from __future__ import annotations

import datetime as dt
import random

import dagster as dg
import polars as pl
import pytest

from assets import klines, orderflow
from pipeline.orchestration import tags
from pipeline.orchestration.resources import resources
from pipeline.orderflow import journal, live
from pipeline.orderflow.aggregate import FLOW_COLUMNS
from pipeline.orderflow.derived import KEY, bars
from tests.daemon import write_config
from tests.fx_replay import endpoint_json
from tests.test_orderflow_asset import materialized
from warehouse import Warehouse

UTC = dt.UTC
TFS = ["1m", "3m", "5m", "15m", "37m", "1h", "148m", "4h", "1d"]
DAY = dt.date(2024, 3, 5)
MARKETS = ["bybit:BTCUSDT", "bybit:ETHUSDT"]


def _line(symbol: str, t: dt.datetime, rng: random.Random) -> dict:
    row = dict.fromkeys(FLOW_COLUMNS, 0.0)
    buy, sell = round(rng.uniform(0, 5), 3), round(rng.uniform(0, 5), 3)
    row.update(taker_buy_volume=buy, taker_sell_volume=sell, trade_count=rng.randint(1, 50))
    row.update(vwap=100.0, price_low=99.0, price_high=101.0, symbol=symbol, open_time=t)
    row.update(qty_step=0.001, collected_at=t + dt.timedelta(minutes=1))
    return row


def _klines(lines: list[dict], short: set) -> pl.DataFrame:
    """The 1m candles of the journaled minutes: volumes that match, but for `short` minutes."""
    ts = pl.Datetime("us", "UTC")
    return pl.DataFrame(
        {
            "exchange": "bybit",
            "symbol": [r["symbol"] for r in lines],
            "open_time": [r["open_time"] for r in lines],
            "close_time": [r["open_time"] + dt.timedelta(minutes=1) for r in lines],
            "open": 100.0,
            "high": 101.0,
            "low": 99.0,
            "close": 100.0,
            "volume": [
                r["taker_buy_volume"]
                + r["taker_sell_volume"]
                + (0.01 if (r["symbol"], r["open_time"]) in short else 0.0)
                for r in lines
            ],
            "turnover": 0.0,
            "source": "test",
            "ingested_at": dt.datetime.now(UTC),
        }
    ).with_columns(pl.col("open_time", "close_time", "ingested_at").cast(ts))


def test_live_ingest_and_tail_bars_equal_the_day_built_whole(tmp_path):
    """Minutes arrive in batches as the collector journals them (gaps in coverage, a late
    batch, a flagged minute, both sides of midnight, two stored minutes journaled again around
    others that must be kept); after each batch the live path runs. The stored minutes and
    bars are then those of one whole build, to the bit."""
    rng = random.Random(5)
    home, wh = tmp_path, Warehouse(tmp_path / "wh.duckdb", replica_sync=False)
    start = dt.datetime.combine(DAY, dt.time(), UTC) - dt.timedelta(minutes=90)
    minutes = [start + dt.timedelta(minutes=i) for i in range(90 + 160)]
    covered = [m for i, m in enumerate(minutes) if not (120 <= i < 130 or i == 200)]
    lines = [_line(s.split(":")[1], m, rng) for m in covered for s in MARKETS]
    short = {("ETHUSDT", minutes[150])}
    wh.replace("klines_1m", _klines(lines, short), "exchange = ?", ["bybit"])
    # batches of 1-7 minutes; one batch held back and journaled after the next (late)
    batches, i = [], 0
    while i < len(covered):
        n = rng.randint(1, 7)
        batches.append(covered[i : i + n])
        i += n
    batches[20], batches[21] = batches[21], batches[20]
    batches.insert(31, [batches[25][0], batches[28][-1]])  # a collector's restart re-journals
    now = dt.datetime(2024, 3, 6, tzinfo=UTC)
    written = []
    with wh.session() as held:  # one connection for the whole feed (a file open is ~25 ms)
        for batch in batches:
            part = [r for r in lines if r["open_time"] in set(batch)]
            journal.append(home, "bybit", part)
            for day in sorted({m.date() for m in batch}):
                got = live.advance(held, home, "bybit", day, MARKETS, TFS, now)
                written.append(0 if got.bars is None else got.bars.height)
                held.replace_many(got.items)
    assert live.cursor(wh, "bybit", DAY)[1] is None  # nothing left stale
    stored = wh.query("SELECT * FROM order_flow_1m ORDER BY symbol, open_time")
    bars_of_day = _assert_equals_whole(wh, stored, len(lines), minutes[150])
    assert max(written) < bars_of_day / 4  # each run rebuilt its tail, never the day
    # a live run with nothing new writes nothing
    assert live.advance(wh, home, "bybit", DAY, MARKETS, TFS, now).items == []


def _assert_equals_whole(wh, stored: pl.DataFrame, n: int, short: dt.datetime) -> int:
    """The stored minutes are the `n` journaled (the ETHUSDT one at `short` flagged), and the
    day's stored bars are those of one whole build from them, to the bit: how many."""
    assert stored.height == n
    flagged = stored.filter(~pl.col("volume_matches"))
    assert flagged.select("symbol", "open_time").rows() == [("ETHUSDT", short)]
    flow = stored.select(live.FLOW_COLUMNS_READ.split(", "))
    whole = bars(flow, TFS, DAY)
    tail = wh.query(
        "SELECT * FROM order_flow_bars WHERE close_time > ? ORDER BY ALL",
        [dt.datetime.combine(DAY, dt.time(), UTC)],
    ).sort(*KEY)
    assert tail.height == whole.height > 0
    assert tail.select(whole.columns).equals(whole)
    return whole.height


def test_a_failed_bars_write_leaves_the_minutes_unwritten_and_the_cursor_unmoved(tmp_path):
    """Minutes, bars and cursor are one transaction: when the bars' write fails (here their
    table is gone), the new minutes are not stored and the cursor has not moved, so the next
    run ingests them again; the day then equals one whole build, to the bit."""
    rng = random.Random(9)
    home, wh = tmp_path, Warehouse(tmp_path / "wh.duckdb", replica_sync=False)
    d0 = dt.datetime.combine(DAY, dt.time(), UTC)
    first, late = [d0 + dt.timedelta(minutes=i) for i in range(30)], d0 + dt.timedelta(minutes=30)
    lines = [_line(s.split(":")[1], m, rng) for m in [*first, late] for s in MARKETS]
    short = {("ETHUSDT", first[7])}
    wh.replace("klines_1m", _klines(lines, short), "exchange = ?", ["bybit"])
    now = dt.datetime(2024, 3, 6, tzinfo=UTC)
    journal.append(home, "bybit", lines[:-2])
    wh.replace_many(live.advance(wh, home, "bybit", DAY, MARKETS, TFS, now).items)
    before = live.cursor(wh, "bybit", DAY)
    journal.append(home, "bybit", lines[-2:])
    got = live.advance(wh, home, "bybit", DAY, MARKETS, TFS, now)
    assert got.new.height == 2 and got.bars is not None and got.bars.height > 0
    with wh.writer() as con:
        con.execute("ALTER TABLE order_flow_bars RENAME TO order_flow_bars_away")
    with pytest.raises(Exception, match="order_flow_bars"):
        wh.replace_many(got.items)
    with wh.writer() as con:
        con.execute("ALTER TABLE order_flow_bars_away RENAME TO order_flow_bars")
    assert live.cursor(wh, "bybit", DAY) == before
    assert wh.query("SELECT count(*) AS n FROM order_flow_1m")["n"][0] == len(lines) - 2
    again = live.advance(wh, home, "bybit", DAY, MARKETS, TFS, now)
    assert again.new.height == 2
    wh.replace_many(again.items)
    stored = wh.query("SELECT * FROM order_flow_1m ORDER BY symbol, open_time")
    _assert_equals_whole(wh, stored, len(lines), first[7])


def test_minutes_failing_a_blocking_check_go_in_without_their_bars(tmp_path):
    """What a live run writes when the new minutes fail a blocking check: the minutes and the
    cursor, whose `bars_from` keeps them stale, so the next run builds their bars."""
    rng = random.Random(3)
    home, wh = tmp_path, Warehouse(tmp_path / "wh.duckdb", replica_sync=False)
    d0 = dt.datetime.combine(DAY, dt.time(), UTC)
    lines = [_line(s.split(":")[1], d0 + dt.timedelta(minutes=m), rng)
             for m in range(20) for s in MARKETS]  # fmt: skip
    wh.replace("klines_1m", _klines(lines, set()), "exchange = ?", ["bybit"])
    now = dt.datetime(2024, 3, 6, tzinfo=UTC)
    journal.append(home, "bybit", lines[:20])
    wh.replace_many(live.advance(wh, home, "bybit", DAY, MARKETS, TFS, now).items)
    journal.append(home, "bybit", lines[20:])
    got = live.advance(wh, home, "bybit", DAY, MARKETS, TFS, now)
    assert {it.table for it in got.minutes_only()} == {"order_flow_1m", live.CURSOR}
    wh.replace_many(got.minutes_only())
    assert live.cursor(wh, "bybit", DAY)[1] == d0 + dt.timedelta(minutes=10)
    one = wh.query("SELECT max(close_time) AS t FROM order_flow_bars WHERE timeframe = '1m'")
    assert one["t"][0] == d0 + dt.timedelta(minutes=10)  # the new minutes have no bars yet
    wh.replace_many(live.advance(wh, home, "bybit", DAY, MARKETS, TFS, now).items)  # next run
    assert live.cursor(wh, "bybit", DAY)[1] is None
    stored = wh.query("SELECT * FROM order_flow_1m ORDER BY symbol, open_time")
    assert stored.height == len(lines)
    flow = stored.select(live.FLOW_COLUMNS_READ.split(", "))
    kept = wh.query("SELECT * FROM order_flow_bars ORDER BY ALL").sort(*KEY)
    whole = bars(flow, TFS, DAY)
    assert kept.select(whole.columns).equals(whole)


def test_the_collector_mark_is_waited_for_only_while_a_collector_runs(tmp_path):
    through = dt.datetime(2024, 3, 5, 10, 1, tzinfo=UTC)
    assert live.wait_for_mark(tmp_path, "bybit", through, 0.1) == "no collector"
    live.write_mark(tmp_path, "bybit", int(through.timestamp() * 1000) - 60_000)
    assert live.wait_for_mark(tmp_path, "bybit", through, 0.1) == "timeout"
    live.write_mark(tmp_path, "bybit", int(through.timestamp() * 1000))
    assert live.wait_for_mark(tmp_path, "bybit", through, 0.1) == "ready"


@pytest.fixture
def live_home(tmp_path, replay_session):
    cfg = write_config(tmp_path, top={"source": "replay", "exchanges": {"bybit": ["BTCUSDT"]}})
    return replay_session, resources(config_path=str(cfg), endpoint=endpoint_json(replay_session))


def _replayed(market, minutes: list[dt.datetime]) -> list[dict]:
    """What the collector journals for `minutes`: the replay exchange's own trades."""
    from pipeline.orderflow.aggregate import minute_flow, trades_frame
    from pipeline.replay.trades import items, minute_trades

    raw = []
    for m in minutes:
        raw += items(
            "BTCUSDT", minute_trades(market, "BTCUSDT", int(m.timestamp() * 1000)), 0, 2**62
        )
    flow = minute_flow(trades_frame(raw)).with_columns(
        qty_step=pl.lit(0.001), collected_at=pl.lit(dt.datetime.now(UTC))
    )
    return flow.to_dicts()


def test_a_live_run_ingests_the_new_minute_and_rebuilds_its_buckets(live_home):
    """mode=live through Dagster: order flow is in the live job, runs after its candle, and
    writes only the new minute and the bars holding it."""
    from pipeline.candles.timeframes import bucket_end, bucket_start, day_bounds_ms, to_ms
    from pipeline.orchestration.definitions import defs

    replay, res = live_home
    s = res["settings"].get()
    day = (dt.datetime.now(UTC) - dt.timedelta(days=1)).date()
    minute = dt.datetime.combine(day, dt.time(0, 44), UTC)
    assets = [klines.klines_1m, orderflow.order_flow]
    job = defs.resolve_job_def("live")
    selected = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert {"order_flow_1m", "order_flow_bars"} <= selected

    def run(start, end, **tagged):
        config = {"end": end.isoformat(), **({"start": start.isoformat()} if start else {})}
        with dg.DagsterInstance.ephemeral() as instance:
            result = dg.materialize(
                assets, partition_key=day.isoformat(), resources=res, instance=instance,
                run_config={"ops": {"klines_1m": {"config": config}}}, tags=tagged,
            )  # fmt: skip
        assert result.success
        return {n: materialized(result, n) for n in ("order_flow_1m", "order_flow_bars")}

    d0 = dt.datetime.combine(day, dt.time(), UTC)
    journal.append(s.home, "bybit", _replayed(replay.market, [d0 + dt.timedelta(minutes=m)
                                                              for m in range(44)]))  # fmt: skip
    run(None, minute)  # the day so far, whole
    journal.append(s.home, "bybit", _replayed(replay.market, [minute]))
    live.write_mark(s.home, "bybit", int((minute.timestamp() + 60) * 1000))
    meta = run(minute, minute + dt.timedelta(minutes=1), **{tags.MODE: tags.LIVE})
    assert meta["order_flow_1m"]["new_minutes"].value == 1
    assert meta["order_flow_1m"]["collector"].value == {"bybit": "ready"}
    # one row per timeframe whose bucket holding 00:44 closes within the day
    d1 = day_bounds_ms(day)[1]
    owned = [tf for tf in s.timeframes if bucket_end(tf, bucket_start(tf, to_ms(minute))) <= d1]
    assert meta["order_flow_bars"]["rows_written"].value == len(owned)
    idle = run(minute + dt.timedelta(minutes=1), minute + dt.timedelta(minutes=1),
               **{tags.MODE: tags.LIVE})  # fmt: skip
    assert idle["order_flow_1m"]["rows_written"].value == 0
    assert idle["order_flow_bars"]["rows_written"].value == 0

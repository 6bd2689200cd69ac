"""`order_flow_1m` materialized in-process (`dg.materialize`) on the replay exchange: the
journal of a day's covered minutes into the warehouse, checked against the day's candles; a
minute that does not add up is stored flagged and fails the blocking check, never fixed."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import polars as pl
import pytest

from assets import klines, orderflow
from pipeline.orchestration.resources import resources
from pipeline.orderflow import journal
from pipeline.orderflow.aggregate import minute_flow, trades_frame
from pipeline.replay.trades import items, minute_trades
from tests.daemon import write_config
from tests.fx_replay import endpoint_json

STEP = 0.001
UTC = dt.UTC
COVERED = range(600, 660)  # 10:00-10:59 of the day


def _journal(home, market, day: dt.date, tamper: dt.datetime | None = None) -> None:
    """What the collector would have journaled for the covered minutes (the replay's trades)."""
    t0 = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1000)
    raw = []
    for m in COVERED:
        trades = minute_trades(market, "BTCUSDT", t0 + m * 60_000)
        raw += items("BTCUSDT", trades, 0, 2**62)
    flow = minute_flow(trades_frame(raw)).with_columns(
        qty_step=pl.lit(STEP), collected_at=pl.lit(dt.datetime.now(dt.UTC))
    )
    if tamper is not None:  # a lost trade: the minute is short of its candle
        short = pl.col("open_time") == tamper
        flow = flow.with_columns(
            taker_buy_volume=pl.when(short)
            .then(pl.col("taker_buy_volume") - 0.002)
            .otherwise(pl.col("taker_buy_volume"))
        )
    journal.append(home, "bybit", flow.to_dicts())


@pytest.fixture(scope="module")
def day_and_resources(tmp_path_factory, replay_session):
    replay, home = replay_session, tmp_path_factory.mktemp("orderflow")
    endpoint = endpoint_json(replay)
    cfg = write_config(home, top={"source": "replay", "exchanges": {"bybit": ["BTCUSDT"]}})
    res = resources(config_path=str(cfg), endpoint=endpoint)
    day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date()
    assert res["settings"].get().home == home
    with dg.DagsterInstance.ephemeral() as instance:
        done = dg.materialize(
            [klines.klines_1m], partition_key=day.isoformat(), resources=res, instance=instance
        )
    assert done.success
    return replay, res, day


def _materialize(res, day):
    with dg.DagsterInstance.ephemeral() as instance:
        return dg.materialize(
            [orderflow.order_flow],
            partition_key=day.isoformat(),
            resources=res,
            instance=instance,
            raise_on_error=False,
        )


def materialized(result, asset: str) -> dict:
    """The metadata of `asset`'s materialization in a run of the one `order_flow` step."""
    done = result.asset_materializations_for_node("order_flow")
    return next(m for m in done if m.asset_key.path[-1] == asset).metadata


def _checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_covered_minutes_go_in_whole_and_the_rest_stay_absent(day_and_resources):
    replay, res, day = day_and_resources
    home = res["settings"].get().home
    _journal(home, replay.market, day)
    result = _materialize(res, day)
    assert result.success
    assert _checks(result) == {
        "trades_match_candles": True,
        "prices_within_candles": True,
        "null_outside_coverage": True,
        "values_consistent": True,
    }
    wh = res["warehouse"].get()
    rows = wh.query("SELECT * FROM order_flow_1m ORDER BY open_time")
    assert rows.height == len(COVERED)
    assert rows["volume_matches"].to_list() == [True] * len(COVERED)
    assert rows["prices_inside"].all() and (rows["trade_count"] > 0).all()
    assert rows["open_time"][0].hour == 10 and rows["open_time"][-1].minute == 59
    candles = wh.query(
        "SELECT k.volume, f.taker_buy_volume + f.taker_sell_volume AS flow FROM klines_1m k"
        " LEFT JOIN order_flow_1m f USING (exchange, symbol, open_time)"
        " WHERE k.open_time >= ? AND k.open_time < ?",
        [
            dt.datetime.combine(day, dt.time(), dt.UTC),
            dt.datetime.combine(day, dt.time(11), dt.UTC),
        ],
    )
    # an uncovered minute has no order flow at all: NULL, not zero
    assert candles["flow"].null_count() == 600 and (candles["flow"].drop_nulls() > 0).all()
    meta = materialized(result, "order_flow_1m")
    assert meta["covered_minutes"].value == len(COVERED)
    assert "bybit:BTCUSDT | 60 |" in meta["coverage"].value
    assert meta["flagged_minutes"].value == 0
    hours = wh.query(
        "SELECT open_time, delta, cvd_day, covered_minutes FROM order_flow_bars"
        " WHERE timeframe = '1h' ORDER BY open_time"
    )
    (h10,) = hours.filter(pl.col("delta").is_not_null()).to_dicts()  # the one covered hour
    assert h10["open_time"].hour == 10 and h10["covered_minutes"] == 60
    assert h10["delta"] == pytest.approx(
        (rows["taker_buy_volume"] - rows["taker_sell_volume"]).sum(), abs=1e-9
    )
    assert h10["cvd_day"] is None  # the day's minutes before 10:00 have no order flow


def test_a_short_minute_is_stored_flagged_warned_of_and_left_out_of_its_bars(day_and_resources):
    replay, res, day = day_and_resources
    home = res["settings"].get().home
    bad = dt.datetime.combine(day, dt.time(10, 17), dt.UTC)
    journal.path(home, "bybit", day).unlink(missing_ok=True)
    _journal(home, replay.market, day, tamper=bad)
    result = _materialize(res, day)
    # a lost trade is the venue's: the check fails as a WARN (it shows), the run goes on
    assert result.success
    assert _checks(result)["trades_match_candles"] is False
    (evaluation,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "trades_match_candles"
    ]
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert f"bybit:BTCUSDT {bad:%Y-%m-%d %H:%M}" in evaluation.description
    wh = res["warehouse"].get()
    flagged = wh.query(
        "SELECT open_time, taker_buy_volume + taker_sell_volume - candle_volume AS d"
        " FROM order_flow_1m WHERE NOT volume_matches"
    )
    assert flagged["open_time"].to_list() == [bad]
    assert flagged["d"][0] == pytest.approx(-0.002, abs=1e-9)  # as collected, not corrected
    # ... and its bars have no values: the hour holding it is not whole
    h10 = wh.query(
        "SELECT covered_minutes, delta FROM order_flow_bars WHERE timeframe = '1h'"
        " AND open_time = ?",
        [bad.replace(minute=0)],
    ).to_dicts()
    assert h10 == [{"covered_minutes": 59, "delta": None}]


def test_minutes_failing_a_blocking_check_stop_their_bars_as_an_upstream_step_would(
    day_and_resources,
):
    """One step writes both tables: when the minutes fail an ERROR check (a price outside its
    candle), the bars are not built or materialized and the step fails, as a separate bars
    step would have been skipped."""
    replay, res, day = day_and_resources
    home = res["settings"].get().home
    journal.path(home, "bybit", day).unlink(missing_ok=True)
    _journal(home, replay.market, day)
    rows = journal.read(home, "bybit", day).to_dicts()
    bad = dt.datetime.combine(day, dt.time(10, 33), dt.UTC)
    for r in rows:
        r["price_high"] += 1000.0 if r["open_time"] == bad else 0.0
    journal.path(home, "bybit", day).unlink()
    journal.append(home, "bybit", rows)
    wh = res["warehouse"].get()
    wh.replace("order_flow_bars", pl.DataFrame(), "exchange = ?", ["bybit"])
    result = _materialize(res, day)
    assert not result.success
    assert _checks(result)["prices_within_candles"] is False
    done = result.asset_materializations_for_node("order_flow")
    assert [m.asset_key.path[-1] for m in done] == ["order_flow_1m"]
    assert wh.query("SELECT count(*) AS n FROM order_flow_bars")["n"][0] == 0
    assert wh.query("SELECT count(*) AS n FROM order_flow_1m")["n"][0] == len(COVERED)

"""The market-context assets materialized in-process (`dg.materialize`) on a real DuckDB
warehouse and the replay exchange: a day beside the 1m candles, a live-sensor run that asks
only for what is due, and injected bad rows that fail the checks (blocking, except in the live
sensor's runs, where they warn)."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from assets import context, klines
from pipeline.orchestration import tags
from pipeline.orchestration.resources import resources
from tests.daemon import write_config
from tests.fx_replay import endpoint_json

UTC = dt.UTC
TABLES = ("funding_rates", "open_interest_5m", "spot_klines_1m")


@pytest.fixture
def home(tmp_path, replay):
    cfg = write_config(tmp_path, top={"source": "replay"})
    res = resources(config_path=str(cfg), endpoint=endpoint_json(replay))
    day = (dt.datetime.now(UTC) - dt.timedelta(days=1)).date()
    return res, day, dt.datetime.combine(day, dt.time(), UTC)


def _run(res, day, *, start=None, end=None, live=False, instance=None):
    config = {}
    if start is not None:
        window = {"start": start.isoformat(), "end": end.isoformat()}
        config = {"ops": {"klines_1m": {"config": window}}}
    run_tags = tags.sensor_tags(tags.LIVE, "test") if live else {}
    with dg.DagsterInstance.ephemeral() as fresh:
        return dg.materialize(
            [klines.klines_1m, context.market_context],
            partition_key=day.isoformat(),
            resources=res,
            instance=instance or fresh,
            run_config=config,
            tags=run_tags,
            raise_on_error=False,
        )


def _checks(result) -> dict[tuple[str, str], tuple[bool, str]]:
    return {
        (e.asset_key.to_user_string(), e.check_name): (e.passed, e.severity.value)
        for e in result.get_asset_check_evaluations()
    }


def test_a_day_beside_the_candles_with_every_check_and_rewritten_the_same(home):
    res, day, start = home
    first = _run(res, day)
    assert first.success
    checks = _checks(first)
    mine = {k: v for k, v in checks.items() if k[0] in TABLES}
    assert len(mine) == 7 and all(passed for passed, _ in mine.values()), mine
    assert mine[("funding_rates", "on_funding_grid")] == (True, "ERROR")  # blocking here
    wh = res["warehouse"].get()
    count = "SELECT count(*) FROM {t} WHERE {c} >= ? AND {c} < ?"
    window = [start, start + dt.timedelta(days=1)]
    times = {"funding_rates": "funding_time", "open_interest_5m": "time"}
    n = {t: wh.query(count.format(t=t, c=times.get(t, "open_time")), window).item() for t in TABLES}
    assert n == {"funding_rates": 3, "open_interest_5m": 288, "spot_klines_1m": 1440}
    meta = first.asset_materializations_for_node("market_context")
    assert {m.asset_key.to_user_string(): m.metadata["rows_written"].value for m in meta} == n
    spot = "SELECT * EXCLUDE (ingested_at) FROM spot_klines_1m ORDER BY open_time"
    before = wh.query(spot)
    assert _run(res, day).success  # a re-run replaces the day with the same rows
    assert wh.query(spot).equals(before)


def test_a_live_run_takes_its_minute_of_spot_and_only_due_funding_and_oi(home, replay):
    res, day, start = home
    t = start + dt.timedelta(hours=10)
    instance = dg.DagsterInstance.ephemeral()  # the runs of one home, one after another
    first = _run(res, day, start=t, end=t + dt.timedelta(minutes=1), live=True, instance=instance)
    assert first.success
    before = replay.stats()["paths"]
    one = t + dt.timedelta(minutes=1)
    result = _run(
        res, day, start=one, end=one + dt.timedelta(minutes=1), live=True, instance=instance
    )
    assert result.success
    after = replay.stats()["paths"]
    asked = {
        p: n - before.get(p, 0)
        for p, n in after.items()
        if n > before.get(p, 0) and p.startswith("/v5/")
    }
    # klines_1m: its one page; the context: one spot page; funding and OI are not due.
    assert asked == {"/v5/market/kline": 2, "/v5/market/time": 2}, asked
    meta = {
        m.asset_key.to_user_string(): m.metadata
        for m in result.asset_materializations_for_node("market_context")
    }
    assert meta["spot_klines_1m"]["rows_written"].value == 1
    assert set(meta) == {"spot_klines_1m"}  # funding and OI were not due: not materialized
    newest = meta["spot_klines_1m"]["newest"].value["bybit"]  # where the next run goes on
    assert newest["spot_klines_1m"] == one.isoformat()
    assert newest["funding_rates"] == (start + dt.timedelta(hours=8)).isoformat()
    wh = res["warehouse"].get()
    closes = wh.query(
        "SELECT k.close AS perp, s.close AS spot FROM klines_1m k JOIN spot_klines_1m s"
        " USING (exchange, symbol, open_time) WHERE open_time = ?",
        [one],
    )
    assert closes.height == 1  # the minute's spot close beside its perpetual close
    assert abs(closes["perp"].item() / closes["spot"].item() - 1) < 30e-4


def _inject_off_grid_funding(res, at: dt.datetime) -> None:
    with res["warehouse"].get().writer() as con:
        con.execute(
            "INSERT INTO funding_rates VALUES ('bybit', 'BTCUSDT', ?, 0.0001, ?, now())", [at, at]
        )


def test_an_off_grid_funding_row_fails_its_blocking_check(home):
    res, day, start = home
    assert _run(res, day).success  # the whole day, candles included
    _inject_off_grid_funding(res, start + dt.timedelta(hours=1, minutes=30))
    t = start + dt.timedelta(hours=12)  # a narrower run: the injected row is not rewritten
    result = _run(res, day, start=t, end=t + dt.timedelta(minutes=5))
    checks = _checks(result)
    assert checks[("funding_rates", "on_funding_grid")] == (False, "ERROR")
    assert checks[("klines_1m", "no_duplicates")][0]  # the candles went in all the same
    assert not result.success
    failed = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert [e.step_key for e in failed] == ["market_context"]


@pytest.mark.parametrize("live", [False, True], ids=["blocking", "live_warns"])
def test_a_broken_spot_candle_fails_ohlc_sane(home, live):
    res, day, start = home
    assert _run(res, day).success
    with res["warehouse"].get().writer() as con:
        con.execute(
            "UPDATE spot_klines_1m SET high = low - 1 WHERE open_time = ?",
            [start + dt.timedelta(minutes=30)],
        )
    t = start + dt.timedelta(hours=2)  # a later minute: the broken one is not rewritten
    result = _run(res, day, start=t, end=t + dt.timedelta(minutes=1), live=live)
    assert _checks(result)[("spot_klines_1m", "ohlc_sane")] == (False, "WARN" if live else "ERROR")
    assert result.success is live  # blocking fails the run; a live-sensor run goes on
    done = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert "klines_1m" in done  # the candles went in all the same


def test_backfill_assets_name_the_context_tables_and_run_their_one_step():
    from pipeline.runtime.backfill import BackfillError, validate_assets

    assert validate_assets("funding_rates,spot_klines_1m") == "market_context"
    assert validate_assets("klines_1m,open_interest_5m") == "klines_1m,market_context"
    with pytest.raises(BackfillError, match="unknown asset"):
        validate_assets("market_context")  # the op's name is not an asset's


def test_each_market_is_checked_on_its_stated_funding_grid_and_spot_pair(tmp_path, replay_factory):
    """A 4-hour market (WIFUSDT), a multiplied one (1000PEPEUSDT) and one without a spot
    pair (BTCPERP): the blocking funding check passes, naming each market's interval; the
    spot legs are in the metadata; BTCPERP's missing leg is a warning naming it, not a
    failed run."""
    odd = ["BTCUSDT", "1000PEPEUSDT", "WIFUSDT", "BTCPERP"]
    ex = replay_factory(symbols=odd)
    cfg = write_config(tmp_path, top={"source": "replay", "exchanges": {"bybit": odd}})
    res = resources(config_path=str(cfg), endpoint=endpoint_json(ex))
    day = (dt.datetime.now(UTC) - dt.timedelta(days=1)).date()
    result = _run(res, day)
    assert result.success
    evals = {
        (e.asset_key.to_user_string(), e.check_name): e
        for e in result.get_asset_check_evaluations()
    }
    grid = evals[("funding_rates", "on_funding_grid")]
    assert grid.passed and grid.severity == dg.AssetCheckSeverity.ERROR
    assert grid.metadata["funding_interval"].value == {
        "bybit:1000PEPEUSDT": "8h", "bybit:BTCPERP": "8h", "bybit:BTCUSDT": "8h",
        "bybit:WIFUSDT": "4h",
    }  # fmt: skip
    cover = evals[("spot_klines_1m", "coverage")]
    assert not cover.passed and cover.severity == dg.AssetCheckSeverity.WARN
    meta = {
        m.asset_key.to_user_string(): m.metadata
        for m in result.asset_materializations_for_node("market_context")
    }
    legs = meta["spot_klines_1m"]["spot_legs"].value["bybit"]
    assert (legs["1000PEPEUSDT"]["spot"], legs["1000PEPEUSDT"]["multiplier"]) == ("PEPEUSDT", 1000)
    assert legs["WIFUSDT"]["funding_minutes"] == 240 and legs["BTCPERP"]["spot"] is None
    assert "bybit:BTCPERP" in meta["spot_klines_1m"]["not_supplied"].value
    wh = res["warehouse"].get()
    n = wh.query("SELECT symbol, count(*) AS n FROM funding_rates GROUP BY ALL ORDER BY ALL")
    assert dict(n.iter_rows()) == {"1000PEPEUSDT": 3, "BTCPERP": 3, "BTCUSDT": 3, "WIFUSDT": 6}


def test_a_wrongly_configured_multiplier_fails_the_run_not_the_basis(tmp_path, replay_factory):
    """bybit.spot_legs giving BTCPERP the BTCUSDT pair x 1000: the spot leg is stored as told,
    and the blocking ohlc_sane check fails on its price rule (spot_price_matches)."""
    two = ["BTCUSDT", "BTCPERP"]
    ex = replay_factory(symbols=two)
    legs = {"BTCPERP": {"symbol": "BTCUSDT", "multiplier": 1000}}
    top = {"source": "replay", "exchanges": {"bybit": two}, "bybit": {"spot_legs": legs}}
    res = resources(config_path=str(write_config(tmp_path, top=top)), endpoint=endpoint_json(ex))
    result = _run(res, (dt.datetime.now(UTC) - dt.timedelta(days=1)).date())
    assert not result.success
    evals = {e.check_name: e for e in result.get_asset_check_evaluations()}
    match = evals["ohlc_sane"]
    assert not match.passed and match.severity == dg.AssetCheckSeverity.ERROR
    median = match.metadata["spot_price_matches: median_abs_basis_bps"].value
    assert median["bybit:BTCUSDT"] < 30 and median["bybit:BTCPERP"] > 9_000
    assert "ohlc_sane: flagged" not in str(match.metadata)  # the OHLC order itself is fine

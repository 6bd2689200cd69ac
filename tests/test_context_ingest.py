"""The market-context room without Dagster: ingest a day from the replay into a real DuckDB
warehouse, idempotently; the live path's plan; and checks that catch an injected bad row."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pytest

from pipeline.config import load_settings
from pipeline.context.checks import context_checks, spot_price_matches
from pipeline.context.ingest import ingest_context, plan
from pipeline.context.tables import FUNDING, OPEN_INTEREST, SPOT, TABLES
from pipeline.exchanges.bybit_context import BybitContext
from pipeline.exchanges.protocol import Endpoint
from tests.daemon import write_config
from tests.test_context_fetch import REAL
from warehouse import Warehouse

UTC = dt.UTC
DAY = dt.timedelta(days=1)
MIN = dt.timedelta(minutes=1)
JUNE10 = dt.datetime(2025, 6, 10, tzinfo=UTC)


def ms_of(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def _setup(tmp_path, ex, top=None):
    settings = load_settings(write_config(tmp_path, top={"source": "replay", **(top or {})}))
    src = ex.market.source
    endpoint = Endpoint("replay", ex.rest_url, ex.ws_url, src.ident, src.label)
    return settings, endpoint, Warehouse(tmp_path / "wh.duckdb", replica_sync=False)


def _day(wh: Warehouse, day: dt.datetime) -> dict[str, pl.DataFrame]:
    return {
        t.name: wh.query(
            f"SELECT * FROM {t.name} WHERE {t.time} >= ? AND {t.time} < ? ORDER BY ALL",
            [day, day + DAY],
        )
        for t in TABLES
    }


def _checks(frames, now, day, markets, intervals):
    return {
        t.name: {
            n: o.passed
            for n, o in context_checks(
                frames[t.name], t, now, markets, day, intervals=intervals
            ).items()
        }
        for t in TABLES
    }


@pytest.mark.skipif(not REAL.is_file(), reason=f"no real candles at {REAL}")
def test_a_real_day_ingests_whole_passes_every_check_and_rewrites_the_same(
    tmp_path, replay_factory
):
    """Real BTCUSDT perpetual candles served by the replay; spot, funding and OI around them."""
    ex = replay_factory(data=REAL, clock_start="2025-07-01T00:00:00Z")
    settings, endpoint, wh = _setup(tmp_path, ex)
    now = ex.now()
    kw = {"closed_by": now, "day": JUNE10}
    summary = ingest_context(wh, settings, endpoint, JUNE10, JUNE10 + DAY, **kw)
    assert summary.rows == {SPOT.name: 1440, FUNDING.name: 3, OPEN_INTEREST.name: 288}
    assert not summary.unsupported and not summary.failed
    first = _day(wh, JUNE10)
    assert summary.intervals() == {"bybit:BTCUSDT": dt.timedelta(hours=8)}
    checks = _checks(first, now, JUNE10, ["bybit:BTCUSDT"], summary.intervals())
    assert all(all(v.values()) for v in checks.values()), checks
    funding = first[FUNDING.name]
    assert (funding["known_at"] == funding["funding_time"]).all()
    oi = first[OPEN_INTEREST.name]
    assert (oi["known_at"] - oi["time"] == dt.timedelta(minutes=5)).all()
    assert first[SPOT.name]["source"].unique().to_list() == [endpoint.label]
    ingest_context(wh, settings, endpoint, JUNE10, JUNE10 + DAY, **kw)  # again: same rows
    again = _day(wh, JUNE10)
    for name, frame in first.items():
        assert again[name].drop("ingested_at").equals(frame.drop("ingested_at")), name


def test_the_live_plan_asks_only_for_what_is_due():
    day = dt.datetime(2024, 1, 5, tzinfo=UTC)
    t = day + dt.timedelta(hours=10, minutes=1)  # a live run for the 10:01 candle
    clock = t + MIN
    # Funding: the 08:00 settlement is due until stored; then nothing until 16:00.
    assert plan(FUNDING, t, t + MIN, clock, day, day) == day + dt.timedelta(hours=8)
    assert plan(FUNDING, t, t + MIN, clock, day, day + dt.timedelta(hours=8)) is None
    # A venue with a 4-hour market: the 08:00 one stored, 12:00 is due once it is 12:00.
    four, noon = dt.timedelta(hours=4), day + dt.timedelta(hours=12)
    assert plan(FUNDING, t, t + MIN, clock, day, day + dt.timedelta(hours=8), four) is None
    assert plan(FUNDING, noon, noon + MIN, noon + MIN, day, noon - four, four) == noon
    # Open interest: the 09:55 reading is over at 10:00; 10:00's only at 10:05.
    assert plan(OPEN_INTEREST, t, t + MIN, clock, day, t - dt.timedelta(minutes=11)) == (
        t - dt.timedelta(minutes=6)
    )
    assert plan(OPEN_INTEREST, t, t + MIN, clock, day, t - dt.timedelta(minutes=6)) is None
    # Spot: always the run's own minute, and from any minute the day missed.
    assert plan(SPOT, t, t + MIN, clock, day, t - MIN) == t
    assert plan(SPOT, t, t + MIN, clock, day, t - 30 * MIN) == t - 29 * MIN
    assert plan(SPOT, t, t + MIN, clock, day, t + MIN) == t  # a retry rewrites its minute
    assert plan(SPOT, t, t + MIN, clock, day, None) == day


def test_a_live_ingest_fetches_only_what_is_due(tmp_path, replay_factory):
    ex = replay_factory(clock_start="2024-01-05T10:06:30Z", clock_speed=1e-9)  # 10:05 not over
    settings, endpoint, wh = _setup(tmp_path, ex)
    day = dt.datetime(2024, 1, 5, tzinfo=UTC)
    t = day + dt.timedelta(hours=10)
    clock = ex.now()
    legs: dict = {}  # what the asset hands on from run to run (its spot_legs metadata)

    def live(a: dt.datetime):
        before = ex.stats()["paths"]
        s = ingest_context(
            wh, settings, endpoint, a, a + MIN, closed_by=clock, day=day, follow=True, legs=legs
        )
        legs.update(s.legs)
        after = ex.stats()["paths"]
        return s, {
            p: n - before.get(p, 0)
            for p, n in after.items()
            if n > before.get(p, 0) and p.startswith("/v5/")
        }

    first, asked = live(t)  # an empty day: everything from midnight
    assert first.rows == {SPOT.name: 601, FUNDING.name: 2, OPEN_INTEREST.name: 121}
    assert asked["/v5/market/instruments-info"] == 2  # linear and spot, once
    second, asked = live(t + MIN)
    assert second.rows == {SPOT.name: 1} and asked == {"/v5/market/kline": 1}
    assert second.fetched[FUNDING.name] == second.fetched[OPEN_INTEREST.name] == "not due"
    third, asked = live(t + 5 * MIN)  # 10:05: the spot minutes 10:02-10:05; OI not yet
    assert third.rows == {SPOT.name: 4} and asked == {"/v5/market/kline": 1}
    ex.set_clock("2024-01-05T10:11:30Z")  # the 10:05 reading is over
    clock = ex.now()
    fourth, asked = live(t + 6 * MIN)
    assert fourth.rows == {SPOT.name: 1, OPEN_INTEREST.name: 1}
    assert asked == {"/v5/market/kline": 1, "/v5/market/open-interest": 1}


def test_a_venue_without_context_is_named_not_skipped(tmp_path, replay_factory):
    ex = replay_factory(clock_start="2024-01-06T00:00:00Z")
    settings, endpoint, wh = _setup(
        tmp_path, ex, top={"exchanges": {"bybit": ["BTCUSDT"], "hyperliquid": ["BTC"]}}
    )
    day = dt.datetime(2024, 1, 5, tzinfo=UTC)
    summary = ingest_context(wh, settings, endpoint, day, day + DAY, closed_by=ex.now(), day=day)
    assert set(summary.unsupported) == {f"hyperliquid:{t.name}" for t in TABLES}
    assert "hourly" in summary.unsupported["hyperliquid:funding_rates"]
    assert summary.rows[SPOT.name] == 1440  # Bybit's rows are there all the same


def test_injected_bad_rows_fail_their_checks(tmp_path, replay_factory):
    ex = replay_factory(clock_start="2024-01-06T00:00:00Z")
    settings, endpoint, wh = _setup(tmp_path, ex)
    day = dt.datetime(2024, 1, 5, tzinfo=UTC)
    now = ex.now()
    summary = ingest_context(wh, settings, endpoint, day, day + DAY, closed_by=now, day=day)
    frames = _day(wh, day)
    markets, grids = ["bybit:BTCUSDT"], summary.intervals()
    assert all(all(v.values()) for v in _checks(frames, now, day, markets, grids).values())

    f = frames[FUNDING.name]
    off = f.head(1).with_columns(
        funding_time=pl.col("funding_time") + dt.timedelta(hours=1, minutes=30),
        known_at=pl.col("known_at") + dt.timedelta(hours=1, minutes=30),
    )  # a settlement at 01:30: stored as sent, flagged
    got = context_checks(pl.concat([f, off]), FUNDING, now, markets, day, intervals=grids)
    assert not got["on_funding_grid"].passed and "01:30" in str(got["on_funding_grid"].metadata)
    assert got["on_funding_grid"].metadata["funding_interval"] == {"bybit:BTCUSDT": "8h"}
    unstated = context_checks(pl.concat([f, off]), FUNDING, now, markets, day)["on_funding_grid"]
    assert "not checked (no interval stated): bybit:BTCUSDT" in unstated.description
    assert got["keys_and_known_at"].passed
    early = f.with_columns(known_at=pl.col("known_at") - MIN)  # known before it settled
    keyed = context_checks(early, FUNDING, now, markets, day)["keys_and_known_at"]
    assert not keyed.passed and "known_at rule" in keyed.description
    future = context_checks(f, FUNDING, day + dt.timedelta(hours=12), markets, day)
    keyed = future["keys_and_known_at"]  # the 16:00 rate, "known" at 12:00
    assert not keyed.passed and "known after" in keyed.description

    oi = frames[OPEN_INTEREST.name]
    neg = oi.with_columns(
        open_interest=pl.when(pl.int_range(pl.len()) == 7)
        .then(-1.0)
        .otherwise(pl.col("open_interest"))
    )
    assert not context_checks(neg, OPEN_INTEREST, now, markets, day)["on_5min_grid"].passed
    dup = pl.concat([oi, oi.tail(1)])
    keyed = context_checks(dup, OPEN_INTEREST, now, markets, day)["keys_and_known_at"]
    assert not keyed.passed and "duplicated" in keyed.description

    spot = frames[SPOT.name]
    broken = spot.with_columns(
        high=pl.when(pl.int_range(pl.len()) == 100).then(pl.col("low") - 1).otherwise("high")
    )
    assert not context_checks(broken, SPOT, now, markets, day)["ohlc_sane"].passed
    holed = spot.filter(pl.int_range(pl.len()) != 200)
    perp = spot.select("exchange", "symbol", "open_time")
    cov = context_checks(holed, SPOT, now, markets, day, perp)["coverage"]
    assert not cov.passed and cov.metadata["perp_minutes_without_spot"] == 1
    assert "1439/1440" in cov.description
    near = spot.select(*perp.columns, close=pl.col("close") * 1.0005)  # a 5 bp premium
    assert spot_price_matches(spot, near).metadata["median_abs_basis_bps"] == {"bybit:BTCUSDT": 5.0}
    assert context_checks(spot, SPOT, now, markets, day, near)["ohlc_sane"].passed
    unscaled = spot.with_columns(close=pl.col("close") / 1000)  # a leg 1000x off
    off = context_checks(unscaled, SPOT, now, markets, day, near)["ohlc_sane"]
    assert not off.passed and "bybit:BTCUSDT" in off.description
    assert "bybit.spot_legs" in off.description
    two_days = context_checks(spot, SPOT, now + DAY, markets, day, end=day + 2 * DAY)["coverage"]
    assert not two_days.passed and "1440/2880" in two_days.description  # a 2-day backfill


ODD = ["BTCUSDT", "1000PEPEUSDT", "WIFUSDT", "BTCPERP"]  # tests/test_context_fetch.py


def test_each_market_on_its_own_funding_grid_and_spot_pair(tmp_path, replay_factory):
    """A 4-hour market's funding passes the grid check held to its stated interval (and
    fails it held to 8 hours, as before); 1000PEPEUSDT's spot candles are PEPEUSDT's in its
    units; BTCPERP, without a spot pair, is named with how to configure one, not fetched."""
    ex = replay_factory(clock_start="2024-01-06T00:00:00Z", symbols=ODD)
    settings, endpoint, wh = _setup(tmp_path, ex, top={"exchanges": {"bybit": ODD}})
    day, now = dt.datetime(2024, 1, 5, tzinfo=UTC), ex.now()
    summary = ingest_context(wh, settings, endpoint, day, day + DAY, closed_by=now, day=day)
    grids = summary.intervals()
    assert grids["bybit:WIFUSDT"] == 4 * dt.timedelta(hours=1)
    assert grids["bybit:BTCUSDT"] == grids["bybit:1000PEPEUSDT"] == 8 * dt.timedelta(hours=1)
    assert summary.rows == {
        SPOT.name: 3 * 1440,
        FUNDING.name: 3 * 3 + 6,
        OPEN_INTEREST.name: 4 * 288,
    }
    refused = summary.unsupported["bybit:spot_klines_1m"]
    assert "bybit:BTCPERP" in refused and "spot_legs" in refused
    frames = _day(wh, day)
    markets = [f"bybit:{s}" for s in ODD]
    got = context_checks(frames[FUNDING.name], FUNDING, now, markets, day, intervals=grids)
    grid = got["on_funding_grid"]
    assert grid.passed, grid.description
    assert grid.metadata["funding_interval"]["bybit:WIFUSDT"] == "4h"
    as_before = {**grids, "bybit:WIFUSDT": 8 * dt.timedelta(hours=1)}
    old = context_checks(frames[FUNDING.name], FUNDING, now, markets, day, intervals=as_before)
    assert (
        not old["on_funding_grid"].passed and old["on_funding_grid"].metadata["flagged_rows"] == 3
    )
    spot = frames[SPOT.name]
    assert sorted(spot["symbol"].unique()) == ["1000PEPEUSDT", "BTCUSDT", "WIFUSDT"]
    pepe = spot.filter(pl.col("symbol") == "1000PEPEUSDT")["close"].mean()
    perp = ex.market.kline("1000PEPEUSDT", "1", None, None, 1, ms_of(day + MIN))
    assert abs(pepe / float(json.loads(perp[0])[4]) - 1) < 0.2  # same units, not 1000x off
    c = BybitContext(ex.rest_url)
    perp = pl.concat([c.fetch_klines(s, day, day + DAY) for s in ODD]).select(
        pl.lit("bybit").alias("exchange"), "symbol", "open_time", "close"
    )
    spot_checks = context_checks(spot, SPOT, now, markets, day, perp)
    assert spot_checks["ohlc_sane"].passed and spot_checks["keys_and_known_at"].passed
    median = spot_price_matches(spot, perp).metadata["median_abs_basis_bps"]
    assert median["bybit:1000PEPEUSDT"] < 30  # type: ignore[index]  # bp, not -99.9 %
    assert not spot_checks["coverage"].passed and "bybit:BTCPERP 0/1440" in (
        spot_checks["coverage"].description
    )  # a warning: BTCPERP has no spot leg


def test_a_configured_spot_leg_is_used_and_a_bad_one_refused_by_the_configuration(
    tmp_path, replay_factory
):
    from pipeline.config import ConfigError
    from pipeline.context.legs import resolve

    ex = replay_factory(clock_start="2024-01-06T00:00:00Z", symbols=ODD)
    legs = {"BTCPERP": {"symbol": "BTCUSDT", "multiplier": 1}}
    top = {"exchanges": {"bybit": ["BTCPERP"]}, "bybit": {"spot_legs": legs}}
    settings, endpoint, wh = _setup(tmp_path, ex, top=top)
    day = dt.datetime(2024, 1, 5, tzinfo=UTC)
    summary = ingest_context(wh, settings, endpoint, day, day + DAY, closed_by=ex.now(), day=day)
    assert summary.rows[SPOT.name] == 1440 and not summary.unsupported
    assert summary.legs["bybit"]["BTCPERP"].how == "configured: bybit.spot_legs.BTCPERP"
    bad = {
        "exchanges": {"bybit": ["BTCPERP"]},
        "bybit": {"spot_legs": {"BTCPERP": {"symbol": "btc usdt"}}},
    }
    (tmp_path / "bad").mkdir()
    with pytest.raises(ConfigError, match="spot_legs"):
        _setup(tmp_path / "bad", ex, top=bad)
    # a coin whose own name starts with 1000, listed so on spot, is not divided by 1000
    spot = [{"symbol": "1000CATUSDT", "baseCoin": "1000CAT", "quoteCoin": "USDT"},
            {"symbol": "CATUSDT", "baseCoin": "CAT", "quoteCoin": "USDT"}]  # fmt: skip
    linear = {"symbol": "1000CATUSDT", "baseCoin": "1000CAT", "quoteCoin": "USDT"}
    leg = resolve("bybit", "1000CATUSDT", linear, spot)
    assert (leg.spot, leg.multiplier, leg.funding_interval) == ("1000CATUSDT", 1, None)


def test_a_live_run_asks_funding_when_one_of_its_markets_has_one_due(tmp_path, replay_factory):
    """BTCUSDT funds every 8 hours, WIFUSDT every 4: at 04:01 WIFUSDT's 04:00 rate is asked
    (an 8-hour grid would miss it until the day's repair), then nothing until 08:00, when
    both have one due (not a request every minute while BTCUSDT has none)."""
    two = ["BTCUSDT", "WIFUSDT"]
    ex = replay_factory(clock_start="2024-01-05T04:01:30Z", clock_speed=1e-9, symbols=two)
    settings, endpoint, wh = _setup(tmp_path, ex, top={"exchanges": {"bybit": two}})
    day = dt.datetime(2024, 1, 5, tzinfo=UTC)

    def live(t: dt.datetime):
        ex.set_clock((t + MIN + dt.timedelta(seconds=30)).isoformat())
        s = ingest_context(
            wh, settings, endpoint, t, t + MIN, closed_by=t + MIN, day=day, follow=True
        )
        return s.rows.get(FUNDING.name), s.fetched[FUNDING.name]

    at = [day + dt.timedelta(hours=4, minutes=m) for m in (0, 1, 30)]
    assert live(at[0])[0] == 3  # 00:00 of both, 04:00 of WIFUSDT
    assert live(at[1]) == (None, "not due") and live(at[2]) == (None, "not due")
    assert live(day + dt.timedelta(hours=8)) == (2, "[2024-01-05 08:00, 2024-01-05 08:01)")
    stored = wh.query("SELECT symbol, funding_time FROM funding_rates ORDER BY ALL")
    assert stored["symbol"].to_list() == ["BTCUSDT", "BTCUSDT", "WIFUSDT", "WIFUSDT", "WIFUSDT"]

"""The market context (funding, open interest, spot 1m) fetched by the real pybit client from
the replay exchange on loopback: exactly what the replay synthesized, through its faults."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from bench.common import SHARED_DATA
from pipeline.exchanges.bybit_context import BybitContext
from pipeline.exchanges.hyperliquid_context import HyperliquidContext
from pipeline.exchanges.protocol import InvalidRequest, Unsupported
from pipeline.replay import context as cx
from pipeline.replay.data import SyntheticSource

UTC = dt.UTC
JAN1 = dt.datetime(2024, 1, 1, tzinfo=UTC)
DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
REAL = SHARED_DATA / "bybit_linear_BTCUSDT_1m_2025-05-29_2025-06-29.parquet"


def ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def client(ex, **kw) -> BybitContext:
    opts = {"timeout_s": 2.0, "backoff_s": 0.01, "backoff_cap_s": 0.05, **kw}
    return BybitContext(ex.rest_url, **opts)


def funding_truth(symbol: str, a: dt.datetime, b: dt.datetime) -> list[tuple[int, float]]:
    rows = cx.funding(SyntheticSource(7), 7, symbol, ms(a), ms(b) - 1, ms(b))
    return [(int(t), float(r)) for t, r in rows]


def test_funding_history_is_the_8h_grid_settlements_of_the_range(replay_factory):
    ex = replay_factory(clock_start="2024-03-01T00:00:00Z")
    got = client(ex).fetch_funding("BTCUSDT", JAN1, JAN1 + 40 * DAY, closed_by=None)
    assert got.columns == ["symbol", "funding_time", "funding_rate"]
    assert got.height == 120  # 3 a day
    pairs = [(ms(t), r) for t, r in got.select("funding_time", "funding_rate").iter_rows()]
    assert pairs == funding_truth("BTCUSDT", JAN1, JAN1 + 40 * DAY)
    hours = got["funding_time"].dt.hour().unique().sort().to_list()
    assert hours == [0, 8, 16]
    assert got["funding_rate"].n_unique() > 10  # the premium moves it off the 0.01% floor
    assert ex.stats()["paths"]["/v5/market/funding/history"] == 5  # 200 h a page


def test_open_interest_every_5_minutes_and_only_once_its_interval_is_over(replay_factory):
    ex = replay_factory(clock_start="2024-01-03T00:07:30Z", clock_speed=1e-9)
    c = client(ex)
    got = c.fetch_open_interest("BTCUSDT", JAN1, JAN1 + 3 * DAY, closed_by=None)
    # Readings 00:00 .. 2024-01-03T00:00 are over by 00:07:30; 00:05 (over at 00:10) is not.
    assert got.height == 2 * 288 + 1
    assert got["time"].max() == JAN1 + 2 * DAY
    assert (got["time"].diff().drop_nulls() == dt.timedelta(minutes=5)).all()
    truth = cx.open_interest(
        SyntheticSource(7), 7, "BTCUSDT", ms(JAN1), ms(JAN1 + 2 * DAY), ms(JAN1 + 2 * DAY)
    )
    assert np.array_equal(got["open_interest"].to_numpy(), truth[:, 1])
    early = c.fetch_open_interest(
        "BTCUSDT", JAN1, JAN1 + DAY, closed_by=JAN1 + dt.timedelta(hours=1)
    )
    assert early["time"].max() == JAN1 + dt.timedelta(minutes=55)


def test_spot_candles_sit_a_few_basis_points_under_the_perpetual(replay_factory):
    ex = replay_factory(clock_start="2024-01-03T00:00:00Z")
    c = client(ex)
    spot = c.spot_client().fetch_klines("BTCUSDT", JAN1, JAN1 + DAY)
    perp = c.fetch_klines("BTCUSDT", JAN1, JAN1 + DAY)
    assert spot.height == perp.height == 1440
    basis = perp.join(spot, on="open_time").select(
        bps=(pl.col("close") / pl.col("close_right") - 1) * 1e4
    )["bps"]
    assert basis.abs().max() < 30 and basis.std() > 0.5  # a small basis that moves
    assert not spot.select("open", "high", "low", "close").equals(
        perp.select("open", "high", "low", "close")
    )
    assert (spot["low"] <= spot["open"]).all() and (spot["close"] <= spot["high"]).all()
    assert ex.stats()["paths"]["/v5/market/kline"] == 4  # 2 pages each


@pytest.mark.parametrize("kinds", [None, ["malformed"]], ids=["every_group", "malformed"])
def test_faults_still_give_the_clean_answer(replay_factory, kinds):
    clean = client(replay_factory(clock_start="2024-01-09T00:00:00Z"))
    ex = replay_factory(
        clock_start="2024-01-09T00:00:00Z", faults=0.5, long_delay_s=1.5, fault_kinds=kinds
    )
    faulty = client(ex, timeout_s=1.0, max_retries=30, malformed_retries=30)
    end = JAN1 + 7 * DAY
    for symbol in ("BTCUSDT", "SOLUSDT"):
        for get in ("fetch_funding", "fetch_open_interest"):
            want = getattr(clean, get)(symbol, JAN1, end, closed_by=None)
            assert getattr(faulty, get)(symbol, JAN1, end, closed_by=None).equals(want)
        want = clean.spot_client().fetch_klines(symbol, JAN1, JAN1 + DAY)
        assert faulty.spot_client().fetch_klines(symbol, JAN1, JAN1 + DAY).equals(want)
    faults = ex.stats()["faults"]
    assert sum(faults.values()) >= 15, faults
    if kinds:  # each malformed variant was detected (else the answers would differ)
        assert len(faults) >= 8, faults


def test_unknown_symbols_and_venues_without_context_are_refused_by_name(replay_factory):
    c = client(replay_factory(clock_start="2024-01-02T00:00:00Z"))
    with pytest.raises(InvalidRequest, match="Not supported symbols"):
        c.fetch_funding("NOPEUSDT", JAN1, JAN1 + DAY, closed_by=None)
    with pytest.raises(InvalidRequest, match="Not supported symbols"):
        c.fetch_open_interest("NOPEUSDT", JAN1, JAN1 + DAY, closed_by=None)
    hl = HyperliquidContext()
    for call in (
        lambda: hl.fetch_funding("BTC", JAN1, JAN1 + DAY, closed_by=None),
        lambda: hl.fetch_open_interest("BTC", JAN1, JAN1 + DAY, closed_by=None),
        lambda: hl.fetch_spot("BTC", JAN1, JAN1 + DAY, closed_by=None),
    ):
        with pytest.raises(Unsupported, match="hyperliquid cannot supply") as err:
            call()
        assert err.value.why  # the venue's reason, for the asset's metadata


@pytest.mark.skipif(
    not REAL.is_file(), reason=f"no real candles at {REAL}: CI has ../shared/data (see its README)"
)
def test_real_bybit_candles_get_a_spot_leg_funding_and_open_interest(replay_factory):
    """The replay serving the real BTCUSDT perpetual month: the spot leg is the real candles
    less the synthesized premium, funding and open interest exist only inside the file."""
    ex = replay_factory(data=REAL, clock_start="2025-07-01T00:00:00Z")
    c = client(ex)
    day = dt.datetime(2025, 6, 10, tzinfo=UTC)
    perp = c.fetch_klines("BTCUSDT", day, day + DAY)
    spot = c.spot_client().fetch_klines("BTCUSDT", day, day + DAY)
    assert perp.height == spot.height == 1440
    joined = perp.join(spot, on="open_time")
    bps = ((joined["close"] / joined["close_right"] - 1) * 1e4).abs()
    assert bps.max() < 30 and bps.mean() > 0.5
    real = pl.read_parquet(REAL).filter(pl.col("ts").is_between(ms(day), ms(day + DAY) - 1))
    assert np.allclose(perp["close"].to_numpy(), real["close"].to_numpy(), rtol=0, atol=1e-9)
    funding = c.fetch_funding("BTCUSDT", day - 30 * DAY, day + 60 * DAY, closed_by=None)
    first, last = funding["funding_time"].min(), funding["funding_time"].max()
    assert first == dt.datetime(2025, 5, 30, tzinfo=UTC)  # the file starts 05-29 19:00
    assert last == dt.datetime(2025, 6, 29, 16, tzinfo=UTC)  # and ends 06-29 16:38
    oi = c.fetch_open_interest("BTCUSDT", day, day + DAY, closed_by=None)
    assert oi.height == 288 and oi["open_interest"].min() > 0


# -- each perpetual's spot pair, multiplier and funding interval (pipeline/context/legs.py) --
ODD = ["BTCUSDT", "1000PEPEUSDT", "WIFUSDT", "BTCPERP"]  # BTCPERP: USDC, no spot pair here


def test_a_multiplied_perpetual_takes_its_spot_pair_in_its_own_units(replay_factory):
    """1000PEPEUSDT (baseCoin 1000PEPE) has no spot pair of its name, as on Bybit: its spot
    leg is PEPEUSDT, 1000x cheaper, returned x 1000 under the perpetual's symbol, so the
    basis is the replay's premium again (not -99.9 %)."""
    ex = replay_factory(clock_start="2024-01-03T00:00:00Z", symbols=ODD)
    c = client(ex)
    leg = c.legs(["1000PEPEUSDT"])["1000PEPEUSDT"]
    assert (leg.spot, leg.multiplier, leg.funding_interval) == ("PEPEUSDT", 1000, 8 * HOUR)
    assert "baseCoin 1000PEPE = 1000 x spot baseCoin PEPE" in leg.how
    with pytest.raises(InvalidRequest, match="Not supported symbols"):  # the name as it is
        c.spot_client().fetch_klines("1000PEPEUSDT", JAN1, JAN1 + DAY)
    spot = c.fetch_spot("1000PEPEUSDT", JAN1, JAN1 + DAY, closed_by=None)
    raw = c.spot_client().fetch_klines("PEPEUSDT", JAN1, JAN1 + DAY)
    assert spot["symbol"].unique().to_list() == ["1000PEPEUSDT"]
    assert np.allclose(spot["close"], raw["close"] * 1000, rtol=1e-12, atol=0)
    assert np.allclose(spot["volume"], raw["volume"] / 1000, rtol=1e-12, atol=0)
    assert spot["turnover"].equals(raw["turnover"])  # quote coin: the same either way
    perp = c.fetch_klines("1000PEPEUSDT", JAN1, JAN1 + DAY)
    joined = perp.join(spot, on="open_time", suffix="_spot")
    bps = (joined["close"] / joined["close_spot"] - 1).to_numpy() * 1e4
    truth = cx.premium(7, "1000PEPEUSDT", np.array([ms(t) for t in joined["open_time"]])) * 1e4
    # tolerance: the spot price's last decimal (5 significant digits) is < 0.5 bp of it
    assert len(bps) == 1440 and np.abs(bps - truth).max() < 0.5


def test_a_perpetual_without_a_spot_pair_is_refused_by_name_unless_configured(replay_factory):
    ex = replay_factory(clock_start="2024-01-03T00:00:00Z", symbols=ODD)
    leg = client(ex).legs(["BTCPERP"])["BTCPERP"]
    assert leg.spot is None
    for words in ("bybit:BTCPERP", "baseCoin 'BTC'", "'USDC'", "spot_legs", "basis_bps is NULL"):
        assert words in leg.how
    with pytest.raises(Unsupported, match="bybit:BTCPERP") as err:
        client(ex).fetch_spot("BTCPERP", JAN1, JAN1 + DAY, closed_by=None)
    assert err.value.data == "spot_klines_1m"
    before = ex.stats()["paths"]["/v5/market/instruments-info"]
    assert client(ex).legs(["BTCPERP"], {"BTCPERP": leg})["BTCPERP"] == leg  # reused: no request
    assert ex.stats()["paths"]["/v5/market/instruments-info"] == before
    configured = client(ex, spot_legs={"BTCPERP": ("BTCUSDT", 1)})
    leg = configured.legs(["BTCPERP"], {"BTCPERP": leg})["BTCPERP"]  # configured since: asked
    assert (leg.spot, leg.multiplier, leg.how) == (
        "BTCUSDT",
        1,
        "configured: bybit.spot_legs.BTCPERP",
    )
    assert configured.fetch_spot("BTCPERP", JAN1, JAN1 + DAY, closed_by=None).height == 1440
    wrong = client(ex, spot_legs={"BTCPERP": ("BTCUSDC", 1)}).legs(["BTCPERP"])["BTCPERP"]
    assert wrong.spot is None and "names spot pair BTCUSDC, which bybit spot does not list" in (
        wrong.how
    )


def test_a_4_hour_market_states_its_interval_and_funds_on_it(replay_factory):
    ex = replay_factory(clock_start="2024-01-03T00:00:00Z", symbols=ODD)
    c = client(ex)
    legs = c.legs(["BTCUSDT", "WIFUSDT"])
    assert legs["WIFUSDT"].funding_interval == 4 * HOUR
    assert legs["BTCUSDT"].funding_interval == 8 * HOUR
    got = c.fetch_funding("WIFUSDT", JAN1, JAN1 + DAY, closed_by=None)
    assert got["funding_time"].dt.hour().to_list() == [0, 4, 8, 12, 16, 20]
    assert [(ms(t), r) for t, r in got.select("funding_time", "funding_rate").iter_rows()] == (
        funding_truth("WIFUSDT", JAN1, JAN1 + DAY)
    )

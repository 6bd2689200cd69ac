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

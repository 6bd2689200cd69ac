"""A whole market on the replay exchange, and Bybit's rate limit on both sides of the wire.

The replay lists any number of seeded symbols (cursor-paged instruments, 24h tickers), counts
requests per IP and endpoint, sends Bybit's X-Bapi-Limit headers and answers 10006 beyond the
limit; the Bybit client reads those headers and paces itself, and recovers from a 10006.
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from pipeline.exchanges.bybit import BybitClient
from pipeline.markets import UNIVERSE_EXTRAS, synthetic_universe

DAY = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)


def get(ex, path: str, **params: str) -> requests.Response:
    return requests.get(f"{ex.rest_url}{path}", params=params, timeout=5)


def test_a_whole_market_is_listed_in_cursor_pages_and_has_tickers(replay_factory):
    symbols = synthetic_universe(120)
    # A still clock: the 24 h figures are compared across requests and exchanges, which a
    # minute roll between them (a loaded machine can take a minute here) would change.
    still = 1e-6
    ex = replay_factory(clock_start=DAY, clock_speed=still, symbols=symbols)
    seen, cursor, pages = [], "", 0
    while True:
        body = get(ex, "/v5/market/instruments-info", category="linear", limit="50",
                   cursor=cursor).json()  # fmt: skip
        assert body["retCode"] == 0
        seen += body["result"]["list"]
        cursor, pages = body["result"]["nextPageCursor"], pages + 1
        if not cursor:
            break
    assert pages == 3 and sorted(i["symbol"] for i in seen) == sorted(symbols)
    by_symbol = {i["symbol"]: i for i in seen}
    assert by_symbol["BTCUSDT"]["status"] == "Trading" and "ETHUSDT" in by_symbol
    assert by_symbol["BTCPERP"]["quoteCoin"] == "USDC"
    assert by_symbol["NEWCOINUSDT"]["status"] == "PreLaunch"
    with BybitClient(ex.rest_url) as c:  # the client follows the cursor too (1000 a page)
        assert c.instruments() == sorted(symbols)
        turnover = c.turnovers_24h()
    assert sorted(turnover) == sorted(symbols)
    assert turnover["BTCUSDT"] > turnover["ETHUSDT"] > 1e9
    assert min(turnover.values()) < 1e7  # a spread that a filter can cut
    # Deterministic: another exchange with the same seed and clock says the same.
    again = replay_factory(clock_start=DAY, clock_speed=still, symbols=symbols)
    with BybitClient(again.rest_url) as c:
        assert c.turnovers_24h() == turnover
    one = get(ex, "/v5/market/tickers", category="linear", symbol="SOLUSDT").json()
    (ticker,) = one["result"]["list"]
    close = float(get(ex, "/v5/market/kline", category="linear", symbol="SOLUSDT",
                      interval="1", limit="1").json()["result"]["list"][0][4])  # fmt: skip
    assert float(ticker["lastPrice"]) == pytest.approx(close, rel=1e-12)
    bad = get(ex, "/v5/market/tickers", category="linear", symbol="NOPEUSDT").json()
    assert bad["retCode"] == 10001


def test_a_count_of_symbols_is_a_generated_universe():
    from pipeline.replay.data import make_source

    listed = make_source(7, None, ["40"]).listed()
    assert len(listed) == 40 + len(UNIVERSE_EXTRAS)
    assert {"BTCUSDT", "ETHUSDT"} <= set(listed)


def test_the_limit_is_reported_and_enforced_per_endpoint(replay_factory):
    ex = replay_factory(rate_limit=3, rate_window_s=30.0)
    answers = [get(ex, "/v5/market/time") for _ in range(4)]
    assert [r.headers["X-Bapi-Limit-Status"] for r in answers[:3]] == ["2", "1", "0"]
    assert {r.headers["X-Bapi-Limit"] for r in answers} == {"3"}
    assert answers[3].json()["retCode"] == 10006
    reset = int(answers[3].headers["X-Bapi-Limit-Reset-Timestamp"])
    assert reset > answers[2].json()["time"] - 10_000  # in the window, on the wall clock
    # Another endpoint has its own budget.
    other = get(ex, "/v5/market/kline", category="linear", symbol="BTCUSDT", interval="1")
    assert other.json()["retCode"] == 0 and other.headers["X-Bapi-Limit-Status"] == "2"
    assert ex.stats()["rate_limited"] == 1


def test_the_default_limit_leaves_todays_traffic_alone(replay):
    r = get(replay, "/v5/market/time")
    assert int(r.headers["X-Bapi-Limit"]) >= 600 and r.json()["retCode"] == 0


def _backfill(c: BybitClient, symbols: list[str]) -> int:
    jobs = [(s, DAY, DAY + dt.timedelta(minutes=100)) for s in symbols]
    with ThreadPoolExecutor(4) as pool:
        frames = list(pool.map(lambda j: c.fetch_klines(*j), jobs))
    return sum(f.height for f in frames)


def test_the_client_paces_itself_under_the_limit(replay_factory):
    symbols = synthetic_universe(24)[:24]
    ex = replay_factory(clock_start="2024-03-02T00:00:00Z", symbols=symbols, rate_limit=8,
                        rate_window_s=0.5)  # fmt: skip
    with BybitClient(ex.rest_url, backoff_s=0.01) as c:
        assert _backfill(c, symbols) == 24 * 100
        assert ex.stats()["rate_limited"] == 0  # never ran into the limit
        assert c.pacer.waits > 0  # it had to wait: 24 pages at 16/s


def test_the_client_never_waits_with_room_to_spare(replay_factory):
    symbols = synthetic_universe(24)[:24]
    ex = replay_factory(clock_start="2024-03-02T00:00:00Z", symbols=symbols)
    with BybitClient(ex.rest_url) as c:
        assert _backfill(c, symbols) == 24 * 100
        assert c.pacer.waits == 0 and c.pacer.slept_s == 0


def test_the_client_recovers_from_a_10006(replay_factory):
    ex = replay_factory(clock_start="2024-03-02T00:00:00Z", rate_limit=2, rate_window_s=0.4)
    for _ in range(2):  # someone else on this IP uses the budget up
        get(ex, "/v5/market/kline", category="linear", symbol="BTCUSDT", interval="1")
    with BybitClient(ex.rest_url, backoff_s=0.01) as c:
        got = c.fetch_klines("BTCUSDT", DAY, DAY + dt.timedelta(minutes=10))
    assert got.height == 10
    assert ex.stats()["rate_limited"] == 1  # one 10006, then it waited for the reset


def test_a_backfill_of_many_symbols_reports_each_ones_progress(tmp_path, replay_factory):
    """Every symbol's windows in one paced pool; the progress records say, per market, how
    many minutes have been fetched (the last one: all of them, for every market)."""
    from pipeline.config import load_settings
    from pipeline.exchanges.ingest import ingest
    from pipeline.exchanges.sources import replay_endpoint
    from warehouse import connect

    symbols = synthetic_universe(12)[:12]
    ex = replay_factory(clock_start="2024-03-04T00:00:00Z", symbols=symbols, rate_limit=40,
                        rate_window_s=0.5)  # fmt: skip
    cfg = tmp_path / "signalbox.yaml"
    cfg.write_text(f"home: {tmp_path / 'home'}\nsource: replay\nsymbols: [{', '.join(symbols)}]\n")
    settings = load_settings(cfg, env={"SIGNALBOX_BYBIT_URL": ex.rest_url})
    ep = replay_endpoint(settings)
    reports: list[tuple[int, int, dict[str, int]]] = []
    minutes = 3000  # 3 windows a symbol: 36 requests at 80/s
    summary = ingest(settings, ep, DAY, DAY + dt.timedelta(minutes=minutes),
                     progress=lambda done, total, note, markets: reports.append(
                         (done, total, markets)))  # fmt: skip
    assert summary.rows == 12 * minutes and ex.stats()["rate_limited"] == 0
    done, total, markets = reports[-1]
    assert done == total == 12 * minutes
    assert markets == {f"bybit:{s}": minutes for s in symbols}
    with connect(settings.warehouse_dir / f"{ep.warehouse_id}.duckdb", read_only=True) as con:
        assert con.execute("SELECT count(DISTINCT symbol) FROM klines_1m").fetchone() == (12,)

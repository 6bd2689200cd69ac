"""`exchanges: {bybit: all}` (or `symbols: all`): every trading USDT perpetual of the
exchange's instrument list, filtered by 24h turnover, cached in the home, refreshed daily,
and refused in one line whenever it cannot be resolved. Against the real replay exchange on
loopback, serving a whole seeded market."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_settings
from pipeline.exchanges import universe
from pipeline.exchanges.protocol import Endpoint
from pipeline.exchanges.sources import replay_endpoint
from pipeline.markets import UNIVERSE_EXTRAS, Market, synthetic_universe, universe_path
from pipeline.replay import instruments

N = 40
MARKET = synthetic_universe(N)
PERPETUALS = sorted(s for s in MARKET if s not in UNIVERSE_EXTRAS)
DAY = "2024-03-01T12:00:00Z"


def settings_for(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    cfg = tmp_path / "signalbox.yaml"
    cfg.write_text(f"home: {tmp_path / 'home'}\nsource: replay\n{text}")
    return load_settings(cfg, env=env or {})


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("exchanges: {hyperliquid: all}", "`all` is supported for bybit only"),
        ("exchanges: {bybit: everything}", "neither a list of symbols nor `all`"),
        ("exchanges: {bybit: [all, BTCUSDT]}", "`all` stands alone"),
        ("bybit: {min_turnover_24h: 1000000}", "filters `exchanges: {bybit: all}` only"),
        ("symbols: all\nbybit: {min_turnover_24h: -5}", "greater than or equal to 0"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path, text, says):
    with pytest.raises(ConfigError) as err:
        settings_for(tmp_path, text)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_all_is_written_three_ways_and_needs_resolving_first(tmp_path):
    for text, env in [
        ("exchanges: {bybit: all}", None),
        ("symbols: ALL", None),
        ("", {"SIGNALBOX_SYMBOLS": "all"}),
    ]:
        s = settings_for(tmp_path, text, env)
        assert s.exchanges == {"bybit": "all"}
    with pytest.raises(ConfigError, match=r"not resolved in this home yet.*signalbox up"):
        s.markets  # noqa: B018 (the property is the behaviour)
    # A run process is handed the resolved list; the file's filter is then no mistake.
    text = "symbols: all\nbybit: {min_turnover_24h: 5}"
    s = settings_for(tmp_path, text, {"SIGNALBOX_SYMBOLS": "BTCUSDT,ETHUSDT"})
    assert s.symbols == ["BTCUSDT", "ETHUSDT"]


@pytest.fixture
def market(replay_factory):
    return replay_factory(clock_start=DAY, symbols=MARKET)


def home(tmp_path: Path, ex, extra: str = ""):
    """Settings of a home whose source is `ex`, and its endpoint."""
    s = settings_for(tmp_path, f"exchanges: {{bybit: all}}\n{extra}",
                     {"SIGNALBOX_BYBIT_URL": ex.rest_url})  # fmt: skip
    return s, replay_endpoint(s)


def test_resolves_every_trading_usdt_perpetual(tmp_path, market):
    s, ep = home(tmp_path, market)
    rec = universe.ensure(s, ep)
    assert rec is not None and rec["symbols"] == PERPETUALS  # no USDC perp, no PreLaunch
    assert s.markets == [Market("bybit", x) for x in PERPETUALS]
    assert universe.summary(s).startswith(f"{N} of {N} trading USDT perpetuals (no turnover")


def test_the_turnover_filter_keeps_what_the_tickers_say(tmp_path, market):
    s, ep = home(tmp_path, market, "bybit: {min_turnover_24h: 100000000}")
    universe.ensure(s, ep)
    day = market.clock.now_ms() // 86_400_000
    want = [x for x in PERPETUALS if instruments.turnover_24h(7, x, day) >= 1e8]
    assert 2 <= len(want) < N  # the seeded market has something to filter
    assert [m.symbol for m in s.markets] == want
    # Another filter: what was resolved no longer counts, until resolved again.
    other = s.model_copy(update={"bybit": s.bybit.model_copy(update={"min_turnover_24h": 1e9})})
    with pytest.raises(ConfigError, match=r"min_turnover_24h = 100000000\.0"):
        other.markets  # noqa: B018
    universe.ensure(other, ep)
    assert {m.symbol for m in other.markets} < set(want)


def test_a_filter_that_keeps_nothing_is_an_error_naming_it(tmp_path, market):
    s, ep = home(tmp_path, market, "bybit: {min_turnover_24h: 1.0e+15}")
    with pytest.raises(universe.UniverseError, match="min_turnover_24h = 1,000,000,000,000,000"):
        universe.ensure(s, ep)
    assert not universe_path(s.home, "bybit").exists()


def test_cached_then_refreshed_daily(tmp_path, market):
    s, ep = home(tmp_path, market)
    t0 = dt.datetime.now(dt.UTC)
    universe.ensure(s, ep, now=t0)
    asked = market.stats()["paths"]["/v5/market/instruments-info"]
    assert universe.ensure(s, ep, now=t0 + dt.timedelta(hours=23)) is None  # cached
    assert market.stats()["paths"]["/v5/market/instruments-info"] == asked
    rec = universe.ensure(s, ep, now=t0 + dt.timedelta(hours=25))  # a day on: asked again
    assert rec is not None and rec["resolved_at"] > t0.isoformat()
    assert market.stats()["paths"]["/v5/market/instruments-info"] == asked + 1


def test_an_unreachable_list_is_refused_never_replaced(tmp_path, market):
    s, ep = home(tmp_path, market)
    dead = Endpoint(ep.kind, "http://127.0.0.1:9", ep.ws_url, ep.warehouse_id, ep.label)
    with pytest.raises(universe.UniverseError, match=r"could not be fetched.*Nothing was run"):
        universe.ensure(s, dead)
    assert not universe_path(s.home, "bybit").exists()
    # A day-old list is not used instead either.
    universe.ensure(s, ep, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    with pytest.raises(universe.UniverseError, match="could not be fetched"):
        universe.ensure(s, dead)


def test_opening_the_exchange_resolves_it_and_config_show_says_so(tmp_path, market, capsys):
    from pipeline.runtime.configview import show_main
    from pipeline.runtime.processes import open_exchange

    s, ep = home(tmp_path, market)
    _, proc = open_exchange(s, ep)
    assert proc is None and len(s.markets) == N
    cfg = tmp_path / "signalbox.yaml"
    doc = yaml.safe_load(cfg.read_text())
    cfg.write_text(yaml.safe_dump({**doc, "bybit": {"rest_url": market.rest_url}}))
    capsys.readouterr()
    assert show_main(str(cfg)) == 0
    assert f"# bybit: all -> {N} of {N} trading USDT perpetuals" in capsys.readouterr().out


def test_a_running_pipeline_refreshes_it_when_a_day_old(tmp_path, market, monkeypatch):
    """`up` runs for days: a Dagster process asking for a client resolves a stale `all`."""
    import json
    from dataclasses import asdict

    from pipeline.orchestration.resources import resources

    s, ep = home(tmp_path, market)
    universe.ensure(s, ep, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=1, minutes=1))
    stale = universe.summary(s)
    assert stale.endswith("due for its daily refresh")
    monkeypatch.delenv("SIGNALBOX_HOME", raising=False)
    monkeypatch.setenv("SIGNALBOX_BYBIT_URL", market.rest_url)
    res = resources(str(tmp_path / "signalbox.yaml"), endpoint=json.dumps(asdict(ep)))
    res["exchange"].client("bybit", quick=True).close()
    assert universe.summary(s) != stale and "due" not in universe.summary(s)


@pytest.mark.slow
def test_a_backfill_of_all_resolves_and_stores_exactly_that(tmp_path):
    """End to end, offline (~15 s): `signalbox backfill` with `symbols: all` and a turnover
    filter starts the replay (a 12-symbol market), resolves, and stores those symbols only."""
    from tests.test_sources import cli, config
    from warehouse import connect

    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    cfg = config(
        tmp_path, start_date=yesterday, source="replay", symbols="all",
        bybit={"min_turnover_24h": 3e8}, replay={"symbols": 12, "port": 0},
        personalities=["scalping"], timeframes=["1m", "5m"],
    )  # fmt: skip
    r = cli(cfg, "backfill", "--start", yesterday, "--end", yesterday, "--assets", "klines_1m")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "backfilling bybit:all" in r.stderr and "bybit: all -> " in r.stderr
    rec = yaml.safe_load((tmp_path / "home" / "universe" / "bybit.json").read_text())
    assert 2 <= len(rec["symbols"]) < 12 and rec["min_turnover_24h"] == 3e8
    with connect(tmp_path / "home" / "warehouse" / "replay.duckdb", read_only=True) as con:
        stored = {row[0] for row in con.execute("SELECT DISTINCT symbol FROM klines_1m").fetchall()}
    assert stored == set(rec["symbols"])

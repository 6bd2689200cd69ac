"""`signalbox backtest` per market (exchange, symbol): the real CLI in a subprocess, real Dagster
runs, one home backfilled for two days from both faces of the replay exchange on loopback.

The home configures Bybit's BTCUSDT and ETHUSDT and Hyperliquid's BTC, and backfills only
bybit:BTCUSDT and hyperliquid:BTC (`--symbols`), so ETHUSDT is a configured market without
candles. `--symbol` names one market (`venue:SYMBOL`, or a bare symbol configured on exactly one
venue); without it every configured market with something to trade is backtested, each with
its own summary. An ambiguous or unknown `--symbol` is one line, exit 2, and starts no run.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipeline.markets import Market, find_market
from tests.daemon import write_config
from tests.test_backtest_cli import CONFIG, DAYS, dagster_runs, one_line, run_cli

EXCHANGES = {"bybit": ["BTCUSDT", "ETHUSDT"], "hyperliquid": ["BTC"]}
STORED = "bybit:BTCUSDT,hyperliquid:BTC"
SCALPING_DAY = ["--personality", "scalping", "--timerange", "20240102-20240103"]  # warm from 01-01


@pytest.fixture(scope="module")
def exchange():
    from pipeline.replay import ReplayExchange

    with ReplayExchange(seed=7) as ex:
        yield ex


@pytest.fixture(scope="module")
def home(tmp_path_factory, exchange) -> Path:
    """2024-01-01..02 of bybit:BTCUSDT and hyperliquid:BTC: candles, indicators, signals."""
    home = tmp_path_factory.mktemp("two-venue-home")
    write_config(home, top={**CONFIG, "exchanges": EXCHANGES})
    r = run_cli(["backfill", *DAYS, "--symbols", STORED], home, exchange)
    assert r.returncode == 0, r.stderr[-3000:]
    return home


def summaries(r: subprocess.CompletedProcess) -> dict[str, dict]:
    """Each printed summary's title line -> the summary.json beside the report it names."""
    lines = r.stdout.strip().splitlines()
    titles = [line for line in lines if line.startswith("Backtest ")]
    reports = [Path(x.removeprefix("report: ")) for x in lines if x.startswith("report: ")]
    assert len(titles) == len(reports), r.stdout
    return {
        t: json.loads((p.parent / "summary.json").read_text())
        for t, p in zip(titles, reports, strict=True)
    }


def test_symbol_backtests_one_market_of_two_venues(home, exchange) -> None:
    before = dagster_runs(home)
    r = run_cli(["backtest", *SCALPING_DAY, "--symbol", "hyperliquid:BTC"], home, exchange)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "backtesting scalping on hyperliquid:BTC, 2024-01-02" in r.stderr
    (title, saved), *more = summaries(r).items()
    assert more == []
    assert title.startswith("Backtest scalping on hyperliquid:BTC (1m, 5m), 2024-01-02 00:00")
    assert saved["symbol"] == "BTC" and "_hyperliquid-BTC_" in Path(saved["report"]).parent.name
    assert len(dagster_runs(home)) == len(before) + 1


def test_without_symbol_every_configured_market_is_backtested(home, exchange) -> None:
    r = run_cli(["backtest", *SCALPING_DAY], home, exchange)
    assert r.returncode == 0, r.stderr[-3000:]
    # configured, never backfilled: skipped by name, with the backfill that fixes it
    assert "warning: skipped bybit:ETHUSDT: no candles stored; scalping needs" in r.stderr
    assert "backfill `signalbox backfill --start 2024-01-01 --end 2024-01-02`\n" in r.stderr
    assert "backtesting scalping on bybit:BTCUSDT, hyperliquid:BTC, 2024-01-02" in r.stderr
    found = summaries(r)
    assert [t.split(" (")[0] for t in found] == [
        "Backtest scalping on BTCUSDT",
        "Backtest scalping on hyperliquid:BTC",
    ]
    bybit, hyper = found.values()
    assert (bybit["symbol"], hyper["symbol"]) == ("BTCUSDT", "BTC")
    assert bybit["report"] != hyper["report"]
    # the venues' series differ, so their backtests do (nothing was mixed between them)
    assert bybit["metrics"] != hyper["metrics"]


def test_warm_up_is_refused_per_market(home, exchange) -> None:
    """swing needs 9 days: each market is refused on its own line, naming its backfill."""
    before = dagster_runs(home)
    r = run_cli(["backtest", "--personality", "swing", *DAYS], home, exchange)
    assert r.returncode == 1, r.stderr[-2000:]
    refused = [x for x in r.stderr.splitlines() if x.startswith("signalbox backtest: ")]
    assert [x.split(": ")[2] for x in refused] == [
        "bybit:BTCUSDT",
        "bybit:ETHUSDT",
        "hyperliquid:BTC",
    ]
    for line in refused:
        assert line.endswith("`signalbox backfill --start 2023-12-23 --end 2024-01-02`"), line
    assert dagster_runs(home) == before


def test_an_unconfigured_market_names_it_in_the_backfill(home, exchange) -> None:
    """A config listing Bybit only, on the same home: hyperliquid:BTC is still backtestable
    by name, and the backfill it needs says `--symbols hyperliquid:BTC`."""
    import yaml

    data = yaml.safe_load((home / "signalbox.yaml").read_text())
    bybit_only = home / "bybit-only.yaml"
    bybit_only.write_text(yaml.safe_dump({**data, "exchanges": {"bybit": ["BTCUSDT"]}}))
    before = dagster_runs(home)
    r = run_cli(
        ["backtest", "--personality", "swing", *DAYS, "--symbol", "hyperliquid:BTC"],
        home,
        exchange,
        config=bybit_only,
    )
    assert r.returncode == 1, r.stderr[-2000:]
    line = one_line(r)
    assert line.startswith("signalbox backtest: nothing to backtest: hyperliquid:BTC: the whole")
    assert line.endswith(
        "`signalbox backfill --start 2023-12-23 --end 2024-01-02 --symbols hyperliquid:BTC`"
    )
    assert dagster_runs(home) == before


def test_an_unknown_symbol_is_refused_and_starts_no_run(home, exchange) -> None:
    before = dagster_runs(home)
    r = run_cli(["backtest", *SCALPING_DAY, "--symbol", "ETH"], home, exchange)
    assert r.returncode == 2, r.stderr[-2000:]
    assert one_line(r) == (
        "signalbox backtest: --symbol ETH: 'ETH' is not a configured market (configured: "
        "bybit:BTCUSDT, bybit:ETHUSDT, hyperliquid:BTC); for another, name its venue as "
        "venue:SYMBOL (venues: bybit, hyperliquid)"
    )
    assert dagster_runs(home) == before


def test_a_symbol_on_two_venues_is_ambiguous(tmp_path: Path, exchange) -> None:
    write_config(tmp_path, top={**CONFIG, "exchanges": {"bybit": ["BTC"], "hyperliquid": ["BTC"]}})
    r = run_cli(["backtest", *SCALPING_DAY, "--symbol", "BTC"], tmp_path, exchange)
    assert r.returncode == 2, r.stderr[-2000:]
    assert one_line(r) == (
        "signalbox backtest: --symbol BTC: 'BTC' is configured on 2 venues "
        "(bybit:BTC, hyperliquid:BTC): name one as venue:SYMBOL"
    )
    assert dagster_runs(tmp_path) == []


def test_find_market_reads_what_people_type() -> None:
    configured = [Market("bybit", "BTCUSDT"), Market("hyperliquid", "BTC")]
    kpepe = Market("hyperliquid", "kPEPE")
    assert find_market("hyperliquid:BTC", configured) == configured[1]
    assert find_market("btc", configured) == configured[1]  # bare, one venue: that market
    assert find_market("btcusdt", configured) == configured[0]
    assert find_market("bybit:ethusdt", configured) == Market("bybit", "ETHUSDT")  # not configured
    assert find_market("hyperliquid:kPEPE", configured) == kpepe  # coins keep their case
    with pytest.raises(ValueError, match="'XRP' is not a configured market"):
        find_market("XRP", configured)
    with pytest.raises(ValueError, match="'BTC' is configured on 2 venues"):
        find_market("BTC", [Market("bybit", "BTC"), Market("hyperliquid", "BTC")])
    with pytest.raises(ValueError, match=r"'kraken' is not a known exchange \(known: bybit, "):
        find_market("kraken:BTC", configured)
    with pytest.raises(ValueError, match="names 2 markets: give one"):
        find_market("bybit:BTCUSDT,hyperliquid:BTC", configured)
    with pytest.raises(ValueError, match="hyperliquid: 'btc!' is not a symbol there"):
        find_market("hyperliquid:btc!", configured)

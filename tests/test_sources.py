"""A home has one source: decided once, recorded, checked; never another exchange's candles.

Real CLI processes, real replay exchanges on loopback (one serving a file of candles), real
DuckDB files. What each test guards came from a reproduced failure: one 503 made a backfill
fill the warehouse of a real-data source with synthetic candles, an unknown symbol was
invented and stored, and `--config X` never reached the replay exchange the CLI started.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import ConfigError, load_settings
from pipeline.exchanges.protocol import Endpoint
from pipeline.exchanges.sources import (
    SourceError,
    home_source,
    recorded,
    replay_health,
    warehouse_for,
)
from pipeline.runtime.processes import open_exchange, stop
from tests.test_replay_data import JAN1, candles_file, klines
from warehouse import connect

CLI = [sys.executable, "-m", "pipeline.runtime.cli"]
FILE_NAME = "bybit_linear_BTCUSDT_1m_test.parquet"


def config(tmp_path: Path, **top: object) -> Path:
    """A configuration file in `tmp_path` with its own home; `top` keys replace defaults."""
    data = {"home": str(tmp_path / "home"), "start_date": "2024-01-01", **top}
    path = tmp_path / "signalbox.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(cfg: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALBOX_")}
    return subprocess.run(
        [*CLI, "--config", str(cfg), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def backfill_jan1(cfg: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
    """`signalbox backfill` of 2024-01-01 (`extra`: more arguments)."""
    return cli(cfg, "backfill", "--start", "2024-01-01", "--end", "2024-01-01", *extra, **env)


def rows(home: Path, ident: str) -> list[tuple]:
    path = home / "warehouse" / f"{ident}.duckdb"
    if not path.exists():
        return []
    with connect(path, read_only=True) as con:
        return con.execute(
            "SELECT epoch_ms(open_time), open, high, low, close FROM klines_1m ORDER BY 1"
        ).fetchall()


def test_one_503_is_retried_and_the_file_s_candles_are_stored(tmp_path, replay_factory):
    """The reproduced case: the configured exchange (a file) answers one 503 at the probe."""
    data = tmp_path / FILE_NAME
    truth = candles_file(data)
    ex = replay_factory(data=data, clock_start="2024-01-03T00:00:00Z")
    ex.set_faults(rate=1.0, kinds=["http_503"], count=1)
    cfg = config(tmp_path, source="replay", replay={"data": str(data)})
    r = backfill_jan1(cfg, "--assets", "klines_1m", SIGNALBOX_BYBIT_URL=ex.rest_url)
    assert r.returncode == 0, r.stderr[-3000:]
    got = rows(tmp_path / "home", "replay-bybit-linear-btcusdt-1m-test")
    want = [(int(t), o, h, lo, c) for t, o, h, lo, c, *_ in truth[:1440].tolist()]
    assert got == want
    assert not (tmp_path / "home" / "warehouse" / "replay.duckdb").exists()


def test_an_exchange_that_keeps_failing_is_never_replaced(tmp_path, replay_factory):
    data = tmp_path / FILE_NAME
    candles_file(data)
    ex = replay_factory(data=data, clock_start="2024-01-03T00:00:00Z")
    ex.set_faults(rate=1.0, kinds=["http_503"])
    cfg = config(
        tmp_path, source="replay", replay={"data": str(data)}, bybit={"probe_timeout_s": 1}
    )
    r = backfill_jan1(cfg, SIGNALBOX_BYBIT_URL=ex.rest_url)
    assert r.returncode == 2, r.stderr[-3000:]
    assert ex.rest_url in r.stderr and "HTTP 503" in r.stderr and "never substitutes" in r.stderr
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "home").glob("warehouse/*.duckdb"))  # nothing written anywhere


def test_an_exchange_serving_another_market_is_refused_before_any_write(tmp_path, replay_factory):
    """A run process talking to the wrong exchange (URLs say nothing) writes nothing."""
    from pipeline.exchanges.ingest import ingest

    ex = replay_factory(clock_start="2024-01-03T00:00:00Z")  # the synthetic market, seed 7
    settings = load_settings(config(tmp_path, source="replay"), env={})
    ep = Endpoint("replay", ex.rest_url, ex.ws_url, "replay-real-file", "replay file=real.parquet")
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(
        SourceError, match=r"serves the replay market 'replay'.*Nothing was written"
    ):
        ingest(settings, ep, start, start + dt.timedelta(hours=1))
    assert not (settings.warehouse_dir / "replay-real-file.duckdb").exists()
    # ...and a replay posing as live Bybit is no more Bybit than it is that file
    bybit = Endpoint("bybit", ex.rest_url, ex.ws_url, "bybit", "bybit api.bybit.com")
    with pytest.raises(SourceError, match="this home's source is bybit"):
        ingest(settings, bybit, start, start + dt.timedelta(hours=1))


def test_the_home_s_source_is_recorded_and_a_different_one_refused(tmp_path, replay_factory):
    ex = replay_factory(clock_start="2024-01-03T00:00:00Z")
    cfg = config(tmp_path, source="replay")
    first = load_settings(cfg, env={"SIGNALBOX_BYBIT_URL": ex.rest_url})
    assert home_source(first).warehouse_id == "replay"
    assert recorded(first)["chosen_by"] == "configured source: replay"
    data = tmp_path / FILE_NAME
    candles_file(data)
    cfg = config(tmp_path, source="replay", replay={"data": str(data)})
    r = backfill_jan1(cfg)
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert "replay seed=7" in line and f"replay file={data}" in line  # both sources named
    assert "SIGNALBOX_HOME" in line and "source.json" in line  # and how to proceed
    assert not (tmp_path / "home" / "warehouse").exists()


def test_auto_probes_with_backoff_once_records_and_says_what_it_chose(tmp_path):
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    cfg = config(tmp_path, source="auto", bybit={"rest_url": dead, "probe_timeout_s": 0.5})
    settings = load_settings(cfg, env={})
    said: list[str] = []
    ep = home_source(settings, said.append)
    assert ep.kind == "replay"
    assert sum("retrying" in s for s in said) == 2  # three probes, two waits
    assert "did not answer 3 probes" in said[-1] and "recorded in" in said[-1]
    assert recorded(settings)["chosen_by"].startswith("auto: live Bybit did not answer")
    again: list[str] = []
    assert home_source(settings, again.append) == ep and again == []  # decided once


def test_auto_goes_live_only_when_every_configured_venue_answers(tmp_path, replay):
    """Both venues configured: one venue down means replay for the whole home (never one venue
    live and another replayed), and the message names the venue that did not answer."""
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    markets = {"bybit": ["BTCUSDT"], "hyperliquid": ["BTC"]}
    for hl_url, kind in ((dead, "replay"), (replay.rest_url, "live")):
        home = tmp_path / kind
        home.mkdir()
        cfg = config(
            home, source="auto", exchanges=markets, bybit={"rest_url": replay.rest_url},
            hyperliquid={"rest_url": hl_url, "probe_timeout_s": 0.5},
        )  # fmt: skip
        settings = load_settings(cfg, env={})
        said: list[str] = []
        ep = home_source(settings, said.append)
        assert ep.kind == kind
        probed = [s for s in said if s.startswith("auto: probing")]
        assert [s.split()[3] for s in probed] == ["Bybit", "Hyperliquid"]
        if kind == "replay":
            assert "live Hyperliquid did not answer 3 probes" in said[-1]
        else:
            assert recorded(settings)["chosen_by"] == "auto: live Bybit and Hyperliquid answered"


def test_auto_never_decides_for_a_home_that_already_holds_data(tmp_path):
    cfg = config(tmp_path, source="auto", bybit={"rest_url": "http://127.0.0.1:9"})
    settings = load_settings(cfg, env={})
    settings.warehouse_dir.mkdir(parents=True)
    for ident in ("bybit", "replay"):
        (settings.warehouse_dir / f"{ident}.duckdb").touch()
    with pytest.raises(SourceError, match=r"several sources \(bybit, replay\)"):
        home_source(settings, print)
    assert recorded(settings) is None
    with pytest.raises(SourceError, match="no data source yet"):
        (tmp_path / "empty").mkdir()
        warehouse_for(load_settings(config(tmp_path / "empty", source="auto"), env={}))


def test_an_unknown_symbol_is_refused_before_any_run(tmp_path, replay_session):
    assert klines(replay_session, symbol="FOOBARUSDT", interval="1")["retCode"] == 10001
    cfg = config(tmp_path, source="replay")
    r = backfill_jan1(
        cfg, "--symbols", "BTCUSDT,FOOBARUSDT", SIGNALBOX_BYBIT_URL=replay_session.rest_url
    )
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("signalbox: FOOBARUSDT not listed") and "Not supported symbols" in line
    assert "BTCUSDT, " in line  # what the exchange does list
    assert "klines_1m" not in r.stderr  # no run started
    assert not (tmp_path / "home" / "warehouse").exists()


def test_the_replay_the_cli_starts_serves_the_configured_file(tmp_path):
    data = tmp_path / FILE_NAME
    truth = candles_file(data)
    cfg = config(tmp_path, source="replay", replay={"data": FILE_NAME, "port": 0})  # relative
    settings = load_settings(cfg, env={})
    assert settings.replay.data == str(data)
    ep, proc = open_exchange(settings, home_source(settings), port=0)
    try:
        health = replay_health(ep.rest_url)
        assert proc is not None and health is not None
        assert health["source_id"] == ep.warehouse_id == "replay-bybit-linear-btcusdt-1m-test"
        assert health["symbols"] == ["BTCUSDT"]
        body = klines(ep, symbol="BTCUSDT", interval="1", start=JAN1, limit=1)
        assert float(body["result"]["list"][0][1]) == truth[0, 1]
    finally:
        stop(proc)


def test_a_missing_data_file_fails_at_start_up(tmp_path):
    cfg = config(tmp_path, replay={"data": "nowhere.parquet"})
    with pytest.raises(ConfigError, match=r"replay.data = 'nowhere.parquet': no such file"):
        load_settings(cfg, env={})
    r = cli(cfg, "up")
    assert r.returncode == 2 and "replay.data" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "home").exists()


def test_the_synthetic_market_lists_its_symbols_only(replay_session):
    listed = replay_health(replay_session.rest_url)["symbols"]
    assert "BTCUSDT" in listed and "ETHUSDT" in listed
    for symbol in ("FOOBARUSDT", "BTCUSDX"):
        body = klines(replay_session, symbol=symbol, interval="1")
        assert (body["retCode"], body["retMsg"]) == (10001, "Not supported symbols")
    assert np.isfinite(
        float(klines(replay_session, symbol="ETHUSDT", interval="1")["result"]["list"][0][4])
    )


def test_live_is_the_source_of_the_venues_and_bybit_its_old_name(tmp_path):
    """`source: live` reads the venues themselves; `bybit` (its name before there were several
    venues) means the same, in the configuration and in a home's record."""
    cfg = config(tmp_path, source="bybit")
    settings = load_settings(cfg, env={})
    assert settings.source == "live"
    ep = home_source(settings)
    assert (ep.kind, ep.warehouse_id) == ("live", "bybit")  # the warehouse file keeps its name
    rec = json.loads((settings.home / "source.json").read_text())
    (settings.home / "source.json").write_text(json.dumps({**rec, "kind": "bybit"}))  # older home
    auto = load_settings(config(tmp_path, source="auto"), env={})
    assert home_source(auto) == ep
    with pytest.raises(SourceError, match=r"holds data from bybit api\.bybit\.com"):
        home_source(load_settings(config(tmp_path, source="replay"), env={}))

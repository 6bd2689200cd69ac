"""The code location loads and validates, with every asset, check, job, sensor and schedule,
and the resources every one of them asks for bound in the one `Definitions`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pytest

from pipeline.exchanges.sources import SourceError
from pipeline.orchestration.definitions import defs
from pipeline.orchestration.resources import (
    ExchangeResource,
    SettingsResource,
    WarehouseResource,
    resources,
)

ASSETS = {
    "klines_1m", "candles", "indicators", "signals", "backtest_report",
    "order_flow_1m", "order_flow_bars", "paper_trades", "paper_vs_backtest",
    "funding_rates", "open_interest_5m", "spot_klines_1m",
}  # fmt: skip
JOBS = {"live", "backfill", "quality", "backtest_reports", "paper_reconcile"}
SENSORS = {
    "live_candles", "kline_gap_repair", "purge_live_runs", "reap_dead_runs", "paper_journals",
}  # fmt: skip
SCHEDULES = {
    "daily_repair", "quality_schedule", "daily_backtests", "paper_reconcile",
}  # fmt: skip


def test_the_definitions_load_and_validate():
    dg.Definitions.validate_loadable(defs)  # partition mappings, resources, selections


def test_every_asset_check_job_sensor_and_schedule_is_there():
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == ASSETS
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert ("klines_1m", "expectations_suite") in checks
    assert ("indicators", "warmup_matches_full_history") in checks
    assert ("signals", "no_lookahead") in checks
    assert ("signals", "fast_lane_parity") in checks
    assert ("order_flow_1m", "trades_match_candles") in checks
    assert ("funding_rates", "on_funding_grid") in checks
    assert ("spot_klines_1m", "ohlc_sane") in checks
    assert ("paper_trades", "journal_complete") in checks
    assert ("paper_trades", "fills_have_orders") in checks
    assert ("paper_vs_backtest", "reconciled") in checks
    assert {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")} == JOBS
    assert {s.name for s in repo.sensor_defs} == SENSORS
    assert {s.name for s in repo.schedule_defs} == SCHEDULES


def test_every_resource_asked_for_is_bound():
    repo = defs.get_repository_def()
    bound = defs.resources or {}
    assert isinstance(bound["settings"], SettingsResource)
    assert isinstance(bound["exchange"], ExchangeResource)
    assert isinstance(bound["warehouse"], WarehouseResource)
    wanted = set()
    for node in repo.assets_defs_by_key.values():
        wanted |= node.required_resource_keys
    for sensor in repo.sensor_defs:
        wanted |= sensor.required_resource_keys
    assert {"settings", "exchange", "warehouse"} <= wanted
    assert wanted <= set(bound) | {"io_manager"}
    live = next(s for s in repo.sensor_defs if s.name == "live_candles")
    assert live.required_resource_keys == {"settings", "exchange"}  # never the warehouse


def test_nothing_is_resolved_when_the_definitions_load():
    """Loading the code location reads no source and opens no warehouse: a resource loads
    them when a run or a tick first asks."""
    exchange = (defs.resources or {})["exchange"]
    assert exchange._source is None and exchange.settings._loaded is None


def test_a_run_handed_another_source_than_the_homes_refuses(tmp_path):
    """The exchange resource takes the runtime's decision as it is, but never one that
    contradicts the home's record (one home never mixes two sources)."""
    (tmp_path / "source.json").write_text(
        json.dumps({"kind": "replay", "warehouse_id": "replay", "label": "replay seed=7"})
    )
    other = {
        "kind": "bybit",
        "rest_url": "https://api.bybit.com",
        "ws_url": "wss://stream.bybit.com/v5/public/linear",
        "warehouse_id": "bybit",
        "label": "bybit api.bybit.com",
    }
    res = resources(home=str(tmp_path), endpoint=json.dumps(other))
    with pytest.raises(SourceError, match="holds data from replay seed=7"):
        res["exchange"].source()
    same = {**other, "kind": "replay", "warehouse_id": "replay", "label": "replay seed=7"}
    ok = resources(home=str(tmp_path), endpoint=json.dumps(same))["warehouse"].get()
    assert ok.path == tmp_path / "warehouse" / "replay.duckdb"


def test_the_ui_shows_every_configured_venue(tmp_path):
    """The 1m asset names its venues as kinds and lists its markets (the shape of the code
    location comes from the configuration when it loads, hence a fresh interpreter)."""
    code = (
        "import json; from pipeline.orchestration.definitions import defs; "
        "a = defs.get_assets_def('klines_1m'); s = a.specs_by_key[a.key]; "
        "print(json.dumps([sorted(s.kinds), s.metadata['markets']]))"
    )
    env = {"SIGNALBOX_HOME": str(tmp_path), "SIGNALBOX_SYMBOLS": "bybit:BTCUSDT,hyperliquid:BTC"}
    r = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    kinds, markets = json.loads(r.stdout.splitlines()[-1])
    assert {"bybit", "hyperliquid"} <= set(kinds)
    assert markets == "bybit:BTCUSDT, hyperliquid:BTC"

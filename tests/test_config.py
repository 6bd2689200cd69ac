"""Configuration: defaults, environment overrides and the messages bad values produce."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "signalbox.yaml"
    p.write_text(text)
    return p


def test_repo_config_loads_with_documented_defaults():
    s = load_settings(env={})
    assert s.symbols == ["BTCUSDT"]
    assert s.start_date is None  # derived per home (pipeline/runtime/partitions.py)
    assert s.home.is_absolute() and s.home.name == ".signalbox"
    assert "37m" in s.timeframes and "148m" in s.timeframes and len(s.timeframes) == 17
    assert s.ui.port == 3000 and s.live.history_days == 7 and s.live.run_retention_days == 2


def test_environment_overrides(tmp_path: Path):
    cfg = write(tmp_path, "symbols: [BTCUSDT]\n")
    s = load_settings(
        cfg,
        env={
            "SIGNALBOX_HOME": str(tmp_path / "state"),
            "SIGNALBOX_BYBIT_URL": "http://127.0.0.1:9999",
            "SIGNALBOX_BYBIT_WS": "ws://127.0.0.1:9999/v5/public/linear",
            "SIGNALBOX_SOURCE": "replay",
            "SIGNALBOX_SYMBOLS": "BTCUSDT,ETHUSDT",
        },
    )
    assert s.home == (tmp_path / "state").resolve()
    assert s.bybit.rest_url == "http://127.0.0.1:9999"
    assert s.bybit.ws_url.startswith("ws://127.0.0.1:9999")
    assert s.source == "replay"
    assert s.symbols == ["BTCUSDT", "ETHUSDT"]
    assert s.warehouse_dir == s.home / "warehouse"


def test_relative_home_is_relative_to_the_config_file(tmp_path: Path):
    s = load_settings(write(tmp_path, "home: state\n"), env={})
    assert s.home == (tmp_path / "state").resolve()


@pytest.mark.parametrize(
    ("text", "key", "value", "hint"),
    [
        ("symbols: [btc-usdt]\n", "symbols", "btc-usdt", "like BTCUSDT"),
        ("symbols: []\n", "symbols", "[]", "at least one symbol"),
        ("source: binance\n", "source", "'binance'", "'auto', 'live' or 'replay'"),
        ("start_date: 2023-02-30\n", "start_date", "2023-02-30", "date"),
        ("start_date: 2099-01-01\n", "start_date", "2099-01-01", "between 2018-01-01 and today"),
        ("timeframes: [1m, 7x]\n", "timeframes", "7x", "m (minutes), h (hours)"),
        ("timeframes: [5m]\n", "timeframes", "5m", "must include 1m"),
        ("bybit: {rest_url: api.bybit.com}\n", "bybit.rest_url", "api.bybit.com", "URL"),
        ("bybit: {timout_s: 3}\n", "bybit.timout_s", "3", "not a known key"),
        ("ui: {port: 70000}\n", "ui.port", "70000", "less than or equal to 65535"),
        ("replay: {faults: 1.5}\n", "replay.faults", "1.5", "less than or equal to 1"),
        ("personalities: [scalpin]\n", "personalities", "scalpin", "neither a shipped"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(tmp_path, text, key, value, hint):
    cfg = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    msg = str(err.value)
    assert msg.startswith(f"invalid configuration in {cfg}: {key} = ") and "\n" not in msg, msg
    assert value in msg and hint in msg, msg


def test_not_yaml_and_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not valid YAML at line 2, column 1"):
        load_settings(write(tmp_path, "symbols: [BTCUSDT\n"), env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", env={})
    with pytest.raises(ConfigError, match="source = 'sideways'"):
        load_settings(write(tmp_path, ""), env={"SIGNALBOX_SOURCE": "sideways"})


def test_a_broken_personality_file_fails_at_start_not_in_a_run(tmp_path: Path, capsys):
    bad = tmp_path / "mine.yaml"
    bad.write_text("name: mine\ntimeframes: [1m]\nthreshold: 0.5\nrules:\n  - {name: r}\n")
    cfg = write(tmp_path, f"personalities: [scalping, {bad}]\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={}).check_personalities()
    assert str(bad) in str(err.value) and "'r'" in str(err.value)
    # the commands that run signals refuse to start; the bad file is named on the terminal
    from pipeline.runtime.cli import main

    assert (
        main(["--config", str(cfg), "backfill", "--start", "2024-01-01", "--end", "2024-01-01"])
        == 2
    )
    assert str(bad) in capsys.readouterr().err
    # a personality reading a timeframe the config no longer builds
    with pytest.raises(ConfigError, match="5m"):
        s = load_settings(
            write(tmp_path, "timeframes: [1m, 15m]\npersonalities: [scalping]\n"), env={}
        )
        s.check_personalities()


def test_exchanges_select_venues_per_symbol_list(tmp_path: Path):
    from pipeline.markets import Market

    text = "exchanges: {hyperliquid: [kPEPE, BTC], bybit: [ETHUSDT, BTCUSDT]}\n"
    s = load_settings(write(tmp_path, text), env={})
    assert s.markets == [
        Market("bybit", "BTCUSDT"),
        Market("bybit", "ETHUSDT"),
        Market("hyperliquid", "BTC"),
        Market("hyperliquid", "kPEPE"),
    ]
    assert str(s.markets[2]) == "hyperliquid:BTC" and s.symbols == ["ETHUSDT", "BTCUSDT"]
    assert load_settings(env={}).markets == [Market("bybit", "BTCUSDT")]  # the default
    shorthand = load_settings(write(tmp_path, "symbols: [SOLUSDT]\n"), env={})
    assert shorthand.exchanges == {"bybit": ["SOLUSDT"]}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "symbols: [BTCUSDT]\nexchanges: {bybit: [BTCUSDT]}\n",
            "both `symbols` and `exchanges` are given; keep one",
        ),
        ("exchanges: {bybt: [BTCUSDT]}\n", "'bybt' is not a known exchange (did you mean 'bybit'?"),
        ("exchanges: {kraken: [XBT]}\n", "known: bybit, hyperliquid"),
        ("exchanges: {hyperliquid: [btc-usd]}\n", "hyperliquid: 'btc-usd' is not a symbol there"),
        ("exchanges: {hyperliquid: [BTCUSDT, PEPEk]}\n", "use symbols like BTC or kPEPE"),
        ("exchanges: {bybit: [kPEPE]}\n", "use symbols like BTCUSDT"),
        ("exchanges: {}\n", "needs at least one exchange"),
    ],
)
def test_bad_exchanges_name_the_problem_in_one_line(tmp_path, text, says):
    cfg = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    assert says in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_markets_from_the_environment_and_venue_endpoints(tmp_path: Path):
    from pipeline.config import env_keys, load
    from pipeline.markets import Market

    cfg = write(tmp_path, "exchanges: {bybit: [ETHUSDT]}\n")
    loaded = load(cfg, env={"SIGNALBOX_SYMBOLS": "bybit:BTCUSDT, hyperliquid:kPEPE,solusdt"})
    assert loaded.settings.markets == [
        Market("bybit", "BTCUSDT"),
        Market("bybit", "SOLUSDT"),
        Market("hyperliquid", "kPEPE"),
    ]
    assert loaded.origin("exchanges.hyperliquid") == loaded.origin("exchanges.bybit")
    assert loaded.origin("exchanges.bybit") == "$SIGNALBOX_SYMBOLS"
    keys = env_keys()
    assert keys["SIGNALBOX_BYBIT_URL"] == "bybit.rest_url"
    assert keys["SIGNALBOX_HYPERLIQUID_WS"] == "hyperliquid.ws_url"
    with pytest.raises(ConfigError, match=r"\(set by SIGNALBOX_SYMBOLS\)"):
        load(cfg, env={"SIGNALBOX_SYMBOLS": "bybit:BTC-USDT"})


def test_settings_are_loaded_once_and_again_when_anything_they_depend_on_changes(tmp_path):
    """A run asks for the settings through several resources: parsed once, but a changed file
    (even one written within the same mtime, at the same size) or override loads afresh."""
    import os

    cfg = write(tmp_path, "live: {history_days: 3}\n")
    env = {"SIGNALBOX_HOME": str(tmp_path / "state")}
    first = load_settings(cfg, env)
    assert load_settings(cfg, dict(env)) is first  # the same frozen object: not parsed again
    stat = cfg.stat()
    cfg.write_text("live: {history_days: 4}\n")  # same size...
    os.utime(cfg, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ...and the same mtime
    assert load_settings(cfg, env).live.history_days == 4
    other = {"SIGNALBOX_HOME": str(tmp_path / "elsewhere")}
    assert load_settings(cfg, other).home == (tmp_path / "elsewhere").resolve()
    assert load_settings(cfg, env).home == (tmp_path / "state").resolve()
    cfg.write_text("live: {history_days: -1}\n")
    with pytest.raises(ConfigError):  # a broken file is an error, not the last good settings
        load_settings(cfg, env)

"""The bots' journals land in the warehouse: the `paper_journals` sensor asks when a journal
grew, `paper_trades` (real Dagster, real DuckDB) ingests what is new, whole and once, and its
blocking checks fail when the rows are not the journals."""

from __future__ import annotations

import datetime as dt
import shutil
import time

import dagster as dg
import duckdb

from assets import paper
from pipeline.bots.store import BotStore
from pipeline.bots.trader import Bar, Trader
from pipeline.config import load_settings
from pipeline.orchestration.resources import (
    ExchangeResource,
    SettingsResource,
    WarehouseResource,
)
from pipeline.runtime.bots import Runner
from sensors.paper import paper_journals
from tests.daemon import write_config

T0 = dt.datetime(2024, 3, 4, tzinfo=dt.UTC)
MIN_US = 60_000_000


def trade(settings, name: str, first: int, minutes: int) -> None:
    """Run bot `name` over `minutes` synthetic bars with a signal every 3 minutes, committing
    every event to its files as `signalbox bots` does."""
    from pipeline.bots.config import bot_markets

    cfg = next(b for b in settings.bots if b.name == name)
    trader = Trader(cfg, cfg.backtest_params(), bot_markets(cfg, settings.markets))
    store = BotStore(settings.home, name)
    r = Runner(cfg, trader, store, store.load() or trader.new_state())
    base = int(T0.timestamp()) * 1_000_000
    for i in range(first, first + minutes):
        t = base + i * MIN_US
        if i % 3 == 0:
            sig = {"seq": i + 1, "exchange": "bybit", "symbol": "BTCUSDT",
                   "personality": cfg.personality, "timeframe": "1m",
                   "action": "BUY" if i % 2 else "SELL", "confidence": 0.9, "quality": "ok",
                   "close_time": (T0 + dt.timedelta(minutes=i)).isoformat(),
                   "_t": time.perf_counter()}  # fmt: skip
            r.on_signal(sig, time.time())
        px = 100 + (i % 7)
        r.on_bar(Bar("bybit:BTCUSDT", t, px, px + 1.5, px - 1.5, px + 0.5))
    store.close()


def rows(wh_path, table: str, bot: str) -> int:
    with duckdb.connect(str(wh_path), read_only=True) as con:
        q = f"SELECT count(*) FROM {table} WHERE bot = ?"  # table: a constant of this test
        return con.execute(q, [bot]).fetchall()[0][0]


def journal_len(settings, bot: str) -> int:
    return sum(1 for _ in BotStore(settings.home, bot).journal_path.open())


def test_journals_are_ingested_whole_and_once(tmp_path):
    bots = [
        {"name": "swing", "personality": "swing", "params": {"stop_loss_pct": 0.01}},
        {"name": "accumulate", "personality": "scalping", "dca": {"quote": 100}},
    ]
    cfg = write_config(tmp_path, top={"source": "replay", "bots": bots})
    settings = load_settings(cfg, env={})
    wh_path = tmp_path / "wh.duckdb"
    s_res = SettingsResource(config_path=str(cfg))
    res = {
        "settings": s_res,
        "warehouse": WarehouseResource(
            exchange=ExchangeResource(settings=s_res), path=str(wh_path)
        ),
    }

    def materialize() -> dg.ExecuteInProcessResult:
        with dg.DagsterInstance.ephemeral() as instance:
            return dg.materialize([paper.paper_trades], resources=res, instance=instance)

    def sensor_tick(cursor: str | None):
        ctx = dg.build_sensor_context(cursor=cursor, resources={"settings": s_res})
        return paper_journals(ctx), ctx.cursor

    out, cursor = sensor_tick(None)
    assert isinstance(out, dg.SkipReason)  # nothing journaled yet
    names = [b.name for b in settings.bots]
    for name in names:
        trade(settings, name, 0, 40)
    out, cursor = sensor_tick(cursor)
    assert isinstance(out, dg.RunRequest)
    assert isinstance(sensor_tick(cursor)[0], dg.SkipReason)  # asked once per growth

    result = materialize()
    assert result.success
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"journal_complete": True, "fills_have_orders": True}
    total = {n: journal_len(settings, n) for n in names}
    for n in names:
        assert rows(wh_path, "paper_trades", n) + rows(wh_path, "paper_equity", n) == total[n]
    assert rows(wh_path, "paper_equity", names[0]) == 40
    # a re-run with nothing new changes nothing; more events add only themselves
    assert materialize().success
    assert rows(wh_path, "paper_equity", names[0]) == 40
    trade(settings, names[0], 40, 20)
    assert isinstance(sensor_tick(cursor)[0], dg.RunRequest)
    assert materialize().success
    assert rows(wh_path, "paper_equity", names[0]) == 60
    assert rows(wh_path, "paper_trades", names[0]) + 60 == journal_len(settings, names[0])
    # a bot started over (its folder deleted): its rows are replaced by the new journal
    shutil.rmtree(settings.home / "bots" / names[1])
    trade(settings, names[1], 100, 9)
    assert materialize().success
    assert rows(wh_path, "paper_equity", names[1]) == 9

    # the checks fail when the rows are not the journals
    with duckdb.connect(str(wh_path)) as con:
        con.execute(
            "INSERT INTO paper_trades (bot, n, kind, exchange, symbol, seq, time)"
            " VALUES (?, 100000, 'fill', 'bybit', 'BTCUSDT', 999999, now())",
            [names[0]],
        )
    with dg.DagsterInstance.ephemeral() as instance:
        bad = dg.materialize(
            [paper.paper_trades], resources=res, instance=instance, raise_on_error=False
        )
    checks = {c.check_name: c.passed for c in bad.get_asset_check_evaluations()}
    assert checks == {"journal_complete": False, "fills_have_orders": False}

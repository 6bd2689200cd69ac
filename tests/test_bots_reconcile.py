"""paper_vs_backtest's arithmetic: a bot that saw every signal and bar matches the backtest
trade for trade with no unexplained gap; one that was down misses trades, each explained."""

from __future__ import annotations

import datetime as dt
import time

import polars as pl

from pipeline.bots.config import BotConfig
from pipeline.bots.ingest import batch
from pipeline.bots.reconcile import reconcile
from pipeline.bots.store import BotStore
from pipeline.bots.trader import Bar, Trader
from pipeline.candles.timeframes import to_us
from pipeline.replay import synthetic
from pipeline.runtime.bots import Runner
from tests.test_bots_trader import MARKET, T0, market

ETH = "bybit:ETHUSDT"

CFG = BotConfig(
    name="rec",
    personality="swing",
    params={"stop_loss_pct": 0.004, "take_profit_pct": 0.006},
    emergency_stop=None,
)
PARAMS = CFG.backtest_params()


def run_bot(home, data: dict, down=None, late: int = 0, cfg: BotConfig = CFG):
    """The bot over `data` ({market: (candles, signals)}, the candles of every market on the
    same minutes), committing as `signalbox bots` does: per minute the signals due, then each
    market's bar in order. `down`: minutes [a, b) in which it was not running (no bars, and
    those signals never reached it); `late`: signal #10 reaches it that many minutes after
    its close."""
    trader = Trader(cfg, cfg.backtest_params(), list(data))
    store = BotStore(home, cfg.name)
    store.load()
    r = Runner(cfg, trader, store, trader.new_state())

    def due(s: dict) -> dt.datetime:
        close = dt.datetime.fromisoformat(s["close_time"])
        return close + dt.timedelta(minutes=late if s["seq"] == 10 else 0)

    pending = sorted((s for _, sigs in data.values() for s in sigs), key=due)
    rows = {m: candles.rows(named=True) for m, (candles, _) in data.items()}
    for i in range(len(next(iter(rows.values())))):
        t = to_us(next(iter(rows.values()))[i]["open_time"])
        while pending and to_us(due(pending[0])) <= t:
            s = pending.pop(0)
            if not (down and down[0] <= i < down[1]):
                received = due(s).timestamp() + 0.2
                r.on_signal({**s, "_t": time.perf_counter()}, received)
        if down and down[0] <= i < down[1]:
            continue
        for m, bars in rows.items():
            row = bars[i]
            r.on_bar(Bar(m, to_us(row["open_time"]), row["open"], row["high"], row["low"],
                         row["close"]))  # fmt: skip
    store.close()
    b = batch(home, cfg.name, (0, 0))
    assert b is not None
    return b.trades, b.equity


def two_markets(minutes: int, t0: dt.datetime = T0) -> dict:
    """BTCUSDT and ETHUSDT of the replay exchange's synthetic market, with signals on both
    (some at the same minute, so both markets enter on one bar), numbered in arrival order."""
    btc, btc_sigs = market(minutes, every=7, t0=t0)
    ms = int(t0.timestamp() * 1000)
    raw = synthetic.candles("ETHUSDT", ms, ms + minutes * 60_000, seed=7)
    eth = btc.with_columns(
        open=pl.Series(raw[:, 1]), high=pl.Series(raw[:, 2]), low=pl.Series(raw[:, 3]),
        close=pl.Series(raw[:, 4]),
    )  # fmt: skip
    _, eth_sigs = market(minutes, every=5, seed=11, t0=t0)
    eth_sigs = [{**s, "symbol": "ETHUSDT"} for s in eth_sigs]
    merged = sorted(btc_sigs + eth_sigs, key=lambda s: (s["close_time"], s["symbol"]))
    for seq, s in enumerate(merged, start=1):
        s["seq"] = seq
    return {
        MARKET: (btc, [s for s in merged if s["symbol"] == "BTCUSDT"]),
        ETH: (eth, [s for s in merged if s["symbol"] == "ETHUSDT"]),
    }


def frames(sigs):
    return pl.DataFrame(
        [
            {
                "close_time": dt.datetime.fromisoformat(s["close_time"]),
                "action": s["action"],
                "confidence": s["confidence"],
                "quality": "ok",
                "timeframe": "1m",
            }
            for s in sigs
        ]
    )


def test_a_faultless_day_reconciles_with_no_unexplained_trade(tmp_path):
    candles, sigs = market(480, every=7)
    paper, equity = run_bot(tmp_path, {MARKET: (candles, sigs)})
    rec = reconcile("rec", T0.date(), {MARKET: (candles, frames(sigs))}, paper, equity, PARAMS)
    assert rec.matched > 20
    assert rec.differences == []
    assert abs(rec.equity_gap) < 1e-6 and abs(rec.unexplained_gap) < 1e-6
    assert rec.curves is not None and rec.curves.height == 480
    assert rec.fees_paper > 0 and abs(rec.fees_paper - rec.fees_backtest) < 1e-9


def test_trades_missed_while_the_bot_was_down_are_explained(tmp_path):
    candles, sigs = market(480, every=7)
    paper, equity = run_bot(tmp_path, {MARKET: (candles, sigs)}, down=(150, 230))
    rec = reconcile("rec", T0.date(), {MARKET: (candles, frames(sigs))}, paper, equity, PARAMS)
    missed = [d for d in rec.differences if d["kind"] == "missed"]
    assert missed and {d["why"] for d in missed} == {"bot_down"}
    assert rec.unexplained_trades == 0
    assert rec.matched > 10


def test_a_signal_published_late_is_explained(tmp_path):
    candles, sigs = market(480, every=7)
    paper, equity = run_bot(tmp_path, {MARKET: (candles, sigs)}, late=3)
    rec = reconcile("rec", T0.date(), {MARKET: (candles, frames(sigs))}, paper, equity, PARAMS)
    whys = {(d["kind"], d["why"]) for d in rec.differences}
    assert ("missed", "late_signal") in whys or ("extra", "late_signal") in whys
    assert rec.unexplained_trades == 0


UNITS = BotConfig(
    name="pair",
    personality="swing",
    symbols=["BTCUSDT", "ETHUSDT"],
    params={"sizing": "units", "units": 0.01, "stop_loss_pct": 0.004, "take_profit_pct": 0.006},
    emergency_stop=None,
)


def test_a_two_market_bot_sized_in_units_reconciles_its_shared_account(tmp_path):
    """Sizes that do not follow the cash: the account is the sum of the markets' backtests."""
    data, _, _, rec = reconciled_pair(tmp_path, UNITS, 480)
    assert rec.equity_note is None
    per_market = {m: sum(1 for t in rec.trades if t["market"] == m) for m in data}
    assert min(per_market.values()) > 10
    assert rec.differences == [] and rec.matched == sum(per_market.values())
    assert rec.equity_gap is not None and abs(rec.equity_gap) < 1e-6
    assert rec.curves is not None and rec.curves.columns == ["time", "paper", "backtest"]
    assert rec.curves.height == 480 and rec.curves["paper"].null_count() == 0
    diff = (rec.curves["paper"] - rec.curves["backtest"]).abs().max()
    assert isinstance(diff, float) and diff < 1e-6  # the whole day, not just its end
    assert rec.fees_backtest is not None and abs(rec.fees_paper - rec.fees_backtest) < 1e-9


RISK_PAIR = BotConfig(name="pair", personality="swing", symbols=["BTCUSDT", "ETHUSDT"],
                      params=CFG.params, emergency_stop=None)  # fmt: skip


def reconciled_pair(home, cfg: BotConfig, minutes: int) -> tuple:
    """A two-market bot run over `minutes` of replay data and reconciled: (data, the bot's
    rows, the reconciliation inputs, the reconciliation)."""
    data = two_markets(minutes)
    paper, equity = run_bot(home, data, cfg=cfg)
    inputs = {m: (c, frames(sigs)) for m, (c, sigs) in data.items()}
    rec = reconcile(cfg.name, T0.date(), inputs, paper, equity, cfg.backtest_params())
    return data, (paper, equity), inputs, rec


def test_a_two_market_bot_sized_by_risk_is_matched_per_market_and_says_why_not_equity(tmp_path):
    """Sizes that follow the shared cash: trades matched on what the cash does not change,
    the equity gap not compared, and the reason given; a missed signal still shows."""
    cfg = RISK_PAIR
    data, (paper, equity), inputs, rec = reconciled_pair(tmp_path, cfg, 480)
    assert rec.equity_note is not None and "share one account" in rec.equity_note
    assert "'risk'" in rec.equity_note
    assert rec.differences == [] and rec.matched > 20
    assert {t["market"] for t in rec.trades} == set(data)
    assert rec.equity_gap is None and rec.unexplained_gap is None and rec.fees_backtest is None
    assert rec.failure(0.0) is None
    # why: the same trades' P&L differs, each entry sized from a different cash
    assert sum(abs(t["paper_pnl"] - t["backtest_pnl"]) > 1e-6 for t in rec.trades) > 20
    assert rec.curves is not None
    assert rec.curves.columns == ["time", "paper", f"backtest {MARKET}", f"backtest {ETH}"]
    # a signal the pipeline holds and the running bot never got: unexplained, in its market
    eth, eth_sigs = inputs[ETH]
    extra = pl.DataFrame(
        {"close_time": [T0 + dt.timedelta(minutes=101)], "action": ["BUY"],
         "confidence": [0.9], "quality": ["ok"], "timeframe": ["1m"]},
    )  # fmt: skip
    inputs[ETH] = (eth, pl.concat([eth_sigs, extra]).sort("close_time"))
    rec = reconcile("pair", T0.date(), inputs, paper, equity, cfg.backtest_params())
    bad = [d for d in rec.differences if d["why"] is None]
    assert bad and {d["market"] for d in bad} == {ETH}
    assert rec.failure(1e9) is not None and "unexplained trade" in str(rec.failure(1e9))


def seed_warehouse(wh_path, t0: dt.datetime, data: dict) -> None:
    """The pipeline's 1m candles and signals of every market of `data`, as the live path
    stores them."""
    from warehouse import Warehouse

    with Warehouse(wh_path).writer() as con:
        for m, (candles, sigs) in data.items():
            exchange, _, symbol = m.partition(":")
            k = candles.with_columns(
                exchange=pl.lit(exchange), symbol=pl.lit(symbol),
                close_time=pl.col("open_time") + dt.timedelta(minutes=1), volume=pl.lit(1.0),
                turnover=pl.lit(1.0), source=pl.lit("test"), ingested_at=pl.lit(t0),
            ).to_arrow()  # fmt: skip
            con.register("k", k)
            con.execute("INSERT INTO klines_1m BY NAME SELECT * FROM k")
            sf = frames(sigs).with_columns(
                exchange=pl.lit(exchange), symbol=pl.lit(symbol), personality=pl.lit("swing"),
                open_time=pl.col("close_time") - dt.timedelta(minutes=1), price=pl.lit(1.0),
                reasons=pl.lit(["test"]), snapshot=pl.lit("{}"),
            ).to_arrow()  # fmt: skip
            con.register("sf", sf)
            con.execute("INSERT INTO signals BY NAME SELECT * FROM sf")


def home_with_bots(
    tmp_path, bots: list[dict], data: dict, t0: dt.datetime, minutes: dict | None = None
):
    """A home whose config has `bots` (and the markets of `data`), each bot run over `data`
    (journals on disk, not ingested yet; `minutes`: a bot stopped after that many), the
    warehouse seeded; (settings, resources)."""
    from pipeline.config import load_settings
    from pipeline.orchestration.resources import (
        ExchangeResource,
        SettingsResource,
        WarehouseResource,
    )
    from tests.daemon import write_config

    symbols = sorted({m.partition(":")[2] for m in data})
    cfg = write_config(tmp_path, top={"source": "replay", "bots": bots,
                                      "exchanges": {"bybit": symbols}})  # fmt: skip
    settings = load_settings(cfg, env={})
    for b in bots:
        n = (minutes or {}).get(b["name"])
        mine = {
            m: (c.head(n), sigs) if n else (c, sigs)
            for m, (c, sigs) in data.items()
            if m.partition(":")[2] in b["symbols"]
        }
        run_bot(settings.home, mine, cfg=BotConfig(**b))
    wh_path = tmp_path / "wh.duckdb"
    seed_warehouse(wh_path, t0, data)
    s_res = SettingsResource(config_path=str(cfg))
    res = {
        "settings": s_res,
        "warehouse": WarehouseResource(
            exchange=ExchangeResource(settings=s_res), path=str(wh_path)
        ),
    }
    return settings, res


def test_the_asset_reconciles_a_day_and_fails_on_an_unexplained_trade(tmp_path):
    """paper_trades then paper_vs_backtest, real Dagster and DuckDB: the pipeline's candles
    and signals in the warehouse, the bot's journal ingested."""
    import dagster as dg
    import duckdb

    from assets import paper

    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    t0 = dt.datetime.combine(day, dt.time(), dt.UTC)
    candles, sigs = market(300, every=7, t0=t0)
    bot = {"name": CFG.name, "personality": "swing", "symbols": ["BTCUSDT"],
           "params": CFG.params, "emergency_stop": None}  # fmt: skip
    _, res = home_with_bots(tmp_path, [bot], {MARKET: (candles, sigs)}, t0)
    wh_path = tmp_path / "wh.duckdb"

    def reconciled() -> bool:
        with dg.DagsterInstance.ephemeral() as instance:
            assert dg.materialize([paper.paper_trades], resources=res, instance=instance).success
            r = dg.materialize(
                [paper.paper_vs_backtest],
                partition_key=day.isoformat(),
                resources=res,
                instance=instance,
                raise_on_error=False,
            )
        (check,) = r.get_asset_check_evaluations()
        return check.passed

    assert reconciled()
    # signals the pipeline has and the running bot never got: unexplained trades
    with duckdb.connect(str(wh_path)) as con:
        for minute, action in ((101, "BUY"), (102, "SELL")):  # no signal at these minutes
            close = t0 + dt.timedelta(minutes=minute)
            con.execute(
                "INSERT INTO signals VALUES ('bybit', 'BTCUSDT', 'swing', '1m', ?, ?, ?, 0.9,"
                " 1.0, ['x'], '{}', 'ok')",
                [close, close - dt.timedelta(minutes=1), action],
            )
    assert not reconciled()


def test_the_asset_reconciles_a_two_market_bot_and_fails_when_a_market_has_no_candles(tmp_path):
    """A two-market bot through paper_trades and paper_vs_backtest (real Dagster and DuckDB):
    the shared account reconciled; without one market's candles the check fails naming it."""
    import dagster as dg
    import duckdb

    from assets import paper

    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    t0 = dt.datetime.combine(day, dt.time(), dt.UTC)
    pair = {**UNITS.model_dump(exclude={"dca"}), "symbols": ["BTCUSDT", "ETHUSDT"]}
    _, res = home_with_bots(tmp_path, [pair], two_markets(240, t0), t0)

    def run() -> tuple[bool, str]:
        with dg.DagsterInstance.ephemeral() as instance:
            assert dg.materialize([paper.paper_trades], resources=res, instance=instance).success
            r = dg.materialize([paper.paper_vs_backtest], partition_key=day.isoformat(),
                               resources=res, instance=instance, raise_on_error=False)  # fmt: skip
        (check,) = r.get_asset_check_evaluations()
        meta = r.asset_materializations_for_node("paper_vs_backtest")
        return check.passed, meta[0].metadata["bots"].value if meta else str(check.metadata)

    passed, bots = run()
    assert passed and "| reconciled (the bot" in bots and f"{MARKET}, {ETH}" in bots
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        con.execute("DELETE FROM klines_1m WHERE symbol = 'ETHUSDT'")
    passed, bots = run()
    assert not passed and f"cannot backtest: {ETH}: empty window" in bots

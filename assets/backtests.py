"""`backtest_report`: each personality's stored signals replayed over the stored 1m candles.

Partitioned by personality. A run covers a rolling window (config `backtest.window_days`,
ending today) unless a period is given (`signalbox backtest`, or the launchpad in the UI);
it writes `backtest_runs` / `backtest_trades`, the charts and an HTML report under the state
directory, and shows the metrics, the charts and a walk-forward table in the UI.
"""

import base64
import datetime as dt

import dagster as dg

from assets.common import OWNERS, SHAPE, check_result, display, md_table
from pipeline.markets import find_market
from pipeline.orchestration.resources import ExchangeResource, SettingsResource, WarehouseResource

PERSONALITIES = dg.StaticPartitionsDefinition(SHAPE.personality_names)


class BacktestConfig(dg.Config):
    """Period and parameters of a backtest; empty means the configured rolling window."""

    start: str | None = None  # first day, YYYY-MM-DD (UTC)
    end: str | None = None  # last day, inclusive
    # Markets as `signalbox backtest` names them (it is the only writer): ["hyperliquid:BTC"];
    # None: every configured market.
    markets: list[str] | None = None
    params_json: str = "{}"  # overrides of the configured backtest parameters


def _period(cfg: BacktestConfig, window_days: int) -> tuple[dt.datetime, dt.datetime]:
    from pipeline.backtest.params import ParamError
    from pipeline.backtest.period import period_bounds, resolve_period

    try:
        first, last = resolve_period(
            today=dt.datetime.now(dt.UTC).date(),
            default_days=window_days,
            start=dt.date.fromisoformat(cfg.start) if cfg.start else None,
            end=dt.date.fromisoformat(cfg.end) if cfg.end else None,
        )
    except (ParamError, ValueError) as err:
        raise dg.Failure(f"backtest period: {err}") from None
    return period_bounds(first, last)


def _img_md(path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"![{path.stem}](data:image/png;base64,{data})"


# Per symbol, these metrics become numeric metadata (plotted per partition in the UI). Keys
# are the same for every partition and run: the timeframe is a value, never part of a key.
PLOTTED = (
    "total_return_pct",
    "sharpe",
    "max_drawdown_pct",
    "win_rate_pct",
    "trades",
    "profit_factor",
)


@dg.asset(
    partitions_def=PERSONALITIES,
    # A report reads every day's signals in its window: all of them, not a same-key partition.
    deps=[dg.AssetDep("signals", partition_mapping=dg.AllPartitionMapping())],
    pool="duckdb",
    group_name="reports",
    owners=OWNERS,
    kinds={"duckdb", "numba"},
    description=(
        "Backtest of each personality's stored signals over 1m candles: next-bar-open fills, "
        "Bybit fees, slippage, risk sizing, stops; metrics, charts, walk-forward, HTML report."
    ),
    check_specs=[
        dg.AssetCheckSpec(
            "data_quality",
            asset="backtest_report",
            blocking=False,
            description="At least 99 % of the candles in every backtest window are complete "
            "(a backtest over gaps is flagged, not hidden).",
        )
    ],
    metadata={"tables": "backtest_runs, backtest_trades"},
)
def backtest_report(
    context: dg.AssetExecutionContext,
    config: BacktestConfig,
    settings: SettingsResource,
    exchange: ExchangeResource,
    warehouse: WarehouseResource,
):
    import polars as pl

    from pipeline.backtest import run_backtest, summary_markdown, walk_forward
    from pipeline.backtest import write_report as write_html
    from pipeline.backtest.coverage import configured_personality
    from pipeline.backtest.params import ParamError, parse_overrides
    from pipeline.backtest.report import report_dir, rounded, summary
    from pipeline.backtest.result import run_id_for
    from pipeline.quality.checks import CheckOutcome
    from warehouse import Replacement

    s, wh = settings.get(), warehouse.get()
    personality = context.partition_key
    pers = configured_personality(s, personality)
    try:
        overrides, params = parse_overrides(config.params_json, s.backtest.params)
    except ParamError as err:
        raise dg.Failure(f"backtest parameters: {err}") from None
    start, end = _period(config, s.backtest.window_days)
    try:
        markets = [find_market(t, s.markets) for t in config.markets or []] or s.markets
    except ValueError as err:
        raise dg.Failure(f"backtest markets: {err}") from None
    tf = pers.signal_tf
    candles = wh.query(
        "SELECT exchange, symbol, open_time, close_time, open, high, low, close, volume, complete "
        "FROM candles WHERE timeframe = '1m' AND open_time >= ? AND open_time < ? "
        "ORDER BY symbol, open_time",
        [start - dt.timedelta(days=1), end],
    )
    signals = wh.query(
        "SELECT * FROM signals WHERE personality = ? AND timeframe = ? "
        "AND close_time >= ? AND close_time < ? ORDER BY symbol, close_time",
        [personality, tf, start, end],
    )
    meta: dict = {
        "source": exchange.source().label,
        "period": f"{start:%Y-%m-%d} → {end - dt.timedelta(days=1):%Y-%m-%d}",
        "timeframe": tf,
        "timeframes": ", ".join(pers.timeframes),
    }
    markdown, quality = [], []
    replacements = []
    for market in markets:
        symbol, ours = market.symbol, pl.col("exchange") == market.exchange
        label = symbol if market.exchange == "bybit" else f"{market.exchange}_{symbol}"
        sym_candles = candles.filter(ours & (pl.col("symbol") == symbol)).drop("exchange")
        sigs = signals.filter(ours & (pl.col("symbol") == symbol)).drop("exchange")
        if sym_candles.height == 0:
            markdown.append(f"**{market}**: no candles in the period; backfill it first.")
            continue
        res = run_backtest(
            sym_candles, sigs, params, start=start, end=end, personality=personality, symbol=symbol
        )
        rid = run_id_for(personality, symbol, tf, start, end, overrides, market.exchange)
        folds = walk_forward(sym_candles, sigs, params, s.backtest.folds, start=start, end=end)
        out = report_dir(s.reports_dir, rid)
        paths = write_html(res, out, walk_forward=folds, timeframes=pers.timeframes)
        runs = res.runs_frame(rid).with_columns(
            timeframe=pl.lit(tf), exchange=pl.lit(market.exchange)
        )
        replacements += [
            Replacement("backtest_runs", runs, "run_id = ?", (rid,)),
            Replacement("backtest_trades", res.trades_frame(rid), "run_id = ?", (rid,)),
        ]
        m = res.metrics
        quality.append((symbol, tf, m.get("complete_candles_pct"), m.get("degraded_signals")))
        url = s.report_url(paths["html"])
        markdown += [
            summary_markdown(summary(res, pers.timeframes), report_link=url),
            _img_md(paths["equity"]),
            _img_md(paths["drawdown"]),
            "**Walk-forward** (out-of-sample folds, side by side)",
            md_table(folds),
        ]
        meta[f"{label}_report"] = dg.MetadataValue.url(url)
        meta[f"{label}_report_path"] = dg.MetadataValue.path(str(paths["html"]))
        for name in PLOTTED:
            if m.get(name) is not None:
                meta[f"{label}_{name}"] = rounded(m[name])
        meta[f"{label}_metrics"] = dg.MetadataValue.json({k: rounded(v) for k, v in m.items()})
    if replacements:
        wh.replace_many(replacements)
    meta["summary"] = dg.MetadataValue.md("\n\n".join(markdown) or "no signals in the period")
    worst = min((q[2] for q in quality if q[2] is not None), default=100.0)
    outcome = CheckOutcome(
        worst >= 99.0,
        f"lowest share of complete candles in a backtest window: {worst:.2f} %",
        {
            "windows": [
                {
                    "symbol": a,
                    "timeframe": b,
                    "complete_pct": rounded(c),
                    "degraded_signals": d,
                }
                for a, b, c, d in quality
            ]
        },
    )
    return dg.MaterializeResult(
        metadata=display(meta),
        check_results=[check_result("data_quality", outcome, "backtest_report")],
    )

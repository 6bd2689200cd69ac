"""The `signalbox` command: one entry point for people, `make run` and the tests.

Subcommands import their module only when chosen, so `signalbox tail` starts in milliseconds
and none of them import Dagster (work that needs Dagster goes through the `dagster` CLI).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable

from pipeline.config import ConfigError, Settings, load_settings


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD") from None


def _symbols(text: str) -> list[str]:
    return [s.strip().upper() for s in text.split(",") if s.strip()]


def _rate(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number between 0 and 1") from None
    if v > 1 and v <= 100:
        v /= 100  # "--faults 10" means 10 %
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a share between 0 and 1 (or 0-100 %)")
    return v


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.replay.server import main

    return main(
        host=args.host or settings.replay.host,
        port=settings.replay.port if args.port is None else args.port,
        seed=settings.replay.seed if args.seed is None else args.seed,
        data=args.data or settings.replay.data,
        faults=settings.replay.faults if args.faults is None else args.faults,
        clock_start=args.clock_start,
        clock_speed=args.clock_speed,
        symbols=args.symbols or settings.replay.symbols,
    )


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.backfill import backfill

    if args.symbols:
        settings = settings.with_overrides(symbols=args.symbols)
    return backfill(settings, args.start, args.end, assets=args.assets)


def cmd_sql(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.sources import warehouse_for
    from pipeline.sql import run

    wh = warehouse_for(settings)
    return run(wh, settings.home, " ".join(args.query), as_csv=args.csv, max_rows=args.max_rows)


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.supervisor import up

    overrides: dict = {}
    if args.port:
        overrides["ui"] = {**settings.ui.model_dump(), "port": args.port}
    if args.source:
        overrides["source"] = args.source
    if overrides:
        settings = settings.with_overrides(**overrides)
    return up(settings, history_days=args.history_days)


def cmd_sidecar(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.sidecar.server import main

    return main(settings)


def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.sidecar.client import tail_main

    return tail_main(
        settings,
        symbols=args.symbol,
        personalities=args.personality,
        timeframes=args.timeframe,
        since=args.since,
        raw=args.json,
    )


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.backfill import backtest

    return backtest(
        settings, args.personality, args.start, args.end, symbol=args.symbol, params=args.params
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="signalbox", description=__doc__.splitlines()[0])
    p.add_argument(
        "--config", help="configuration file (default: signalbox.yaml or $SIGNALBOX_CONFIG)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[..., int], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn)
        return sp

    sp = add("up", cmd_up, "run everything: exchange, Dagster UI + daemon, live sensor, sidecar")
    sp.add_argument("--port", type=int, help="Dagster UI port (default from config: 3000)")
    sp.add_argument("--source", choices=["auto", "bybit", "replay"], help="exchange to use")
    sp.add_argument("--history-days", type=int, help="days backfilled before going live")

    sp = add("replay", cmd_replay, "start the Bybit-compatible replay exchange on loopback")
    sp.add_argument("--host", help="bind address (default 127.0.0.1)")
    sp.add_argument("--port", type=int, help="port (default from config; 0 picks a free one)")
    sp.add_argument("--seed", type=int, help="seed of the synthetic market")
    sp.add_argument("--data", help="CSV or Parquet file of real 1m candles to serve instead")
    sp.add_argument(
        "--symbols", type=_symbols, help="symbols listed (default: replay.symbols in config)"
    )
    sp.add_argument("--faults", type=_rate, help="share of requests to fail, e.g. 0.1")
    sp.add_argument("--clock-start", help="exchange clock starts at this UTC time (ISO 8601)")
    sp.add_argument("--clock-speed", type=float, default=1.0, help="exchange clock speed-up")

    sp = add("backfill", cmd_backfill, "materialize daily partitions through Dagster")
    sp.add_argument("--start", type=_date, required=True, help="first day, YYYY-MM-DD (UTC)")
    sp.add_argument("--end", type=_date, required=True, help="last day, inclusive, YYYY-MM-DD")
    sp.add_argument("--symbols", type=_symbols, help="comma-separated, e.g. BTCUSDT,ETHUSDT")
    sp.add_argument(
        "--assets",
        default="all",
        help="'all' (default) or some of the backfill job's assets, e.g. bybit_klines_1m,candles",
    )

    sp = add("sql", cmd_sql, "query the read replica of the warehouse (read-only)")
    sp.add_argument("query", nargs="+", help='SQL, e.g. "SELECT count(*) FROM candles"')
    sp.add_argument("--max-rows", type=int, default=40, help="rows shown (default 40)")
    sp.add_argument("--csv", action="store_true", help="print CSV instead of a table")

    add("sidecar", cmd_sidecar, "serve the latest signals on the Unix socket")

    sp = add("tail", cmd_tail, "print signals from the sidecar as they arrive")
    sp.add_argument("--symbol", action="append", type=str.upper, help="filter (repeatable)")
    sp.add_argument("--personality", action="append", help="filter (repeatable)")
    sp.add_argument("--timeframe", action="append", help="filter (repeatable)")
    sp.add_argument("--since", type=int, help="replay signals after this sequence number")
    sp.add_argument("--json", action="store_true", help="print raw JSON lines")

    sp = add("backtest", cmd_backtest, "backtest a personality over a period, through Dagster")
    sp.add_argument("--personality", required=True)
    sp.add_argument("--start", type=_date, required=True)
    sp.add_argument("--end", type=_date, required=True)
    sp.add_argument("--symbol", type=str.upper, help="default: every configured symbol")
    sp.add_argument("--params", help='JSON overrides, e.g. \'{"slippage_bps": 2, "leverage": 3}\'')
    return p


# Commands that compute or serve signals check the personality files before they start.
SIGNAL_COMMANDS = frozenset({"up", "backfill", "backtest", "sidecar"})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        if args.command in SIGNAL_COMMANDS:
            settings.check_personalities()
        return int(args.func(args, settings) or 0)
    except ConfigError as err:
        print(f"signalbox: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

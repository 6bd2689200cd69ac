"""The `signalbox` command: one entry point for people, `make run` and the tests.

Subcommands import their module only when chosen, so `signalbox tail` starts in milliseconds
and none of them import Dagster (work that needs Dagster goes through the `dagster` CLI;
`status` alone reads failed runs through Dagster's API).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.config import ConfigError, Loaded, Settings, load
from pipeline.markets import parse_markets


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
        ready=args.ready,
        rate_limit=(settings.replay.rate_limit, settings.replay.rate_limit_window_s),
    )


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.runtime.backfill import backfill

    if args.symbols:
        settings = settings.with_overrides(exchanges=parse_markets(args.symbols))
    return backfill(settings, args.start, args.end, assets=args.assets)


def cmd_sql(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.exchanges.sources import warehouse_for
    from pipeline.runtime.sql import run

    wh = warehouse_for(settings)
    return run(wh, settings.home, " ".join(args.query), as_csv=args.csv, max_rows=args.max_rows)


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.runtime.supervisor import up

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


def cmd_fast(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.runtime.fastlane import main

    return main(settings)


def cmd_trades(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.runtime.trades import main

    return main(settings)


def cmd_bots(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.runtime.bots import main

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
        wait=args.wait,
    )


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.runtime.status import status_main

    return status_main(settings, as_json=args.json)


def cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.runtime.running import stop_main

    return stop_main(settings, timeout=args.timeout)


VERSIONS = ("signalbox", "dagster", "duckdb", "polars", "ta-lib", "pybit")


def cmd_version(args: argparse.Namespace, settings: Settings | None) -> int:
    from importlib.metadata import PackageNotFoundError, version

    for dist in VERSIONS:
        try:
            print(f"{dist:<10} {version(dist)}")
        except PackageNotFoundError:
            print(f"{dist:<10} not installed")
    print(f"{'python':<10} {sys.version.split()[0]} ({sys.executable})")
    return 0


def cmd_personalities(args: argparse.Namespace, settings: Settings | None) -> int:
    from pipeline.runtime import scaffold

    if args.action == "new":
        return scaffold.new_main(args.name, Path(args.dir))
    assert settings is not None  # the list is not standalone: main loaded them
    return scaffold.list_main(settings)


def cmd_config(args: argparse.Namespace, settings: Settings | None) -> int:
    from pipeline.runtime.configview import check_main, show_main

    if args.action == "check":
        return check_main(args.config)
    return show_main(args.config, as_json=args.json)


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.runtime.backtest import backtest

    return backtest(
        settings,
        args.personality,
        start=args.start,
        end=args.end,
        days=args.days,
        timerange=args.timerange,
        symbol=args.symbol,
        params=args.params,
    )


def _defaults_from(loaded: Loaded | None) -> Callable[[str], str]:
    """`default X from WHERE` for a dotted key, as `--help` shows it (the effective value)."""

    def shown(key: str) -> str:
        if loaded is None:
            return "default from the configuration, which does not load; see the note below"
        value: object = loaded.settings
        for part in key.split("."):
            value = getattr(value, part)
        origin = loaded.origin(key)
        where = (
            "built-in default"
            if origin == "default"
            else f"${origin[1:]}"
            if origin.startswith("$")
            else Path(origin).name
        )
        return f"default {value} from {where}"

    return shown


def build_parser(
    loaded: Loaded | None = None, error: ConfigError | None = None
) -> argparse.ArgumentParser:
    """The parser; `up --help` shows the defaults of the effective configuration `loaded`
    (or, when it does not load, a note with `error`)."""
    default = _defaults_from(loaded)
    p = argparse.ArgumentParser(prog="signalbox", description=__doc__.splitlines()[0])
    p.add_argument(
        "--config", help="configuration file (default: signalbox.yaml or $SIGNALBOX_CONFIG)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[..., int], help_: str, **kw) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, **kw)
        sp.set_defaults(func=fn, standalone=False)
        return sp

    note = None
    if error is not None:
        note = f"note: the configuration does not load, so no defaults are shown: {error}"
    sp = add(
        "up",
        cmd_up,
        "run everything: exchange, Dagster UI + daemon, live sensor, sidecar",
        epilog=note,
    )
    sp.add_argument("--port", type=int, help=f"Dagster UI port ({default('ui.port')})")
    sp.add_argument(
        "--source",
        choices=["auto", "live", "replay", "bybit"],
        help=f"live venues or the replay ({default('source')}; `bybit` is the old name of `live`; "
        "a home keeps the one it started with)",
    )
    sp.add_argument(
        "--history-days",
        type=int,
        help=f"days backfilled before going live ({default('live.history_days')})",
    )

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
    sp.add_argument("--ready", help="write {rest_url, ws_url, pid} to this JSON file once serving")

    sp = add("backfill", cmd_backfill, "materialize daily partitions through Dagster")
    sp.add_argument("--start", type=_date, required=True, help="first day, YYYY-MM-DD (UTC)")
    sp.add_argument("--end", type=_date, required=True, help="last day, inclusive, YYYY-MM-DD")
    sp.add_argument(
        "--symbols",
        help="comma-separated, e.g. BTCUSDT,ETHUSDT (Bybit) or bybit:BTCUSDT,hyperliquid:BTC",
    )
    sp.add_argument(
        "--assets",
        default="all",
        help="'all' (default) or some of the backfill job's assets, e.g. klines_1m,candles",
    )

    sp = add("sql", cmd_sql, "query the read replica of the warehouse (read-only)")
    sp.add_argument("query", nargs="+", help='SQL, e.g. "SELECT count(*) FROM candles"')
    sp.add_argument("--max-rows", type=int, default=40, help="rows shown (default 40)")
    sp.add_argument("--csv", action="store_true", help="print CSV instead of a table")

    add("sidecar", cmd_sidecar, "serve the latest signals on the Unix socket")
    add("fast", cmd_fast, "the fast lane: signals from the live stream within ms of the close")
    add("trades", cmd_trades, "the trade collector: each covered minute's order flow, journaled")
    add("bots", cmd_bots, "the configured paper bots, trading the sidecar's signals on paper")

    sp = add("tail", cmd_tail, "print signals from the sidecar as they arrive")
    sp.add_argument(
        "--symbol", action="append", help="filter (repeatable): BTCUSDT or a market, bybit:BTCUSDT"
    )
    sp.add_argument("--personality", action="append", help="filter (repeatable)")
    sp.add_argument("--timeframe", action="append", help="filter (repeatable)")
    sp.add_argument("--since", type=int, help="replay signals after this sequence number")
    sp.add_argument("--json", action="store_true", help="print raw JSON lines")
    sp.add_argument(
        "--wait", action="store_true", help="wait for a sidecar to start instead of exiting"
    )

    sp = add("status", cmd_status, "is it running: processes, source, lag, signals, sidecar, runs")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.epilog = "exit 0 running and healthy, 1 not running, 2 bad configuration, 3 problems"

    sp = add("stop", cmd_stop, "stop this home's `signalbox up` and wait until all of it is gone")
    sp.add_argument(
        "--timeout", type=float, default=60.0, help="seconds before SIGKILL (default 60)"
    )

    sp = add("version", cmd_version, "versions of signalbox, its main libraries and Python")
    sp.set_defaults(standalone=True)

    sp = add("personalities", cmd_personalities, "list personalities, or write a template")
    psub = sp.add_subparsers(dest="action", metavar="ACTION")
    sp.set_defaults(action="list")
    psub.add_parser("list", help="configured and shipped ones, timeframes, description")
    new = psub.add_parser("new", help="write a commented template NAME.yaml")
    new.add_argument("name", metavar="NAME")
    new.add_argument("--dir", default=".", help="folder to write it in (default: here)")
    new.set_defaults(standalone=True)

    sp = add("config", cmd_config, "check the configuration, or show it with each value's origin")
    csub = sp.add_subparsers(dest="action", metavar="ACTION", required=True)
    csub.add_parser("check", help="validate it (personality files too); exit 0 or 2")
    show = csub.add_parser("show", help="every effective value and where it came from")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    sp.set_defaults(standalone=True)

    sp = add("backtest", cmd_backtest, "backtest a personality over a period, through Dagster")
    sp.add_argument("--personality", required=True)
    sp.add_argument("--start", type=_date, help="first day, YYYY-MM-DD (UTC)")
    sp.add_argument("--end", type=_date, help="last day, inclusive (default: today)")
    sp.add_argument(
        "--days", type=int, help="N days ending at --end (default: backtest.window_days)"
    )
    sp.add_argument(
        "--timerange",
        help="freqtrade style YYYYMMDD-YYYYMMDD, end excluded, either side open (20240101-)",
    )
    sp.add_argument(
        "--symbol",
        help="one market, hyperliquid:BTC, or a symbol configured on one venue (default: every "
        "configured market)",
    )
    sp.add_argument("--params", help='JSON overrides, e.g. \'{"slippage_bps": 2, "leverage": 3}\'')
    return p


# Commands that compute or serve signals check the personality files before they start.
SIGNAL_COMMANDS = frozenset({"up", "backfill", "backtest", "sidecar", "fast"})
# Commands that start Dagster runs check that the instance's storage answers first.
DAGSTER_COMMANDS = frozenset({"up", "backfill", "backtest"})


def _preload(argv: list[str]) -> tuple[Loaded | None, ConfigError | None]:
    """The configuration named by --config (or $SIGNALBOX_CONFIG), read before parsing so
    `--help` can show its values; a broken one is kept as the error to report."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    try:
        return load(known.config), None
    except ConfigError as err:
        return None, err


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    loaded, error = _preload(argv)
    args = build_parser(loaded, error).parse_args(argv)
    try:
        if args.standalone:  # reads (or needs) no settings of its own
            return int(args.func(args, None) or 0)
        if error is not None:
            raise error
        assert loaded is not None
        settings = loaded.settings
        if args.command in SIGNAL_COMMANDS:
            settings.check_personalities()
        if args.command in DAGSTER_COMMANDS:
            from pipeline.orchestration.instance import check_instance

            check_instance(settings)
        return int(args.func(args, settings) or 0)
    except ConfigError as err:
        print(f"signalbox: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`signalbox backtest` end to end: the real CLI in a subprocess, a real Dagster run, a home
backfilled for two days from the replay exchange on loopback.

Mistakes (bad `--params`, a malformed or conflicting period) exit 2 with one line; a period
with nothing to trade (no candles, or every bar still in indicator warm-up) exits 1 naming the
backfill that fixes it; none of them leaves a Dagster run behind. A run that succeeds prints
the summary table and where report.html is.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.backtest.params import ParamError
from pipeline.backtest.period import parse_timerange, resolve_period
from tests.daemon import replay_env, write_config

CLI = [sys.executable, "-m", "pipeline.runtime.cli"]
# and a personality reading market context, with a warm-up short enough for two days
FLOW = Path(__file__).with_name("flow_filtered.yaml")
CONFIG = {
    "timeframes": ["1m", "5m", "15m", "1h"],
    "personalities": ["scalping", "swing", str(FLOW)],
}
DAYS = ["--start", "2024-01-01", "--end", "2024-01-02"]


def run_cli(
    args: list[str], home: Path, replay, config: Path | None = None
) -> subprocess.CompletedProcess:
    """The CLI on `home` with `config` (default: the home's signalbox.yaml, written if absent)."""
    config = config or home / "signalbox.yaml"
    if not config.exists():
        write_config(home, top=CONFIG)
    env = {**replay_env(home, replay), "SIGNALBOX_CONFIG": str(config)}
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=300)


def dagster_runs(home: Path) -> list[tuple[str, str]]:
    """(job, status) of every run in the home's Dagster instance (none without an instance)."""
    import dagster as dg

    if not (home / "dagster" / "dagster.yaml").exists():
        return []
    with dg.DagsterInstance.from_config(str(home / "dagster")) as inst:
        return [(r.job_name, r.status.value) for r in inst.get_runs()]


@pytest.fixture(scope="module")
def exchange():
    from pipeline.replay import ReplayExchange

    with ReplayExchange(seed=7) as ex:
        yield ex


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory, exchange):
    """A home holding 2024-01-01..02 for BTCUSDT: candles, indicators, signals."""
    home = tmp_path_factory.mktemp("backtest-home")
    r = run_cli(["backfill", *DAYS], home, exchange)
    assert r.returncode == 0, r.stderr[-3000:]
    return home


def one_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ('{"leverage": 3', ["is not valid JSON", "give an object such as"]),
        (
            '{"levrage": 3}',
            ["'levrage' (= 3)", "did you mean 'leverage'?", "valid: venue, taker_fee,"],
        ),
        ('{"allow_short": "no"}', ["allow_short='no'", "must be true or false"]),
        ('{"taker_fee": -0.001}', ["taker_fee=-0.001", "fees cannot be negative"]),
    ],
)
def test_bad_params_are_one_line_exit_2_and_start_no_run(
    params: str, expected: list[str], tmp_path: Path, exchange
) -> None:
    r = run_cli(
        ["backtest", "--personality", "scalping", *DAYS, "--params", params], tmp_path, exchange
    )
    assert r.returncode == 2, r.stderr[-2000:]
    line = one_line(r)
    assert line.startswith("signalbox backtest: ")
    for text in expected:
        assert text in line, line
    assert "Traceback" not in r.stderr and "TypeError" not in r.stderr
    assert dagster_runs(tmp_path) == []


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        (["--timerange", "2024-01-01"], "is not YYYYMMDD-YYYYMMDD"),
        (["--timerange", "20240101-", "--days", "3"], "cannot be combined with --days"),
        (["--end", "2999-01-01"], "is in the future"),
    ],
)
def test_malformed_or_conflicting_periods_are_refused(
    period: list[str], expected: str, tmp_path: Path, exchange
) -> None:
    r = run_cli(["backtest", "--personality", "scalping", *period], tmp_path, exchange)
    assert r.returncode == 2 and expected in one_line(r), r.stderr
    assert dagster_runs(tmp_path) == []


def test_an_empty_home_is_refused_naming_the_backfill(tmp_path: Path, exchange) -> None:
    r = run_cli(["backtest", "--personality", "scalping", *DAYS], tmp_path, exchange)
    assert r.returncode == 1
    assert "backfill first: `signalbox backfill --start 2023-12-31 --end 2024-01-02`" in one_line(r)
    assert dagster_runs(tmp_path) == []


def test_a_period_in_warm_up_is_refused_naming_the_days_to_backfill(backfilled, exchange) -> None:
    """swing reads the 1h SMA 200: two days of history give it no signal at all."""
    before = dagster_runs(backfilled)
    r = run_cli(["backtest", "--personality", "swing", *DAYS], backfilled, exchange)
    assert r.returncode == 1, r.stderr[-2000:]
    line = one_line(r)
    assert "the whole period is indicator warm-up" in line
    assert "swing needs 9 day(s) of history before its first signal (1h sma_200: 200 bars)" in line
    assert "`signalbox backfill --start 2023-12-23 --end 2024-01-02`" in line
    assert dagster_runs(backfilled) == before


def test_a_period_without_candles_is_refused(backfilled, exchange) -> None:
    before = dagster_runs(backfilled)
    r = run_cli(
        ["backtest", "--personality", "scalping", "--timerange", "20240201-20240203"],
        backfilled,
        exchange,
    )
    assert r.returncode == 1
    line = one_line(r)
    assert "bybit:BTCUSDT: no candles in 2024-02-01 → 2024-02-02 (stored: 2024-01-01 00:00" in line
    assert dagster_runs(backfilled) == before


@pytest.fixture(scope="module")
def succeeded(backfilled, exchange) -> subprocess.CompletedProcess:
    """scalping on 2024-01-02 (its warm-up is 2024-01-01)."""
    return run_cli(
        ["backtest", "--personality", "scalping", "--timerange", "20240102-20240103"],
        backfilled,
        exchange,
    )


def test_a_backtest_prints_its_summary_and_report(succeeded, backfilled) -> None:
    r = succeeded
    assert r.returncode == 0, r.stderr[-3000:]
    # CLI runs belong to named jobs, never Dagster's implicit __ASSET_JOB
    assert ("backtest_reports", "SUCCESS") in dagster_runs(backfilled)
    assert {job for job, _ in dagster_runs(backfilled)} == {"backfill", "backtest_reports"}
    assert "backtesting scalping on bybit:BTCUSDT, 2024-01-02 → 2024-01-02 (1 days)" in r.stderr
    out = r.stdout.strip().splitlines()
    assert out[0] == (
        "Backtest scalping on BTCUSDT (1m, 5m), 2024-01-02 00:00 → 2024-01-03 00:00 UTC (1 days)"
    )
    for label in (
        "Trades",
        "Win rate",
        "Total return",
        "Buy & hold return",
        "Max drawdown",
        "Sharpe (ann. 365 d)",
        "Sortino (ann. 365 d)",
        "Calmar (ann. 365 d)",
        "Fees paid",
    ):
        assert any(line.startswith(label + " ") for line in out), label
    assert any(line.startswith("exit reason ") for line in out)
    report = Path(out[-1].removeprefix("report: "))
    assert report.name == "report.html" and report.is_file()
    saved = json.loads((report.parent / "summary.json").read_text())
    trades = next(line for line in out if line.startswith("Trades "))
    assert trades.split()[-1] == str(saved["metrics"]["trades"])
    assert saved["metrics"]["trades"] == sum(x["trades"] for x in saved["by_exit_reason"])


def test_backtest_metadata_keys_are_fixed_rounded_and_link_a_served_report(
    backfilled, succeeded
) -> None:
    """The keys do not name the timeframe (per-partition plots stay one series), numbers are
    rounded for display, and the report is a URL under the reports port plus a local path."""
    import dagster as dg

    from pipeline.config import load_settings

    with dg.DagsterInstance.from_config(str(backfilled / "dagster")) as inst:
        event = inst.get_latest_materialization_event(dg.AssetKey("backtest_report"))
    assert event is not None and event.asset_materialization is not None
    meta = event.asset_materialization.metadata
    keys = set(meta)
    plotted = {"total_return_pct", "sharpe", "max_drawdown_pct", "win_rate_pct", "trades"}
    plotted.add("profit_factor")
    expected = {"source", "period", "timeframe", "timeframes", "summary"}
    expected |= {f"BTCUSDT_{k}" for k in ("report", "report_path", "metrics")}
    assert expected <= keys and keys - expected <= {f"BTCUSDT_{k}" for k in plotted}
    assert not any(tf in key.split("_") for key in keys for tf in ("1m", "5m"))
    assert meta["timeframe"].value == "1m" and meta["timeframes"].value == "1m, 5m"
    settings = load_settings(backfilled / "signalbox.yaml", env={})
    url = meta["BTCUSDT_report"]
    path = Path(meta["BTCUSDT_report_path"].value)
    assert isinstance(url, dg.UrlMetadataValue) and path.name == "report.html"
    assert url.value == settings.report_url(path)
    assert url.value.startswith(f"http://127.0.0.1:{settings.ui.reports_port}/scalping/")
    numbers = [v.value for k, v in meta.items() if isinstance(v, dg.FloatMetadataValue)]
    numbers += [v for v in meta["BTCUSDT_metrics"].value.values() if isinstance(v, float)]
    assert numbers
    for v in numbers:
        assert v == round(v, 2) or (abs(v) < 1 and v == float(f"{v:.4g}")), v


def test_a_personality_reading_market_context_backtests_from_the_same_signals(
    backfilled, exchange
) -> None:
    """A personality reading order flow and funding (as `vote` does, whose warm-up is 18
    days): the backfill's signals asset joined them (none in this home: NULL, its funding
    filter not applied, its order-flow vote abstaining), and the backtest trades those rows.
    (After the test above, which reads the newest report's metadata.)"""
    import duckdb

    r = run_cli(["backtest", "--personality", "flow_filtered", *DAYS], backfilled, exchange)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.strip().splitlines()
    assert out[0].startswith("Backtest flow_filtered on BTCUSDT (5m), "), out[0]
    report = Path(out[-1].removeprefix("report: "))
    saved = json.loads((report.parent / "summary.json").read_text())
    replica = backfilled / "warehouse" / "replay.replica.duckdb"
    with duckdb.connect(str(replica), read_only=True) as con:
        reasons = con.sql(
            "SELECT reasons FROM signals WHERE personality = 'flow_filtered' AND action = 'BUY'"
        ).fetchall()

    # the backfill stored the replay's funding (market_context): each BUY says what the funding
    # filter read, the rate where one was known, "not applied" where none was
    def funding(r: list[str]) -> list[str]:
        return [x for x in r if x.startswith("funding")]

    assert reasons and all(len(funding(r)) == 1 for (r,) in reasons)
    assert any("% below 0.05 %" in funding(r)[0] for (r,) in reasons)
    assert saved["metrics"]["trades"] > 0
    assert saved["metrics"]["trades"] <= 2 * len(reasons)


# -- the period shortcuts, in process --------------------------------------------------------
TODAY = dt.date(2024, 3, 10)


def period(**kw) -> tuple[dt.date, dt.date]:
    return resolve_period(today=TODAY, default_days=90, **kw)


def test_days_and_timerange_resolve_like_freqtrade() -> None:
    d = dt.date
    assert period() == (d(2023, 12, 12), TODAY)  # the rolling window: 90 days to today
    assert period(days=7) == (d(2024, 3, 4), TODAY)
    assert period(days=7, end=d(2024, 1, 31)) == (d(2024, 1, 25), d(2024, 1, 31))
    assert period(days=7, start=d(2024, 1, 1)) == (d(2024, 1, 1), d(2024, 1, 7))
    assert period(timerange="20240101-20240201") == (d(2024, 1, 1), d(2024, 1, 31))
    assert period(timerange="20240101-") == (d(2024, 1, 1), TODAY)
    assert period(timerange="-20240201", first_day=d(2023, 6, 1)) == (d(2023, 6, 1), d(2024, 1, 31))
    assert parse_timerange(" 20240101-20240102 ") == (d(2024, 1, 1), d(2024, 1, 1))


@pytest.mark.parametrize("text", ["", "-", "2024-01-01", "20240101", "1704067200-", "2024010-"])
def test_malformed_timeranges_are_refused(text: str) -> None:
    with pytest.raises(ParamError, match="--timerange"):
        period(timerange=text)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"timerange": "20240132-"}, "start '20240132' is not a date"),
        ({"timerange": "20240105-20240101"}, "must come after the start"),
        ({"timerange": "20240101-", "start": dt.date(2024, 1, 1)}, "cannot be combined"),
        ({"days": 3, "start": dt.date(2024, 1, 1), "end": TODAY}, "give two of the three"),
        ({"days": 0}, "--days 0: give a number of days >= 1"),
        ({"start": dt.date(2024, 3, 5), "end": dt.date(2024, 3, 1)}, "is before the start"),
        ({"start": dt.date(2024, 3, 5), "days": 30}, "is in the future"),
    ],
)
def test_conflicting_periods_are_refused(kw: dict, expected: str) -> None:
    with pytest.raises(ParamError, match=expected):
        period(**kw)


def test_a_period_partly_in_warm_up_or_past_the_data_is_run_with_warnings() -> None:
    from pipeline.backtest.coverage import Coverage, assess, warmup_needed
    from pipeline.config import load_settings
    from pipeline.markets import Market
    from pipeline.strategy.personality import load_personality

    settings = load_settings(env={})
    btc = Market("bybit", "BTCUSDT")
    swing = load_personality("swing", settings.timeframes)
    warm = warmup_needed(swing)
    assert (warm.column, warm.bars, warm.days) == ("1h sma_200", 200, 9)
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    first, last = dt.date(2024, 1, 5), dt.date(2024, 1, 31)
    stored = Coverage(btc, t0, t0 + dt.timedelta(days=20), candles=100, signals=3)
    refusals, warnings = assess(settings, swing, {btc: stored}, first, last)
    assert refusals == {} and len(warnings) == 2
    assert "no signal before 2024-01-09" in warnings[0]
    assert "`signalbox backfill --start 2023-12-27 --end 2024-01-31`" in warnings[0]
    assert "no candles after 2024-01-21 00:00" in warnings[1]
    ready = Coverage(btc, t0, t0 + dt.timedelta(days=40), candles=100, signals=0)
    refusals, warnings = assess(settings, swing, {btc: ready}, dt.date(2024, 1, 20), last)
    assert refusals == {} and warnings == [
        "bybit:BTCUSDT: no swing signals stored in 2024-01-20 → 2024-01-31, so no trades; "
        "signals are computed by `signalbox backfill --start 2024-01-11 --end 2024-01-31`"
    ]

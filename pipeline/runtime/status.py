"""`signalbox status`: is this home running and healthy, on one screen (or as JSON).

Everything is read, nothing written: the `up` pid file and /proc, the home's source record,
the warehouse's read replica (the pipeline holds the main file), the sidecar's own answer to
a status request, and the Dagster instance for failed runs (Dagster is imported only here,
only when the instance exists).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.config import Settings
from pipeline.runtime.running import processes, up_pid

HEALTHY = 0
NOT_RUNNING = 1  # no `signalbox up` for this home (2 is a configuration error, as everywhere)
UNHEALTHY = 3  # running, with problems listed
EXPECTED = ("webserver", "daemon", "sidecar", "fast", "trades")  # the children every `up` has
FAILED_WINDOW = dt.timedelta(hours=1)
BOT_STALE_S = 15.0  # a bot's heartbeat older than this is a problem


@dataclass
class Status:
    home: str
    running: bool = False
    pid: int | None = None
    processes: dict[str, int] = field(default_factory=dict)
    source: dict[str, Any] | None = None
    universe: str | None = None  # what `bybit: all` resolved to, and when
    candles: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    last_signal: dict[str, Any] | None = None
    sidecar: dict[str, Any] | None = None
    fast: dict[str, Any] | None = None  # the fast lane's last published batch
    bots: list[dict[str, Any]] = field(default_factory=list)  # pipeline/bots/store.summary
    failed_runs: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def code(self) -> int:
        if not self.running:
            return NOT_RUNNING
        return UNHEALTHY if self.problems else HEALTHY


def collect(settings: Settings, now: dt.datetime | None = None) -> Status:
    now = now or dt.datetime.now(dt.UTC)
    st = Status(home=str(settings.home))
    st.pid = up_pid(settings)
    st.running = st.pid is not None
    if st.pid is not None:
        st.processes = processes(st.pid)
        expected = [*EXPECTED, *(["bots"] if settings.bots else [])]
        missing = [n for n in expected if n not in st.processes]
        if missing:
            st.problems.append(f"not running under `up`: {', '.join(missing)} (see logs/)")
    _source(settings, st)
    _warehouse(settings, st, now)
    _sidecar(settings, st)
    _fast(settings, st)
    _bots(settings, st)
    _failed_runs(settings, st, now)
    return st


def _source(settings: Settings, st: Status) -> None:
    from pipeline.exchanges.sources import SourceError, current, recorded

    try:
        st.source = recorded(settings)
        if st.source is not None:
            current(settings)  # the configuration still matches the record
    except SourceError as err:
        st.problems.append(str(err))


def _warehouse(settings: Settings, st: Status, now: dt.datetime) -> None:
    """Per-market (`bybit:BTCUSDT`) lag of the last stored 1m candle, and the last signal,
    from the replica."""
    from pipeline.config import ConfigError
    from pipeline.exchanges.sources import SourceError, warehouse_for
    from pipeline.exchanges.universe import summary
    from warehouse import WarehouseBusy

    st.universe = summary(settings)
    try:
        st.candles = dict.fromkeys(map(str, settings.markets))
    except ConfigError as err:  # `all` not resolved (yet): said, not raised
        st.problems.append(str(err))
        return
    try:
        wh = warehouse_for(settings)
    except SourceError:
        return  # no source yet (said by the source line) or a mismatch (a problem already)
    if not wh.replica_path.exists():
        if wh.path.exists():
            st.notes.append(f"no read replica yet ({wh.replica_path}); `up` makes it")
        return
    try:
        from warehouse import connect

        with connect(wh.replica_path, read_only=True, wait_s=5, sealed=True) as con:
            rows = con.execute(
                "SELECT exchange || ':' || symbol, max(open_time) FROM klines_1m GROUP BY ALL"
            ).fetchall()
            sig = con.execute(
                "SELECT exchange, symbol, personality, timeframe, close_time, action, confidence,"
                " price "
                "FROM signals ORDER BY close_time DESC LIMIT 1"
            ).fetchone()
    except (WarehouseBusy, OSError) as err:
        st.problems.append(f"cannot read the replica {wh.replica_path}: {err}")
        return
    except Exception as err:  # duckdb.Error: an unreadable replica
        st.problems.append(f"cannot read the replica {wh.replica_path}: {str(err)[:200]}")
        return
    fresh = dt.timedelta(minutes=settings.live.freshness_minutes)
    for symbol, last_open in rows:
        if symbol not in st.candles:
            continue  # no longer configured
        end = last_open + dt.timedelta(minutes=1)
        lag = now - end
        st.candles[symbol] = {"up_to": end.isoformat(), "lag_s": round(lag.total_seconds(), 1)}
        if st.running and lag > fresh:
            st.problems.append(
                f"{symbol}: the last stored candle ends {_ago(lag)} ago "
                f"(more than live.freshness_minutes = {settings.live.freshness_minutes})"
            )
    if st.running:
        for symbol in (s for s, c in st.candles.items() if c is None):
            st.problems.append(f"{symbol}: no candles stored yet")
    if sig is not None:
        keys = ("exchange", "symbol", "personality", "timeframe", "close_time", "action")
        st.last_signal = dict(zip((*keys, "confidence", "price"), sig, strict=True))
        st.last_signal["close_time"] = sig[4].isoformat()


def _sidecar(settings: Settings, st: Status) -> None:
    from pipeline.sidecar.client import server_status

    st.sidecar = server_status(settings.socket_path)
    if st.running and st.sidecar is None:
        st.problems.append(f"the sidecar does not answer on {settings.socket_path}")


def _fast(settings: Settings, st: Status) -> None:
    """The fast lane's last published batch, from its latency records."""
    from pipeline.runtime import latency

    published = [r for r in latency.read(settings.home, "fast") if r.get("published")]
    if published:
        r = published[-1]
        close = dt.datetime.fromtimestamp(r["close"], dt.UTC)
        st.fast = {
            "exchange": r.get("exchange"),
            "close": close.isoformat(),
            "published": r["published"],
            "via": r.get("via"),
            "after_close_s": round(r["published_at"] - r["close"], 3),
        }


def _bots(settings: Settings, st: Status) -> None:
    """Each paper bot's equity, positions and heartbeat, from its files in the home."""
    from pipeline.bots.store import summary

    st.bots = [summary(settings.home, b.name) for b in settings.bots]
    for b in st.bots:
        age = b.get("heartbeat_age_s")
        if st.running and (age is None or age > BOT_STALE_S):
            st.problems.append(f"bot {b['name']}: no heartbeat for {age} s (see logs/bots.log)")


def _failed_runs(settings: Settings, st: Status, now: dt.datetime) -> None:
    if not (settings.dagster_home / "dagster.yaml").exists():
        return
    from pipeline.orchestration.instance import failed_runs

    try:
        runs = failed_runs(settings.dagster_home, now - FAILED_WINDOW)
    except Exception as err:  # any failure to read Dagster's storage is reported, not raised
        st.problems.append(f"cannot read the Dagster runs in {settings.dagster_home}: {err}")
        return
    st.failed_runs = runs
    if runs:
        st.problems.append(f"{len(runs)} failed run(s) in the last hour (see the Dagster UI)")


def _ago(d: dt.timedelta) -> str:
    s = d.total_seconds()
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def _bot_line(b: dict[str, Any]) -> str:
    if "error" in b or not b.get("started"):
        return b.get("error", "not started yet")
    pos = ", ".join(
        f"{m} {p['side']} {p['size']:.6g} @ {p['entry']:.6g} ({p['unrealised']:+.2f})"
        for m, p in b["positions"].items()
    )
    age = b["heartbeat_age_s"]
    beat = "no heartbeat" if age is None else f"heartbeat {age:.0f} s ago"
    halted = f"; HALTED: {b['why']}" if b["halted"] else ""
    return f"equity {b['equity']:.2f}, {pos or 'flat'}, {beat}{halted}"


def render(st: Status, settings: Settings) -> str:
    lines = []
    if st.running:
        procs = ", ".join(f"{n} {p}" for n, p in st.processes.items()) or "none"
        lines.append(f"running: `signalbox up` pid {st.pid} for {st.home}")
        lines.append(f"  processes   {procs}")
    else:
        stored = any(v for v in st.candles.values())
        what = "" if stored else "; nothing stored yet"
        lines.append(f"not running (no `signalbox up` for {st.home}){what}")
    src = st.source
    if src:
        lines.append(
            f"  source      {src['label']} at {src.get('rest_url', '?')} "
            f"({src.get('chosen_by', 'recorded')})"
        )
    else:
        lines.append("  source      none yet: the first `signalbox up` or `backfill` decides it")
    if st.universe:
        lines.append(f"  bybit: all  {st.universe}")
    for symbol, c in st.candles.items():
        if c is None:
            lines.append(f"  {symbol:<13} no candles stored")
        else:
            lag = dt.timedelta(seconds=c["lag_s"])
            lines.append(f"  {symbol:<13} last 1m candle ends {c['up_to'][:16]} ({_ago(lag)} ago)")
    sig = st.last_signal
    if sig:
        lines.append(
            f"  last signal {sig['close_time'][:16]} {sig['exchange']}:{sig['symbol']} "
            f"{sig['timeframe']} "
            f"{sig['personality']} {sig['action']} conf={sig['confidence']:.2f} "
            f"price={sig['price']}"
        )
    else:
        lines.append("  last signal none")
    sc = st.sidecar
    if sc:
        lines.append(
            f"  sidecar     pid {sc.get('pid')}, {sc.get('subscribers')} subscriber(s), "
            f"latest seq {sc.get('seq')} ({settings.socket_path})"
        )
    else:
        lines.append(f"  sidecar     not serving {settings.socket_path}")
    fast = st.fast
    if fast:
        how = (
            "filled over REST" if fast["via"] == "rest" else f"{fast['after_close_s']:.3f} s after"
        )
        lines.append(
            f"  fast lane   last published {fast['published']} signal(s) of {fast['exchange']} "
            f"for the close at {fast['close'][:16]} ({how})"
        )
    else:
        lines.append("  fast lane   nothing published yet")
    for b in st.bots:
        lines.append(f"  bot {b['name']}: {_bot_line(b)}")
    n = len(st.failed_runs)
    lines.append(f"  runs        {n or 'no'} failed run{'' if n == 1 else 's'} in the last hour")
    lines += [f"  note: {n}" for n in st.notes]
    if st.running:
        lines.append("healthy" if not st.problems else "problems:")
    lines += [f"  - {p}" for p in st.problems]
    if not st.running:
        lines.append("start it with `signalbox up` (make run)")
    return "\n".join(lines)


def status_main(settings: Settings, as_json: bool = False) -> int:
    """`signalbox status`: 0 running and healthy, 1 not running, 3 running with problems."""
    st = collect(settings)
    if as_json:
        out = {**asdict(st), "healthy": st.code == HEALTHY, "exit_code": st.code}
        print(json.dumps(out, indent=1, default=str))
    else:
        print(render(st, settings))
    sys.stdout.flush()
    return st.code

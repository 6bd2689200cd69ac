"""`signalbox up` (what `make run` runs): everything, as one supervised command.

Starts the replay exchange when the source needs it, the Dagster webserver and daemon against
the persistent state directory, and the signal sidecar; backfills what the recent history the
live assets need is missing (on a warm home: little or nothing); restarts a child that dies;
and on Ctrl-C stops them all, leaving no orphans.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import REPO_ROOT, Settings
from pipeline.exchanges.protocol import Endpoint
from pipeline.exchanges.sources import home_source, recorded, warehouse_for
from pipeline.orchestration.instance import dagster_env
from pipeline.runtime import latency, pids
from pipeline.runtime.partitions import ensure_recorded, exchange_today, first_partition
from pipeline.runtime.processes import (
    open_exchange,
    port_free,
    port_in_use,
    source_env,
    spawn,
    start_replay,
    stop,
)

BIN = Path(sys.executable).parent


@dataclass
class Child:
    """A supervised process whose output goes to `<home>/logs/<name>.log`."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started: float = field(default=0.0)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = spawn(self.args, env=self.env, cwd=REPO_ROOT, stdout=out, stderr=out)
        self.started = time.monotonic()

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _answers(url: str, child: Child, timeout: float) -> bool:
    """Wait until `url` answers (the webserver is up), unless its process died meanwhile."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.proc is not None and child.proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def _say(msg: str) -> None:
    print(f"signalbox: {msg}", file=sys.stderr, flush=True)


def _report(rec: dict) -> None:
    """One line per live run: what was written and how long after the candle closed, and
    the signals it handed to the sidecar."""
    if rec.get("stage") == "fast":
        if rec.get("published"):
            n, venue = rec["published"], rec.get("exchange")
            if rec.get("via") == "ws":
                lag_ms = (rec["published_at"] - rec["close"]) * 1000
                _say(f"fast: {n} signal(s) of {venue} out {lag_ms:.0f} ms after the close")
            else:
                _say(f"fast: {n} signal(s) of {venue} from minutes filled over REST")
        return
    if rec.get("stage") == "signals":
        if rec.get("published"):
            _say(f"signals: {rec['published']} new, handed to the sidecar")
        return
    if "committed_at" not in rec:
        return
    close = time.strftime("%H:%M", time.gmtime(rec["close"] - 60))
    lag = rec["committed_at"] - rec["close"]
    ok = "checks passed" if rec.get("checks_passed") else "CHECKS FAILED (see the UI)"
    _say(f"live: {rec.get('minutes')} candle(s) up to {close} UTC in {lag:.1f} s, {ok}")


def choose_source(settings: Settings) -> tuple[Endpoint, subprocess.Popen | None]:
    """The home's source (decided on the first start, then checked), its exchange answering
    and verified; the replay exchange is started on its configured port when it is the
    source and nothing listens there."""
    ep = home_source(settings, _say)
    ep, proc = open_exchange(settings, ep, port=settings.replay.port, say=_say)
    rec = recorded(settings) or {}
    _say(f"source: {ep.label} at {ep.rest_url} ({rec.get('chosen_by', 'recorded')})")
    return ep, proc


def catch_up(settings: Settings, ep: Endpoint, days: int) -> int:
    """Bring the last `days` days up to the exchange's clock before going live: only what is
    missing (pipeline/runtime/catchup.py), each range as one run of the `backfill` job; says what it
    does. Returns the first failed run's exit code, or 0."""
    from pipeline.exchanges import client
    from pipeline.orchestration.instance import materialized_days
    from pipeline.runtime.backfill import BACKFILL_JOB, run_job
    from pipeline.runtime.catchup import plan_catchup

    try:
        now = client(settings.markets[0].exchange, settings, ep).server_time()
        first = max(first_partition(settings, now.date()).day, now.date() - dt.timedelta(days=days))
        done = materialized_days(settings.dagster_home)
        with warehouse_for(settings, ep).writer() as con:
            plan = plan_catchup(con, settings.markets, first, now, done)
    except Exception as err:  # the exchange or the warehouse busy: up goes on regardless
        _say(f"could not tell what this home is missing ({type(err).__name__}: {str(err)[:200]})")
        return 1
    _say(plan.describe())
    for run in plan.runs:
        code = run_job(settings, BACKFILL_JOB, (run.first, run.last), run_config=run.run_config())
        if code != 0:
            return code
    return 0


def supervised(settings: Settings, env: dict[str, str]) -> list[Child]:
    """The children `up` starts (the first before the catch-up, the rest after it) and
    restarts when they die; `signalbox status` and `stop` know each by its command line
    (pipeline.runtime.running.role)."""
    ui, logs = settings.ui, settings.home / "logs"
    return [
        Child(
            "webserver",
            [
                str(BIN / "dagster-webserver"),
                "-w",
                "workspace.yaml",
                "-h",
                ui.host,
                "-p",
                str(ui.port),
            ],
            env,
            logs / "webserver.log",
        ),
        Child(
            "daemon",
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            env,
            logs / "daemon.log",
        ),
        Child(
            "sidecar",
            [sys.executable, "-m", "pipeline.runtime.cli", "sidecar"],
            env,
            logs / "sidecar.log",
        ),
        Child(
            "fast",
            [sys.executable, "-m", "pipeline.runtime.cli", "fast"],
            env,
            logs / "fast.log",
        ),
        *(
            [
                Child(
                    "bots",
                    [sys.executable, "-m", "pipeline.runtime.cli", "bots"],
                    env,
                    logs / "bots.log",
                )
            ]
            if settings.bots
            else []
        ),
        Child(
            "trades",
            [sys.executable, "-m", "pipeline.runtime.cli", "trades"],
            env,
            logs / "trades.log",
        ),
        Child(
            "reports",
            [sys.executable, "-m", "pipeline.runtime.reports_server"],
            env,
            logs / "reports.log",
        ),
    ]


def up(settings: Settings, history_days: int | None = None) -> int:
    """Run everything until Ctrl-C."""
    if (other := pids.claim(settings.up_pid_file)) is not None:
        _say(f"already running for {settings.home} (pid {other}); `signalbox stop` stops it")
        return 2
    ui = settings.ui
    if not port_free(ui.host, ui.port):
        _say(port_in_use(ui.host, ui.port, "pass --port or set ui.port / SIGNALBOX_UI_PORT"))
        return 2
    ep, replay_proc = choose_source(settings)
    days = settings.live.history_days if history_days is None else history_days
    ensure_recorded(settings, exchange_today(ep.rest_url), days)
    env = dagster_env(settings, source_env(ep))
    wh = warehouse_for(settings, ep)
    logs = settings.home / "logs"
    children = supervised(settings, env)

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        children[0].start()
        _say(f"Dagster UI: http://{ui.host}:{ui.port}")
        if days and catch_up(settings, ep, days) != 0:
            _say("the catch-up failed (see above); going live anyway, the live sensor resumes")
        for child in children[1:]:
            child.start()
        wh.ensure_replica()
        if not _answers(f"http://{ui.host}:{ui.port}/server_info", children[0], 90):
            _say(f"the Dagster UI is not answering yet; see {children[0].log}")
        _say("running. Where to look:")
        _say(f"  UI        http://{ui.host}:{ui.port}")
        _say(f'  warehouse {wh.replica_path}  (read replica; `signalbox sql "SELECT …"`)')
        _say(f"  socket    {settings.socket_path}  (`signalbox tail`)")
        _say(f"  reports   http://{ui.host}:{ui.reports_port}/  ({settings.reports_dir})")
        _say(f"  source    {ep.label} {ep.rest_url}")
        names = "daemon, webserver, sidecar, fast, trades" + (", bots" if settings.bots else "")
        _say(f"  logs      {logs}/  ({names} .log; latency.jsonl)")
        _say("Ctrl-C stops everything.")
        seen = len(latency.read(settings.home))
        while True:
            time.sleep(0.5)
            records = latency.read(settings.home)
            for rec in records[seen:]:
                _report(rec)
            seen = len(records)
            for child in children:
                if child.proc is not None and child.proc.poll() is not None:
                    code = child.proc.returncode
                    _say(f"{child.name} stopped; the end of {child.log}:\n{child.tail()}")
                    delay = (
                        min(2**child.restarts, 60) if time.monotonic() - child.started < 60 else 1
                    )
                    _say(f"{child.name} exited with code {code}; restarting in {delay} s")
                    time.sleep(delay)
                    child.restarts += 1
                    child.start()
            if replay_proc is not None and replay_proc.poll() is not None:
                _say("the replay exchange exited; restarting it")
                replay_proc = start_replay(settings).proc
    except KeyboardInterrupt:
        pass
    finally:
        _say("stopping…")
        for child in reversed(children):
            if child.proc is not None:
                stop(child.proc)
        if replay_proc is not None:
            stop(replay_proc)
        _say("stopped.")
    return 0

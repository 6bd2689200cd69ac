"""Child processes that never outlive us: the replay exchange, Dagster, the sidecar.

Every child gets its own process group (so Ctrl-C in the terminal reaches only us, and we stop
children in order) and, on Linux, a parent-death signal, so even a SIGKILLed supervisor leaves
no orphans behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.config import Settings
from pipeline.exchanges import universe
from pipeline.exchanges.protocol import Endpoint
from pipeline.exchanges.sources import (
    Say,
    SourceError,
    managed_replay,
    probe,
    probe_with_backoff,
    reachable,
    refuse_unlisted,
    replay_endpoint,
    verify,
)

_PR_SET_PDEATHSIG = 1
ENDPOINT_ENV = "SIGNALBOX_ENDPOINT"  # the runtime's decided exchange (`source_env`)


def _child_setup() -> None:
    os.setpgrp()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def process_logging(role: str) -> None:
    """One line per event on stderr (`up` sends it to `<home>/logs/<role>.log`), prefixed by
    the process's role; the exchange clients' chatter only from warnings up."""
    import logging

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {role}: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    for noisy in ("pybit", "websocket", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def spawn(args: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    """Start a child in its own process group that dies with us."""
    return subprocess.Popen(args, env=env, preexec_fn=_child_setup, **kw)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM the child's group, then SIGKILL after `timeout`; returns its exit code."""
    if proc.poll() is not None:
        return proc.returncode
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


@dataclass
class ReplayProcess:
    proc: subprocess.Popen
    endpoint: Endpoint


def replay_args(settings: Settings, port: int) -> list[str]:
    """`signalbox replay` for exactly this configuration (file, seed, symbols, faults)."""
    r = settings.replay
    args = [sys.executable, "-m", "pipeline.runtime.cli"]
    if settings.config_path:
        args += ["--config", str(settings.config_path)]
    args += ["replay", "--host", r.host, "--port", str(port), "--seed", str(r.seed)]
    args += ["--faults", repr(r.faults), "--symbols", ",".join(r.symbols)]
    if r.data:
        args += ["--data", r.data]
    return args


def start_replay(
    settings: Settings, port: int | None = None, timeout: float = 30.0
) -> ReplayProcess:
    """Start `signalbox replay` with this configuration, logging to `<home>/logs/replay.log`;
    wait until it answers and reports the configured market."""
    port = settings.replay.port if port is None else port
    log = settings.home / "logs" / "replay.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    ready = settings.home / f".replay-ready.{os.getpid()}.json"
    ready.unlink(missing_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        proc = spawn([*replay_args(settings, port), "--ready", str(ready)], stdout=out, stderr=out)
    try:
        rec = _ready_record(proc, ready, log, offset, timeout)
    finally:
        ready.unlink(missing_ok=True)
    rest, ws = rec["rest_url"], rec["ws_url"]
    if not reachable(rest, 5.0):
        stop(proc)
        raise SourceError(f"replay exchange at {rest} does not answer (see {log})")
    base = replay_endpoint(settings)
    ep = Endpoint("replay", rest, ws, base.warehouse_id, base.label)
    try:
        verify(ep)
    except SourceError:
        stop(proc)
        raise
    return ReplayProcess(proc, ep)


def _ready_record(
    proc: subprocess.Popen, ready: Path, log: Path, offset: int, timeout: float
) -> dict:
    """The replay's ready record (its URLs and pid), once it listens; its log's last lines if
    it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            rec = json.loads(ready.read_text())
            if rec.get("pid") == proc.pid:
                return rec
        if proc.poll() is not None:
            text = log.read_bytes()[offset:].decode(errors="replace")
            raise SourceError(
                f"the replay exchange exited with code {proc.returncode}: "
                + " | ".join(text.strip().splitlines()[-3:])
            )
        time.sleep(0.05)
    stop(proc)
    raise SourceError(f"replay exchange did not come up within {timeout:.0f} s (see {log})")


def open_exchange(
    settings: Settings, endpoint: Endpoint, port: int | None = 0, say: Say | None = None
) -> tuple[Endpoint, subprocess.Popen | None]:
    """The home's exchange, answering, verified to be its source and listing every
    configured symbol (a venue's `all` resolved from it when due); never another one.

    Only the replay exchange this configuration describes is ever started (when nothing
    listens where it belongs). An exchange that fails to answer is probed again with backoff;
    if it still fails, the error names it and nothing runs.
    """
    first = probe(endpoint.rest_url, 2.0)
    ours = endpoint.kind == "replay" and managed_replay(settings)
    r = settings.replay
    if not first.ok and first.refused and ours:
        if port and not port_free(r.host, port):  # bound by something that does not listen
            raise SourceError(_replay_port_taken(settings, "it does not accept connections"))
        try:
            replay = start_replay(settings, port=port)
        except SourceError as err:
            if "address already in use" in str(err):
                raise SourceError(_replay_port_taken(settings, "taken meanwhile")) from None
            raise
        try:
            universe.ensure(settings, replay.endpoint, say)
            refuse_unlisted(settings, replay.endpoint)
        except BaseException:
            stop(replay.proc)
            raise
        if say:
            e = replay.endpoint
            say(f"started the replay exchange ({e.label}) at {e.rest_url}")
        return replay.endpoint, replay.proc
    if not first.ok:
        last = probe_with_backoff(endpoint.rest_url, settings.bybit.probe_timeout_s, 4, say)
        if not last.ok and ours:
            raise SourceError(_replay_port_taken(settings, f"what listens there: {last.detail}"))
        if not last.ok:
            hint = (
                "start it (`signalbox replay`) or point SIGNALBOX_BYBIT_URL at it"
                if endpoint.kind == "replay"
                else "check the network or bybit.rest_url"
            )
            raise SourceError(
                f"the exchange of this home, {endpoint.label} at {endpoint.rest_url}, does not "
                f"answer ({last.detail}, after 5 tries); nothing was run. {hint}. Signalbox never "
                "substitutes another source."
            )
    verify(endpoint)
    universe.ensure(settings, endpoint, say)
    refuse_unlisted(settings, endpoint)
    return endpoint, None


@contextmanager
def exchange(settings: Settings, endpoint: Endpoint, say: Say | None = None) -> Iterator[Endpoint]:
    """`open_exchange` for the duration of a block (a replay started here is stopped after)."""
    ep, proc = open_exchange(settings, endpoint, port=0, say=say)
    try:
        yield ep
    finally:
        if proc is not None:
            stop(proc)


def source_env(endpoint: Endpoint) -> dict[str, str]:
    """Environment that hands the decided, opened and verified exchange to the Dagster
    processes we start, as ONE value their `ExchangeResource` takes as it is
    (pipeline/orchestration/resources.py): nothing is resolved again in a run."""
    return {ENDPOINT_ENV: json.dumps(asdict(endpoint))}


def decided_endpoint(settings: Settings, decided: str | None = None) -> Endpoint:
    """The exchange `source_env` handed us (`decided`: its JSON, default `$SIGNALBOX_ENDPOINT`),
    never one that contradicts the home's record; without one, the home's record as it is."""
    from pipeline.exchanges.sources import current, recorded

    decided = decided or os.environ.get(ENDPOINT_ENV)
    if not decided:
        return current(settings)
    ep = Endpoint(**json.loads(decided))
    rec = recorded(settings)
    if rec is not None and rec["warehouse_id"] != ep.warehouse_id:  # never mix sources
        raise SourceError(
            f"this process was handed {ep.label} (${ENDPOINT_ENV}), but the home "
            f"{settings.home} holds data from {rec['label']}; start it with `signalbox up` "
            "or `signalbox backfill`, which decide the source"
        )
    return ep


def port_free(host: str, port: int) -> bool:
    """Can a server bind `host:port` now (nothing else holds it)?"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_in_use(host: str, port: int, fix: str) -> str:
    """The one line `up` says when a port it must serve on is taken."""
    return f"port {port} on {host} is in use: stop what holds it or {fix}"


def _replay_port_taken(settings: Settings, detail: str) -> str:
    r = settings.replay
    fix = "set replay.port / SIGNALBOX_REPLAY_PORT"
    return f"{port_in_use(r.host, r.port, fix)} (the replay exchange's port; {detail})"

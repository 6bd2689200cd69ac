"""Fixtures for the sidecar tests: a real server process, raw socket subscribers, signals.

Signals are priced from the shared synthetic market (seed 7) on a 1-minute grid ending at the
current minute, so they fall inside the publish TTL.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import Settings, load_settings
from pipeline.replay import synthetic
from pipeline.sidecar.protocol import unix_address
from tests.conftest import SEED

ROOT = Path(__file__).resolve().parent.parent
PERSONALITIES = ("scalping", "swing", "ma_trend", "vote")


def make_signals(
    n: int,
    *,
    offset: int = 0,
    personalities: tuple[str, ...] = ("scalping", "swing"),
    timeframe: str = "1m",
    symbol: str = "BTCUSDT",
    exchange: str = "bybit",
    now: dt.datetime | None = None,
    reasons: list[str] | None = None,
) -> list[dict[str, Any]]:
    """`n` distinct signals, one per (minute, personality), newest minute first skipped by
    `offset` slots; returned oldest first like the pipeline would."""
    now = (now or dt.datetime.now(dt.UTC)).replace(second=0, microsecond=0)
    k = len(personalities)
    out = []
    for i in range(offset, offset + n):
        close = now - dt.timedelta(minutes=i // k)
        open_ = close - dt.timedelta(minutes=1)
        ms = int(open_.timestamp() * 1000)
        row = synthetic.candles(symbol, ms, ms + 60_000, seed=SEED)[0]
        out.append(
            {
                "exchange": exchange,
                "symbol": symbol,
                "personality": personalities[i % k],
                "timeframe": timeframe,
                "action": "BUY" if row[4] >= row[1] else "SELL",
                "confidence": round(abs(row[4] - row[1]) / max(row[2] - row[3], 1e-9), 4),
                "price": float(row[4]),
                "open_time": open_,
                "close_time": close,
                "reasons": reasons if reasons is not None else ["synthetic", f"slot {i}"],
                "quality": "ok",
                "snapshot": {"close": float(row[4])},
            }
        )
    return out[::-1]


def write_config(tmp_path: Path, home: Path, **sidecar: Any) -> tuple[Path, Settings]:
    """A signalbox.yaml with these sidecar settings; returns its path and the settings."""
    cfg = tmp_path / "signalbox.yaml"
    sc = {"heartbeat_s": 0.5, "signal_ttl_minutes": 60 * 24 * 30, **sidecar}
    cfg.write_text(yaml.safe_dump({"home": str(home), "sidecar": sc}))
    return cfg, load_settings(cfg, env={"SIGNALBOX_HOME": str(home)})


class SidecarProc:
    """`signalbox sidecar` in a subprocess, ready once its socket accepts connections.
    `close_grace_s` shortens how long an evicted subscriber's connection is kept open."""

    def __init__(
        self, cfg: Path, home: Path, log: Path, close_grace_s: float | None = None
    ) -> None:
        self.cfg, self.home, self.log_path = cfg, home, log
        self.close_grace_s = close_grace_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.tcp_port: int | None = None
        self._mark = 0

    @property
    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def start(self, wait: bool = True) -> SidecarProc:
        self._mark = self.log.count(" serving ")
        env = {**os.environ, "SIGNALBOX_HOME": str(self.home), "SIGNALBOX_CONFIG": str(self.cfg)}
        cmd = [sys.executable, "-m", "pipeline.runtime.cli", "sidecar"]
        if self.close_grace_s is not None:
            cmd[1:] = [
                "-c",
                "import sys; from pipeline.sidecar import subscriber; "
                f"subscriber.CLOSE_GRACE_S = {self.close_grace_s!r}; "
                "from pipeline.runtime.cli import main; sys.exit(main(['sidecar']))",
            ]
        with self.log_path.open("ab") as err:
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited with {self.proc.returncode}:\n{self.log}")
            text = self.log
            if text.count(" serving ") > self._mark:
                m = re.findall(r"tcp [\d.]+:(\d+)", text)
                self.tcp_port = int(m[-1]) if m else None
                return
            time.sleep(0.02)
        raise AssertionError(f"sidecar not ready after {timeout} s:\n{self.log}")

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        """Until the sidecar has logged `text`."""
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if time.monotonic() > deadline:
                raise AssertionError(f"the sidecar did not log {text!r}:\n{self.log}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Sub:
    """A raw subscriber on a real socket: send lines, read messages with a timeout."""

    def __init__(self, path: Path | None = None, *, tcp: tuple[str, int] | None = None) -> None:
        if tcp is not None:
            self.sock = socket.create_connection(tcp, timeout=5)
        else:
            assert path is not None
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with unix_address(path) as addr:
                self.sock.connect(addr)
        self.buf = b""

    def send(self, msg: dict[str, Any] | bytes) -> None:
        data = msg if isinstance(msg, bytes) else json.dumps(msg).encode() + b"\n"
        self.sock.sendall(data)

    def recv(self, timeout: float = 5.0, heartbeats: bool = False) -> dict[str, Any] | None:
        """The next message, or None at EOF; raises TimeoutError when nothing comes."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                msg = json.loads(line)
                if heartbeats or msg.get("type") != "heartbeat":
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from the sidecar")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                raise TimeoutError("no message from the sidecar") from None
            if not chunk:
                return None
            self.buf += chunk

    def recv_type(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        while True:
            msg = self.recv(timeout)
            assert msg is not None, f"connection closed while waiting for {kind}"
            if msg["type"] == kind:
                return msg

    def signals(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        out = []
        while len(out) < n:
            msg = self.recv(timeout)
            assert msg is not None, f"connection closed after {len(out)} of {n} signals"
            if msg["type"] == "signal":
                out.append(msg)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sidecar_cfg(tmp_path: Path, home: Path) -> Callable[..., tuple[Path, Settings]]:
    """Write the test configuration: `sidecar_cfg(history=50, client_buffer=10, ...)`."""

    def make(**sidecar: Any) -> tuple[Path, Settings]:
        return write_config(tmp_path, home, **sidecar)

    return make


@pytest.fixture
def sidecar(tmp_path: Path, home: Path) -> Iterator[Callable[..., SidecarProc]]:
    """Start sidecar processes on the test's home: `sidecar(cfg)`; all stopped at teardown.
    `sidecar(cfg, wait=False)` does not wait for it to serve (e.g. when it must refuse)."""
    procs: list[SidecarProc] = []

    def start(cfg: Path, wait: bool = True, close_grace_s: float | None = None) -> SidecarProc:
        p = SidecarProc(cfg, home, tmp_path / f"sidecar{len(procs)}.log", close_grace_s)
        procs.append(p)
        return p.start(wait)

    yield start
    for p in procs:
        if p.alive:
            p.stop(signal.SIGKILL)


@pytest.fixture
def signals() -> Callable[..., list[dict[str, Any]]]:
    """`signals(n, offset=0, personalities=..., ...)`: see `make_signals`. Every call in a test
    reads the clock once, so an offset names the same slot even when the minute turns."""
    now = dt.datetime.now(dt.UTC)

    def make(n: int, **kw: Any) -> list[dict[str, Any]]:
        kw.setdefault("now", now)
        return make_signals(n, **kw)

    return make


@pytest.fixture
def connect() -> Iterator[Callable[..., Sub]]:
    """Open raw subscribers: `connect(path)` or `connect(tcp=(host, port))`; closed at teardown."""
    subs: list[Sub] = []

    def make(path: Path | None = None, *, tcp: tuple[str, int] | None = None) -> Sub:
        subs.append(Sub(path, tcp=tcp))
        return subs[-1]

    yield make
    for s in subs:
        s.close()

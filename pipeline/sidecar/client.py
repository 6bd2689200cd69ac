"""A small blocking client for the sidecar, and `signalbox tail` on top of it.

    for sig in Client(settings.socket_path, personalities=["scalping"]):
        print(sig["seq"], sig["action"])

The client sends its subscribe as soon as it connects, remembers the last seq it yielded, and
on any disconnect reconnects with exponential backoff and jitter, resuming with
`since_seq=<last seq>` so nothing is missed; anything at or below the last seq is dropped, so
nothing is seen twice either. A `gap` message (the history no longer reached back) is passed
through to `messages()` so the caller can tell. Signals sent from history (the snapshot on
connect, what a reconnect replays) carry `"replayed": true`: check it before acting on one.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.sidecar import protocol as proto

if TYPE_CHECKING:
    from pipeline.config import Settings

# Errors that reconnecting cannot fix: the caller has to change something.
FATAL_CODES = frozenset({"unauthorized", "invalid_filter", "invalid_since_seq", "invalid_token"})


NO_SIDECAR = 1  # `signalbox tail` when nothing serves the socket


class SidecarError(RuntimeError):
    """The server refused the request (bad token, bad filter): retrying would not help."""


class Client:
    """Subscribe to the sidecar over its Unix socket (`path`) or TCP (`host`, `port`, `token`)."""

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        token: str | None = None,
        symbols: list[str] | None = None,
        personalities: list[str] | None = None,
        timeframes: list[str] | None = None,
        since_seq: int | None = None,
        reconnect: bool = True,
        backoff_min_s: float = 0.05,
        backoff_max_s: float = 5.0,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        if (path is None) == (host is None):
            raise ValueError("give either a socket path or a TCP host and port")
        self.path = Path(path) if path is not None else None
        self.host, self.port, self.token = host, port, token
        self.filters = {
            "symbols": symbols,
            "personalities": personalities,
            "timeframes": timeframes,
        }
        self.since_seq = since_seq
        self.last_seq: int | None = since_seq
        self.reconnect = reconnect
        self.backoff = (backoff_min_s, backoff_max_s)
        self.on_status = on_status or (lambda _msg: None)
        self.connects = 0
        self._sock: socket.socket | None = None
        self._closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.signals()

    def signals(self) -> Iterator[dict[str, Any]]:
        """Each new signal once, in seq order."""
        for msg in self.messages():
            if msg.get("type") == "signal":
                yield msg

    def close(self) -> None:
        self._closed = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def _connect(self) -> socket.socket:
        if self.path is not None:
            # 10 s until the hello says how often heartbeats come
            return proto.connect_unix(self.path, 10)
        sock = socket.create_connection((self.host or "127.0.0.1", self.port or 0), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def messages(self) -> Iterator[dict[str, Any]]:
        """Every message (hello, signal, gap, error, heartbeat), signals deduplicated by seq."""
        attempt = 0
        while not self._closed:
            try:
                sock = self._sock = self._connect()
            except OSError as err:
                if not self.reconnect:
                    raise
                attempt = self._wait(attempt, f"sidecar unavailable ({err.strerror or err})")
                continue
            self.connects += 1
            try:
                since = self.last_seq if self.last_seq is not None else self.since_seq
                sock.sendall(
                    proto.subscribe_line(**self.filters, since_seq=since, token=self.token)
                )
                for msg in self._read(sock):
                    kind = msg.get("type")
                    if kind == "hello":
                        attempt = 0
                        sock.settimeout(3 * float(msg.get("heartbeat_s", 5)) + 1)
                    elif kind == "signal":
                        seq = msg.get("seq")
                        if not isinstance(seq, int):
                            continue
                        if self.last_seq is not None and seq <= self.last_seq:
                            continue
                        self.last_seq = seq
                    elif kind == "error":
                        if msg.get("code") in FATAL_CODES:
                            raise SidecarError(f"{msg.get('code')}: {msg.get('message')}")
                        if msg.get("code") == "since_ahead":
                            self.last_seq = None  # the server's outbox was reset; follow it
                    yield msg
                reason = "sidecar closed the connection"
            except (OSError, ValueError) as err:
                if self._closed:
                    return
                reason = f"connection lost ({err})"
            finally:
                self._sock = None
                sock.close()
            if not self.reconnect or self._closed:
                return
            attempt = self._wait(attempt, reason)

    def _wait(self, attempt: int, reason: str) -> int:
        lo, hi = self.backoff
        cap = min(hi, lo * 2**attempt)
        delay = random.uniform(cap / 2, cap)  # jitter: many clients do not reconnect in step
        self.on_status(f"{reason}; reconnecting in {delay:.2f} s")
        time.sleep(delay)
        return attempt + 1

    def _read(self, sock: socket.socket) -> Iterator[dict[str, Any]]:
        buf = b""
        while not self._closed:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)


def server_status(path: Path, timeout: float = 5.0) -> dict[str, Any] | None:
    """What the sidecar serving `path` says of itself (pid, subscribers, latest seq); None
    when nothing serves there."""
    try:
        sock = proto.connect_unix(path, timeout)
    except OSError:
        return None
    with sock:
        try:
            sock.sendall(proto.encode({"op": "status"}))
            buf = b""
            while chunk := sock.recv(1 << 16):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    msg = json.loads(line) if line.strip() else {}
                    if msg.get("type") == "status":
                        return msg
        except (OSError, ValueError):
            return None
    return None


def format_signal(msg: dict[str, Any]) -> str:
    """One human-readable line per signal, naming the lane that delivered it (`origin=fast`
    or `origin=pipeline`); one sent from history says `[replayed]`."""
    reasons = "; ".join(msg.get("reasons") or [])
    return (
        f"#{msg['seq']} {msg['close_time']} {msg.get('exchange', 'bybit')}:{msg['symbol']} "
        f"{msg['timeframe']} "
        f"{msg['personality']} {msg['action']} conf={msg['confidence']:.2f} "
        f"price={msg['price']} quality={msg['quality']} "
        f"origin={msg.get('origin', 'pipeline')}"
        + (" [replayed]" if msg.get("replayed") else "")
        + (f"  {reasons}" if reasons else "")
    )


def tail_main(
    settings: Settings,
    symbols: list[str] | None,
    personalities: list[str] | None,
    timeframes: list[str] | None,
    since: int | None,
    raw: bool,
    wait: bool = False,
) -> int:
    """`signalbox tail`: print signals as they arrive until Ctrl-C (exit 0). Without a
    sidecar it says how to start one and exits 1, unless `wait`: then it waits for one."""

    def status(text: str) -> None:
        print(f"signalbox tail: {text}", file=sys.stderr, flush=True)

    if not wait and not proto.serving(settings.socket_path):
        status(
            f"no sidecar is serving {settings.socket_path}: start everything with `signalbox "
            "up` (make run), or only the sidecar with `signalbox sidecar` (or pass --wait)"
        )
        return NO_SIDECAR

    client = Client(
        settings.socket_path,
        symbols=symbols,
        personalities=personalities,
        timeframes=timeframes,
        since_seq=since,
        on_status=status,
    )
    try:
        for msg in client.messages():
            kind = msg.get("type")
            if kind == "hello":
                status(f"connected to {settings.socket_path} (latest seq {msg.get('seq')})")
            elif kind == "signal":
                text = json.dumps(msg, separators=(",", ":")) if raw else format_signal(msg)
                print(text, flush=True)
            elif kind in ("gap", "error"):
                if raw:
                    print(json.dumps(msg, separators=(",", ":")), flush=True)
                else:
                    status(f"{kind}: {msg.get('message')}")
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # e.g. piped into `head`
        return 0
    except SidecarError as err:
        status(str(err))
        return 1
    finally:
        client.close()
    return 0

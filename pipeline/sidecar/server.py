"""The always-on sidecar: tails the outbox and streams signals to subscribers (asyncio).

One event loop, no threads. The outbox is read on a poke datagram from the publisher and on
a short poll as a fallback; each new line is routed by its key and forwarded as the very bytes
the publisher wrote, joined once per distinct filter, never re-encoded per subscriber.

This module holds the sockets, their locks and the serving loop; the history and fan-out are
in pipeline.sidecar.hub, one subscriber connection and its states in pipeline.sidecar.subscriber.

Everything a subscriber was sent from the past (the latest-per-key snapshot, a `since_seq`
replay, history from before a restart) carries `"replayed": true`; lines pushed live carry
`"replayed": false`, as the publisher wrote them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import resource
import signal
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.config import Settings, load_settings
from pipeline.sidecar import protocol as proto
from pipeline.sidecar.files import UnsafePath, check_dir, check_owned, open_private
from pipeline.sidecar.hub import Hub
from pipeline.sidecar.segments import WAKE
from pipeline.sidecar.subscriber import Conn

log = logging.getLogger("signalbox.sidecar")

POLL_S = 0.25  # fallback outbox poll when no poke arrives


class Refused(RuntimeError):
    """The sidecar cannot start (another one is live, bad configuration): say why, exit 1."""


# -- sockets ------------------------------------------------------------------------------


def _take_lock(path: Path, busy: str) -> int:
    """Hold `<path>.lock` for our lifetime: a live sidecar is never displaced. `busy` says
    what the holder is doing, for the refusal."""
    fd = open_private(f"{path}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise Refused(f"another sidecar (pid {pid}) is already {busy}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _bind(path: Path, kind: socket.SocketKind) -> socket.socket:
    """A Unix socket at `path`, mode 0600 from the start. Called under `path`'s lock, so a
    socket file of ours already there was left by a killed sidecar and is replaced; anything
    else (a file, a symlink, another user's socket, a live server) is refused."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    if st is not None:
        check_owned(path, st, stat.S_ISSOCK, "a socket")
        if kind == socket.SOCK_STREAM and proto.serving(path):
            raise Refused(f"a live server is already listening on {path}")
        log.info("removing stale socket %s", path)
        path.unlink()  # removes the name, whatever it points to
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_NONBLOCK)
    old = os.umask(0o177)  # no window in which the socket is reachable by others
    try:
        with proto.unix_address(path) as addr:
            sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


def _bind_tcp(settings: Settings) -> socket.socket:
    sc = settings.sidecar
    if not sc.token:
        raise Refused(
            "sidecar.tcp_port is set but sidecar.token is empty: a TCP listener "
            "needs a token (set sidecar.token in the configuration)"
        )
    sock = socket.create_server((sc.tcp_host, sc.tcp_port or 0), backlog=1024)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def _raise_fd_limit() -> None:
    """Each subscriber is a file descriptor; the usual soft limit of 1024 is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or SIGINT/SIGTERM); removes the socket files on the way out.

    Refuses (Refused, UnsafePath) before serving when the home or the outbox is not safe to
    use, or another sidecar holds the socket or the outbox."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    path, box = settings.socket_path, settings.outbox_dir
    path.parent.mkdir(parents=True, exist_ok=True)
    check_dir(path.parent, private=False)
    box.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_dir(box, private=True)
    wake_path = box / WAKE
    with contextlib.ExitStack() as stack:
        busy = f"serving {path}; stop it first or set sidecar.socket to another path"
        stack.callback(os.close, _take_lock(path, busy))
        stack.callback(os.close, _take_lock(wake_path, f"reading the outbox {box}; stop it first"))
        wake = _bind_owned(stack, wake_path, socket.SOCK_DGRAM)
        hub = Hub(settings)
        hub.restore()
        unix = _bind_owned(stack, path, socket.SOCK_STREAM)
        unix.listen(1024)
        srv = await loop.create_unix_server(lambda: Conn(hub, False), sock=unix)
        stack.callback(srv.close)
        where = str(path)
        if settings.sidecar.tcp_port is not None:
            tcp = _bind_tcp(settings)
            stack.callback(tcp.close)
            srv = await loop.create_server(lambda: Conn(hub, True), sock=tcp)
            stack.callback(srv.close)
            host, port = tcp.getsockname()[:2]
            where += f" and tcp {host}:{port}"

        def on_wake() -> None:
            try:
                while wake.recv(64):
                    pass
            except OSError:
                pass
            hub.ingest()

        loop.add_reader(wake.fileno(), on_wake)
        stack.callback(loop.remove_reader, wake.fileno())

        async def every(period: float, fn: Callable[[], None]) -> None:
            while True:
                await asyncio.sleep(period)
                try:
                    fn()
                except Exception:
                    log.exception("periodic %s failed", fn.__name__)

        for period, fn in ((POLL_S, hub.ingest), (settings.sidecar.heartbeat_s, hub.heartbeat)):
            stack.callback(asyncio.create_task(every(period, fn)).cancel)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            stack.callback(loop.remove_signal_handler, sig)
        log.info(
            "serving %s; latest seq %d, %d in history, outbox %s",
            where,
            hub.last_seq,
            len(hub.seqs),
            box,
        )
        await stop.wait()
        log.info("stopping (%d subscriber(s) connected)", len(hub.conns))
        for c in list(hub.conns):
            if c.transport is not None:
                c.transport.abort()


def _bind_owned(stack: contextlib.ExitStack, path: Path, kind: socket.SocketKind) -> socket.socket:
    """`_bind`, with the socket closed and its file removed (if still ours) when `stack` ends."""
    sock = _bind(path, kind)
    stack.callback(sock.close)
    ino = path.lstat().st_ino

    def remove() -> None:
        with contextlib.suppress(FileNotFoundError):
            if path.lstat().st_ino == ino:
                path.unlink()

    stack.callback(remove)
    return sock


def main(settings: Settings) -> int:
    """`signalbox sidecar`: serve until SIGINT/SIGTERM; 0 on a clean stop, 1 if refused."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s sidecar %(levelname)s %(message)s",
        )
    _raise_fd_limit()
    try:
        asyncio.run(serve(settings))
    except (Refused, UnsafePath) as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(load_settings()))

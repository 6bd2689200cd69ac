"""The always-on sidecar: tails the outbox and streams signals to subscribers (asyncio).

One event loop, no threads. The outbox is read on a poke datagram from the publisher and on
a short poll as a fallback; each new line is routed by its key and forwarded as the very bytes
the publisher wrote, joined once per distinct filter, never re-encoded per subscriber.

A subscriber is in one of four states: `auth` (TCP, before its token), `pending` (waiting a
moment for a subscribe before defaulting to everything), `catchup` (being fed its snapshot or
replay straight from the history as fast as its socket drains, so a replay longer than its
buffer is fine), `live` (new lines pushed as they arrive; when its socket is full they queue,
and past `client_buffer` queued messages it is evicted), `closing` (evicted: its reason line
is the last thing it reads, however late it reads).

Everything a subscriber was sent from the past (the latest-per-key snapshot, a `since_seq`
replay, history from before a restart) carries `"replayed": true`; lines pushed live carry
`"replayed": false`, as the publisher wrote them.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import datetime as dt
import fcntl
import functools
import hmac
import itertools
import logging
import os
import resource
import signal
import socket
import stat
import struct
import sys
import termios
from collections.abc import Callable
from pathlib import Path

from pipeline.candles.timeframes import MINUTE_US, to_us
from pipeline.config import Settings, load_settings
from pipeline.sidecar import outbox
from pipeline.sidecar import protocol as proto
from pipeline.sidecar.files import UnsafePath, check_dir, check_owned, open_private
from pipeline.sidecar.outbox import Entry, Key

log = logging.getLogger("signalbox.sidecar")

SUBSCRIBE_GRACE_S = 0.2  # a plain client (socat) gets everything after this long
AUTH_TIMEOUT_S = 5.0
POLL_S = 0.25  # fallback outbox poll when no poke arrives
WRITE_HIGH = 64 * 1024  # bytes waiting for the socket above which messages are queued, counted
WRITE_LOW = WRITE_HIGH // 4  # ... and below which the queue moves on again
IOV = 64  # buffers per writev
CHUNK = 512  # history lines written per catch-up step
CLOSE_GRACE_S = 10.0  # how long an evicted client's connection is kept for it to read the reason


class Refused(RuntimeError):
    """The sidecar cannot start (another one is live, bad configuration): say why, exit 1."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("signalbox")
    except Exception:
        return "0"


class Hub:
    """The history, the latest line per key, and the connected subscribers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.history = settings.sidecar.history
        self.limit = settings.sidecar.client_buffer
        self.version = _version()
        self.ttl_us = settings.sidecar.signal_ttl_minutes * MINUTE_US
        self.tail = outbox.Tail(settings.outbox_dir)
        self.seqs: list[int] = []
        self.lines: list[bytes] = []
        self.keys: list[Key] = []
        self.latest: dict[Key, Entry] = {}
        self.last_seq = 0
        self.trimmed_upto = 0  # every seq <= this has left the in-memory history
        self.read_error = ""  # the last outbox read error logged
        # dicts as ordered sets: fan-out goes in subscription order (fair, and consecutive
        # sends to one subscriber process find it awake instead of waking it each time)
        self.live: dict[Conn, None] = {}
        self.conns: set[Conn] = set()

    # -- outbox ---------------------------------------------------------------------------
    def restore(self) -> None:
        """History and latest signals from the outbox, as they were before a restart."""
        state = outbox.read_state(self.settings.outbox_dir)
        for e in outbox.latest_from_state(state):
            self.latest[e.key] = e
        self.trimmed_upto = -1
        self._add(self.tail.read())
        self._trim(self.history)
        self.last_seq = max(self.last_seq, int((state or {}).get("last_seq", 0)))
        self.trimmed_upto = self.seqs[0] - 1 if self.seqs else self.last_seq

    def _add(self, entries: list[Entry]) -> None:
        for e in entries:
            self.seqs.append(e.seq)
            self.lines.append(e.line)
            self.keys.append(e.key)
            if e.key not in self.latest or self.latest[e.key].seq < e.seq:
                self.latest[e.key] = e
        if entries:
            self.last_seq = max(self.last_seq, entries[-1].seq)
        if len(self.seqs) > 2 * self.history:  # trim in batches: amortised O(1) per line
            self._trim(self.history)

    def _trim(self, keep: int) -> None:
        extra = len(self.seqs) - keep
        if extra > 0:
            self.trimmed_upto = self.seqs[extra - 1]
            del self.seqs[:extra], self.lines[:extra], self.keys[:extra]

    def ingest(self) -> None:
        """Read what the publishers appended and push it to the live subscribers."""
        try:
            entries = self.tail.read()
        except OSError as err:  # e.g. an UnsafePath planted meanwhile: said once, not per poll
            if str(err) != self.read_error:
                log.warning("cannot read the outbox: %s", err)
                self.read_error = str(err)
            return
        self.read_error = ""
        if not entries:
            return
        if self.tail.skipped:
            log.warning(
                "%d signal(s) were compacted out of the outbox before being read", self.tail.skipped
            )
            self.tail.skipped = 0
        self._add(entries)
        self.broadcast(entries)

    def broadcast(self, entries: list[Entry]) -> None:
        joined: dict[proto.Filter, tuple[bytes, int]] = {}
        for c in list(self.live):
            f = c.filter
            if f not in joined:
                sel = [e.line for e in entries if f.everything or f.matches(e.key)]
                joined[f] = (b"".join(sel), len(sel))
            data, n = joined[f]
            if n:
                c.send(data, n)

    def heartbeat(self) -> None:
        msg = proto.heartbeat(self.last_seq, dt.datetime.now(dt.UTC))
        for c in list(self.live):
            c.send(msg)

    # -- what a new subscription starts with ------------------------------------------------
    def snapshot(self, f: proto.Filter) -> list[bytes]:
        """The latest signal per key that is still news: its bar closed at most
        `signal_ttl_minutes` ago by this machine's clock (the TTL `publish` applies by default).
        Older ones are history, left to a `since_seq` replay."""
        cutoff = to_us(dt.datetime.now(dt.UTC)) - self.ttl_us
        return [
            e.line
            for e in sorted(self.latest.values(), key=lambda e: e.seq)
            if e.close_us >= cutoff and (f.everything or f.matches(e.key))
        ]

    def oldest_seq(self) -> int:
        return self.seqs[0] if self.seqs else self.last_seq + 1


_DONE = frozenset({"closing", "closed"})


class Conn(asyncio.Protocol):
    """One subscriber connection.

    The transport only reads. Output goes through our own duplicate of the socket, written
    directly and buffered here (`out`) when the socket is full: so that on eviction the
    backlog can be cut back to a line boundary and the reason put right after the last line
    the client already has, which the transport's own buffer would not allow.
    """

    def __init__(self, hub: Hub, tcp: bool) -> None:
        self.hub = hub
        self.tcp = tcp
        self.state = "auth" if tcp else "pending"
        self.filter = proto.Filter()
        self.loop = asyncio.get_running_loop()  # made by the server's protocol factory
        self.transport: asyncio.Transport | None = None
        self.sock: socket.socket | None = None  # our duplicate of the socket, for output
        self.fd = -1
        self.writing = False  # a writer callback is registered for fd
        self.out: collections.deque[bytes] = collections.deque()  # whole lines, not yet written
        self.out_off = 0  # bytes of out[0] already written
        self.out_bytes = 0  # bytes in out not yet written
        self.paused = False  # out is past WRITE_HIGH: new messages wait in `queue`
        self.peer_eof = False
        self.inbuf = bytearray()
        self.discarding = False
        self.queue: collections.deque[tuple[bytes, int]] = collections.deque()
        self.queued = 0
        self.initial: collections.deque[bytes] = collections.deque()
        self.cursor = 0  # last history seq considered during catch-up
        self.replay_upto = 0  # seqs up to this one were in the sidecar when it subscribed
        self.timer: asyncio.TimerHandle | None = None

    @property
    def open(self) -> bool:
        return self.state not in _DONE

    # -- asyncio callbacks ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        tsock = transport.get_extra_info("socket")
        self.sock = tsock.dup()  # non-blocking, like the transport's
        self.fd = self.sock.fileno()
        self.hub.conns.add(self)
        if self.tcp:
            if self.sock.family in (socket.AF_INET, socket.AF_INET6):
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.timer = self.loop.call_later(AUTH_TIMEOUT_S, self._auth_timeout)
        else:
            self._hello()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = "closed"
        self.hub.live.pop(self, None)
        self.hub.conns.discard(self)
        if self.timer:
            self.timer.cancel()
        self.queue.clear()
        self.initial.clear()
        self.out.clear()
        if self.sock is not None:
            if self.writing:
                self.loop.remove_writer(self.fd)
                self.writing = False
            self.sock.close()
            self.sock = None

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception:  # a bug must cost one connection, never the server
            log.exception("unexpected error handling a subscriber's input")
            self.close("internal_error", "the server could not handle this input")

    def _received(self, data: bytes) -> None:
        if not self.open:
            return
        if self.discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return
            data, self.discarding = data[nl + 1 :], False
        self.inbuf += data
        while self.open:
            nl = self.inbuf.find(b"\n")
            if nl < 0:
                break
            line = bytes(self.inbuf[:nl])
            del self.inbuf[: nl + 1]
            if len(line) > proto.MAX_LINE:
                self._too_long()
            elif line.strip():
                self._request(line)
        if len(self.inbuf) > proto.MAX_LINE:
            self.inbuf.clear()
            self.discarding = True
            self._too_long()

    def eof_received(self) -> bool:
        """A subscriber that has nothing more to say still wants signals; an evicted one that
        has its reason and closes is let go at once."""
        self.peer_eof = True
        return self.state != "closing" or bool(self.out)

    def _too_long(self) -> None:
        self.send(
            proto.error(
                "line_too_long",
                f"request lines are limited to {proto.MAX_LINE} bytes; the line was ignored",
            )
        )

    # -- requests -------------------------------------------------------------------------
    def _request(self, line: bytes) -> None:
        s = self.hub.settings
        try:
            req = proto.parse_request(line, s.personality_names, s.timeframes)
        except proto.ProtocolError as err:
            if self.state == "auth":
                return self.close("unauthorized", f"authenticate first ({err})")
            self.send(proto.error(err.code, str(err)))
            return None
        except Exception as err:  # never let one client's input take the server down
            log.exception("unexpected error parsing a request")
            self.send(proto.error("bad_request", f"could not handle the request: {err}"))
            return None
        if self.state == "auth":
            token = s.sidecar.token or ""
            if req.token is None or not hmac.compare_digest(req.token.encode(), token.encode()):
                return self.close("unauthorized", "missing or wrong token")
            if self.timer:
                self.timer.cancel()
            self._hello()
        if req.op == "subscribe":
            self._subscribe(req)
        elif req.op == "status":
            self._status()
        return None

    def _status(self) -> None:
        """Answer a status request, then close like an eviction does (EOF after the line)."""
        h = self.hub
        subs = sum(1 for c in h.conns if c is not self and c.state in ("catchup", "live"))
        if self.timer:
            self.timer.cancel()
        h.live.pop(self, None)
        self.queue.clear()
        self.initial.clear()
        self.send(proto.status(h.last_seq, subs, h.version))
        self.state = "closing"
        self.timer = self.loop.call_later(CLOSE_GRACE_S, self._give_up)
        if not self.out:
            self._delivered()

    def _hello(self) -> None:
        h = self.hub
        self.send(
            proto.hello(h.last_seq, h.oldest_seq(), h.settings.sidecar.heartbeat_s, h.version)
        )
        self.state = "pending"
        self.timer = self.loop.call_later(
            SUBSCRIBE_GRACE_S, self._subscribe, proto.Request("subscribe")
        )

    def _auth_timeout(self) -> None:
        self.close("unauthorized", f"no token within {AUTH_TIMEOUT_S:.0f} s")

    def _subscribe(self, req: proto.Request) -> None:
        """Start (or restart) the stream: snapshot or replay from history, then live."""
        if not self.open:
            return
        if self.timer:
            self.timer.cancel()
            self.timer = None
        h = self.hub
        h.live.pop(self, None)
        self.filter = req.filter
        self.initial.clear()
        self.replay_upto = h.last_seq
        if req.since_seq is None:
            self.initial.extend(proto.replayed(line) for line in h.snapshot(req.filter))
            self.cursor = h.last_seq
        elif req.since_seq > h.last_seq:
            self.send(
                proto.error(
                    "since_ahead",
                    f"since_seq {req.since_seq} is ahead of the "
                    f"latest seq {h.last_seq}; streaming new signals only",
                )
            )
            self.cursor = h.last_seq
        elif req.since_seq < h.trimmed_upto:
            self.send(proto.gap(req.since_seq, h.oldest_seq()))
            self.cursor = h.trimmed_upto
        else:
            self.cursor = req.since_seq
        self.state = "catchup"
        self._pump()

    # -- output ---------------------------------------------------------------------------
    def send(self, data: bytes, n: int = 1) -> None:
        """Write now if the socket keeps up, else queue; too much queued: evict."""
        if self.state in _DONE:
            return
        if self.paused or self.queue:
            self.queue.append((data, n))
            self.queued += n
            if self.queued > self.hub.limit:
                self.close(
                    "too_slow",
                    f"more than {self.hub.limit} messages behind; "
                    "reconnect with since_seq to resume",
                )
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        """Hand whole lines to the socket: the fan-out hot path is one write(2); what the
        socket cannot take now waits in `out` for the loop to say it is writable."""
        if not self.out:
            try:
                sent = os.write(self.fd, data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as err:
                return self._lost(err)
            if sent == len(data):
                return None
            self.out_off, self.out_bytes = sent, -sent
            self._want_writable(True)
        self.out.append(data)
        self.out_bytes += len(data)
        if self.out_bytes > WRITE_HIGH:
            self.paused = True
        return None

    def _want_writable(self, on: bool) -> None:
        if on and not self.writing:
            self.loop.add_writer(self.fd, self._writable)
        elif not on and self.writing:
            self.loop.remove_writer(self.fd)
        self.writing = on

    def _drain(self) -> None:
        """Write what waits in `out` while the socket takes it."""
        while self.out:
            bufs = [memoryview(self.out[0])[self.out_off :], *itertools.islice(self.out, 1, IOV)]
            try:
                sent = os.writev(self.fd, bufs)
            except (BlockingIOError, InterruptedError):
                return self._want_writable(True)
            except OSError as err:
                return self._lost(err)
            self.out_bytes -= sent
            sent += self.out_off
            while self.out and sent >= len(self.out[0]):
                sent -= len(self.out.popleft())
            self.out_off = sent
        return self._want_writable(False)

    def _writable(self) -> None:
        self._drain()
        if self.state == "closing":
            if not self.out:
                self._delivered()
        elif self.paused and self.out_bytes <= WRITE_LOW and self.state != "closed":
            self.paused = False
            self._flush()

    def _lost(self, err: OSError) -> None:
        """Writing failed (the client is gone): drop the connection."""
        log.debug("subscriber gone: %s", err)
        self.state = "closed"
        self.hub.live.pop(self, None)
        self.out.clear()
        assert self.transport is not None
        self.transport.abort()

    def _flush(self) -> None:
        while self.queue and not self.paused and self.open:
            data, n = self.queue.popleft()
            self.queued -= n
            self._write(data)
        if self.state == "catchup" and not self.queue:
            self._pump()

    def _pump(self) -> None:
        """Feed the snapshot, then history after the cursor, while the socket takes it."""
        h = self.hub
        while self.state == "catchup" and not self.paused:
            if self.initial:
                n = min(CHUNK, len(self.initial))
                self._write(b"".join(self.initial.popleft() for _ in range(n)))
                continue
            if self.cursor < h.trimmed_upto:
                self.close("too_slow", "fell behind the replay history; reconnect to resume")
                return
            i = bisect.bisect_right(h.seqs, self.cursor)
            if i >= len(h.seqs):
                self.state = "live"
                h.live[self] = None
                return
            j = min(i + CHUNK, len(h.seqs))
            f = self.filter
            upto = self.replay_upto
            sel = [
                proto.replayed(h.lines[k]) if h.seqs[k] <= upto else h.lines[k]
                for k in range(i, j)
                if f.everything or f.matches(h.keys[k])
            ]
            self.cursor = h.seqs[j - 1]
            if sel:
                self._write(b"".join(sel))

    def close(self, code: str, message: str) -> None:
        """Evict with a reason that is always the last line the client reads, right after
        the last whole line it already has, however late it starts reading.

        The backlog is dropped, except the rest of a line the socket has half taken; the
        reason follows, with the socket's send buffer enlarged if a client that stopped
        reading has filled it. Once the reason is in the socket our side is shut (the client
        reads it, then EOF), and the connection is closed when the client closes or after
        CLOSE_GRACE_S (its data stays readable after that)."""
        if not self.open or self.transport is None:
            return
        log.info("disconnecting a subscriber: %s (%s)", message, code)
        self.state = "closing"
        self.hub.live.pop(self, None)
        self.queue.clear()
        self.queued = 0
        self.initial.clear()
        if self.timer:
            self.timer.cancel()
        rest = b""
        if self.out and self.out_off and self.out[0][self.out_off - 1] != ord("\n"):
            first = self.out[0]
            rest = first[self.out_off : first.index(b"\n", self.out_off) + 1]
        reason = rest + proto.error(code, message, fatal=True)
        self.out.clear()
        self.out.append(reason)
        self.out_off, self.out_bytes = 0, len(reason)
        self.timer = self.loop.call_later(CLOSE_GRACE_S, self._give_up)
        self._drain()
        if self.out and self.state == "closing":
            self._make_room()
            self._drain()
        if self.state == "closing" and not self.out:
            self._delivered()

    def _make_room(self) -> None:
        """Grow the full send buffer past what it holds (SIOCOUTQ) plus the reason; Linux
        doubles the value set and caps it at net.core.wmem_max. Never shrinks it."""
        assert self.sock is not None
        with contextlib.suppress(OSError):
            held = struct.unpack("i", fcntl.ioctl(self.fd, termios.TIOCOUTQ, b"\0" * 4))[0]
            size = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            want = min(held + self.out_bytes + 65536, _wmem_max())
            if 2 * want > size:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, want)

    def _delivered(self) -> None:
        """The reason is in the socket: EOF after it; close now if the client already left."""
        assert self.sock is not None and self.transport is not None
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        if self.peer_eof:
            self.transport.close()

    def _give_up(self) -> None:
        if self.state != "closing" or self.transport is None:
            return
        if self.out:
            log.warning("closing an evicted subscriber that never made room for its reason")
        self.transport.abort()


@functools.lru_cache(maxsize=1)
def _wmem_max() -> int:
    try:
        return int(Path("/proc/sys/net/core/wmem_max").read_text())
    except (OSError, ValueError):
        return 212_992  # Linux's usual default


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
    wake_path = box / outbox.WAKE
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

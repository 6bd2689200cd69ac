"""One subscriber connection of the sidecar, and its states.

A subscriber is in one of four states: `auth` (TCP, before its token), `pending` (waiting a
moment for a subscribe before defaulting to everything), `catchup` (being fed its snapshot or
replay straight from the history as fast as its socket drains, so a replay longer than its
buffer is fine), `live` (new lines pushed as they arrive; when its socket is full they queue,
and past `client_buffer` queued messages it is evicted), `closing` (evicted: its reason line
is the last thing it reads, however late it reads).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import fcntl
import functools
import hmac
import itertools
import logging
import os
import socket
import struct
import termios
from pathlib import Path

from pipeline.sidecar import protocol as proto
from pipeline.sidecar.hub import Hub

log = logging.getLogger("signalbox.sidecar")

SUBSCRIBE_GRACE_S = 0.2  # a plain client (socat) gets everything after this long
AUTH_TIMEOUT_S = 5.0
WRITE_HIGH = 64 * 1024  # bytes waiting for the socket above which messages are queued, counted
WRITE_LOW = WRITE_HIGH // 4  # ... and below which the queue moves on again
IOV = 64  # buffers per writev
CHUNK = 512  # history lines written per catch-up step
CLOSE_GRACE_S = 10.0  # how long an evicted client's connection is kept for it to read the reason


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

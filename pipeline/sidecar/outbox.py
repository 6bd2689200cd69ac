"""The hand-off from the pipeline to the sidecar: an append-only outbox of signal lines on disk.

`publish` is all the pipeline calls. It assigns sequence numbers and appends under an fcntl
lock, then pokes the sidecar with one non-blocking datagram, so it never waits on the sidecar:
when the sidecar is down the lines simply wait in the outbox until it comes back.

Layout of `settings.outbox_dir`:
- `<first seq>.jsonl` segments: one encoded `signal` message per line, exactly the bytes the
  sidecar forwards. Only the newest segment is appended to; a torn last line (a publisher
  SIGKILLed mid-write) has no newline, so readers never consume it and the next publisher
  truncates it away before appending. Appends are not synced one by one (the sidecar and
  subscribers never wait for the disk); a checkpoint syncs the lines it names before it is
  written, so a power loss can only lose lines after the last checkpoint, which carry no
  dedup key on disk and are published again by the next run from the warehouse.
- `state.json`: a checkpoint (position, last seq, the keys still inside the TTL for
  deduplication, the latest line per key), replaced atomically. It lets a fresh process start
  without re-reading every segment, and keeps the latest signals and the dedup keys alive when
  old segments are compacted away. Segments are rotated every ~history/4 lines and the oldest
  are deleted once the rest still hold `history` signals.
- `lock`: the fcntl lock publishers share. The sidecar only reads, so it never blocks them.
- `wake.sock` (+ `wake.sock.lock`, held by the sidecar): the sidecar's wake-up datagram socket.
  The directory is 0700 and the socket 0600, so only this user can poke it (or squat the name).

Every file here is opened without following symlinks and must be a regular file of this user
(`files.open_private`); the directory must be ours and writable by nobody else. The files and
reading them: pipeline.sidecar.segments.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import json
import logging
import math
import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import jsonfile
from pipeline.candles.timeframes import MINUTE_US, to_us
from pipeline.sidecar.files import check_dir, open_private
from pipeline.sidecar.protocol import SCHEMA, encode, iso, unix_address
from pipeline.sidecar.segments import (
    LOCK,
    STATE,
    WAKE,
    Entry,
    Key,
    latest_from_state,
    market_of,
    parse,
    read_lines,
    read_state,
    segment_name,
    segments,
)

if TYPE_CHECKING:
    from pipeline.candles.timeframes import Timeframe
    from pipeline.config import Settings

log = logging.getLogger("signalbox.sidecar.outbox")

# Lines appended between checkpoints: bounds a cold start's re-read. It grows with the number
# of dedup keys held so that rewriting the checkpoint stays a small cost per line.
CHECKPOINT_EVERY = 256
ACTIONS = ("BUY", "SELL")
ORIGINS = ("fast", "pipeline")  # which lane computed a signal: the wire's `origin`


# -- publishing ---------------------------------------------------------------------------


@dataclass
class _Book:
    """What one process knows about an outbox; re-validated under the lock on every publish."""

    dir: Path
    pid: int
    lock_fd: int
    seg_first: int = 0  # first seq of the newest segment (0: none yet)
    seg_ino: int = 0
    offset: int = 0  # end of the complete lines of the newest segment
    last_seq: int = 0
    keys: dict[str, int] = field(default_factory=dict)  # dedup key -> close_time (us)
    latest: dict[Key, tuple[int, bytes]] = field(default_factory=dict)
    since_checkpoint: int = 0
    fd: int = -1  # open for appending to the newest segment (seg_first), or -1
    fd_first: int = 0

    def marker(self) -> bytes:
        """What this process believes the outbox is; compared with the lock file's hint."""
        return f"{self.seg_first} {self.offset} {self.last_seq} {self.seg_ino}\n".encode()

    def segment_fd(self) -> int:
        if self.fd >= 0 and self.fd_first != self.seg_first:
            os.close(self.fd)
            self.fd = -1
        if self.fd < 0:
            path = self.dir / segment_name(self.seg_first)
            self.fd = open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            self.fd_first = self.seg_first
        return self.fd


_books: dict[Path, _Book] = {}
_thread_lock = threading.Lock()
_pokers: dict[Path, socket.socket] = {}  # per outbox: a datagram socket connected to wake.sock


def _dedup_key(key: Key, close_us: int) -> str:
    return f"{key[0]}|{key[1]}|{key[2]}|{close_us}"


def _apply(book: _Book, e: Entry) -> None:
    book.keys[_dedup_key(e.key, e.close_us)] = e.close_us
    if e.key not in book.latest or book.latest[e.key][0] < e.seq:
        book.latest[e.key] = (e.seq, e.line)
    book.last_seq = max(book.last_seq, e.seq)
    book.since_checkpoint += 1


def _scan(book: _Book, first: int, path: Path, offset: int, newest: bool) -> None:
    fd = open_private(path, os.O_RDWR if newest else os.O_RDONLY)
    try:
        lines, end, size = read_lines(fd, offset)
        for line in lines:
            e = parse(line)
            if e is None:
                log.warning("skipping an unreadable outbox line in %s", path)
            else:
                _apply(book, e)
        if newest:
            if size > end:  # torn tail from a crashed publisher: never consumed, drop it
                log.warning("repairing %s: dropping %d bytes of a torn last line", path, size - end)
                os.ftruncate(fd, end)
            book.seg_first, book.seg_ino, book.offset = first, os.fstat(fd).st_ino, end
    finally:
        os.close(fd)


def _reload(book: _Book, segs: list[tuple[int, Path]]) -> None:
    """Rebuild from the checkpoint plus the segments written after it."""
    if book.fd >= 0:  # the newest segment may be another file now
        os.close(book.fd)
        book.fd = -1
    book.seg_first = book.seg_ino = book.offset = book.last_seq = book.since_checkpoint = 0
    book.keys, book.latest = {}, {}
    state = read_state(book.dir)
    start, offset = 0, 0
    if state is not None:
        book.last_seq = int(state["last_seq"])
        book.keys = {str(k): int(v) for k, v in state["keys"].items()}
        for e in latest_from_state(state):
            book.latest[e.key] = (e.seq, e.line)
        if any(first == int(state["segment"]) for first, _ in segs):
            start, offset = int(state["segment"]), int(state["offset"])
    for i, (first, path) in enumerate(segs):
        if first < start:
            continue
        _scan(book, first, path, offset if first == start else 0, newest=i == len(segs) - 1)


def _sync(book: _Book) -> None:
    """Bring the book up to date with what other processes appended (under the lock)."""
    segs = segments(book.dir)
    if book.seg_first and segs and segs[-1][0] == book.seg_first:
        try:
            st = os.stat(segs[-1][1])
        except FileNotFoundError:
            st = None
        if st is not None and st.st_ino == book.seg_ino and st.st_size >= book.offset:
            if st.st_size > book.offset:
                _scan(book, book.seg_first, segs[-1][1], book.offset, newest=True)
            return
    _reload(book, segs)


def _checkpoint(book: _Book, cutoff_us: int) -> None:
    """Write state.json. The lines it names are synced to disk first: a checkpoint that
    survived a power loss the lines did not would dedupe them away for good (lines after the
    last checkpoint that are lost are simply published again by the next run)."""
    for _, path in segments(book.dir):  # a handful; those already clean sync in microseconds
        _fsync(path)
    book.keys = {k: v for k, v in book.keys.items() if v >= cutoff_us}
    state = {
        "version": 1,
        "segment": book.seg_first,
        "offset": book.offset,
        "last_seq": book.last_seq,
        "keys": book.keys,
        "latest": [json.loads(line) for _, line in sorted(book.latest.values())],
    }
    tmp = book.dir / f"{STATE}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)  # a leftover of a crashed process (never followed if a link)
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(fd, "wb") as f:
        f.write(json.dumps(state, separators=(",", ":")).encode())
        f.flush()
        os.fsync(f.fileno())  # never a checkpoint on disk whose content is not
    os.replace(tmp, book.dir / STATE)
    _fsync(book.dir, directory=True)  # the rename, and segments created since the last one
    book.since_checkpoint = 0


def _fsync(path: Path, directory: bool = False) -> None:
    """Put a file's data, or a directory's creates and renames, on disk (~0.1 ms here)."""
    if directory:
        jsonfile.fsync_dir(path)
        return
    fd = open_private(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _compact(book: _Book, history: int) -> None:
    """Delete the oldest segments while the others still hold `history` signals."""
    segs = segments(book.dir)
    while len(segs) >= 2 and book.last_seq - segs[1][0] + 1 >= history:
        segs.pop(0)[1].unlink(missing_ok=True)


def _book(outbox_dir: Path) -> _Book:
    book = _books.get(outbox_dir)
    if book is None or book.pid != os.getpid():  # a forked child must not share the lock fd
        outbox_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_dir(outbox_dir, private=True)
        fd = open_private(outbox_dir / LOCK, os.O_RDWR | os.O_CREAT)
        book = _books[outbox_dir] = _Book(outbox_dir, os.getpid(), fd)
    return book


def _utc(v: Any, what: str) -> dt.datetime:
    if isinstance(v, str):
        v = dt.datetime.fromisoformat(v)
    if not isinstance(v, dt.datetime):
        raise ValueError(f"{what} must be a datetime, got {type(v).__name__}")
    return v.replace(tzinfo=dt.UTC) if v.tzinfo is None else v.astimezone(dt.UTC)


@functools.lru_cache(maxsize=256)
def _timeframe(name: str) -> Timeframe:
    from pipeline.candles.timeframes import parse_timeframe

    return parse_timeframe(name)


def _expires(close: dt.datetime, timeframe: str) -> dt.datetime:
    """A signal holds until the next bar of its timeframe closes and replaces it."""
    tf = _timeframe(timeframe)
    if tf.kind == "fixed":
        return close + dt.timedelta(minutes=tf.minutes)
    month = close.month - 1 + tf.months
    return close.replace(year=close.year + month // 12, month=month % 12 + 1)


def _message(s: dict[str, Any], close: dt.datetime, emitted: str) -> dict[str, Any]:
    """The wire `signal` message (without seq) for one signal dict; raises on bad fields."""
    name = (
        f"signal {s.get('exchange')}:{s.get('symbol')}/{s.get('personality')}/{s.get('timeframe')}"
    )
    for k in ("exchange", "symbol", "personality", "timeframe", "quality"):
        if not isinstance(s.get(k), str) or not s[k]:
            raise ValueError(f"{name}: {k} must be a non-empty string, got {s.get(k)!r}")
    if s.get("action") not in ACTIONS:
        raise ValueError(f"{name}: action must be BUY or SELL, got {s.get('action')!r}")
    conf, price = float(s["confidence"]), float(s["price"])
    if not 0.0 <= conf <= 1.0:
        raise ValueError(f"{name}: confidence must be within [0, 1], got {conf}")
    if not math.isfinite(price):
        raise ValueError(f"{name}: price must be finite, got {price}")
    origin = s.get("origin", "pipeline")
    if origin not in ORIGINS:
        raise ValueError(f"{name}: origin must be 'fast' or 'pipeline', got {origin!r}")
    reasons = s.get("reasons") or []
    if isinstance(reasons, str) or not isinstance(reasons, Iterable):
        raise ValueError(f"{name}: reasons must be a list of strings, got {reasons!r}")
    return {
        "type": "signal",
        "schema": SCHEMA,
        "seq": 0,
        "exchange": s["exchange"],
        "symbol": s["symbol"],
        "personality": s["personality"],
        "timeframe": s["timeframe"],
        "action": s["action"],
        "confidence": conf,
        "price": price,
        "open_time": iso(_utc(s["open_time"], f"{name}: open_time")),
        "close_time": iso(close),
        "emitted_at": emitted,
        "expires_at": iso(_expires(close, s["timeframe"])),
        "reasons": [str(r) for r in reasons],
        "quality": s["quality"],
        "origin": origin,
        "replayed": False,  # last: the sidecar splices in `true` when it sends it from history
    }


def poke(outbox_dir: Path) -> bool:
    """Tell a listening sidecar to read the outbox now; never blocks, never raises.

    The wake-up socket is a file in the outbox (0700 directory, 0600 socket): unlike an
    abstract name, no other user can bind it first or send to it. The datagram socket is
    connected once (a send to a path costs a lookup, ~9 us with the sidecar waking), and
    connected anew when the sidecar it reached has gone (ECONNREFUSED)."""
    for _ in range(2):
        sock = _pokers.get(outbox_dir)
        try:
            if sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
                try:
                    with unix_address(outbox_dir / WAKE) as addr:
                        sock.connect(addr)
                except OSError:  # no sidecar: it reads the outbox when it starts
                    sock.close()
                    return False
                _pokers[outbox_dir] = sock
            sock.send(b"!")
            return True
        except BlockingIOError:  # its queue is full: it has pokes to read already
            return False
        except OSError:  # the sidecar we were connected to is gone; perhaps a new one is up
            del _pokers[outbox_dir]
            sock.close()
    return False


def publish(
    settings: Settings, signals: list[dict[str, Any]], *, now: dt.datetime | None = None
) -> list[int]:
    """Append the signals not published before and not older than the TTL; return their seqs.

    Idempotent: (exchange, symbol, personality, timeframe, close_time) goes out at most once,
    whichever lane (`origin`: "fast" or "pipeline", the default) publishes it first, so the
    live run may pass all of today's signals every minute. `now` (default: the wall clock) is what
    the TTL is measured against, e.g. the replay exchange's clock. Signals older than the TTL
    cost no I/O at all. Raises ValueError on a malformed signal, before appending anything.
    """
    now = now or dt.datetime.now(dt.UTC)
    cutoff_us = to_us(now) - settings.sidecar.signal_ttl_minutes * MINUTE_US
    fresh: dict[str, tuple[int, dt.datetime, dict[str, Any]]] = {}
    msgs: dict[str, dict[str, Any]] = {}
    emitted = iso(dt.datetime.now(dt.UTC))
    for i, s in enumerate(signals):
        try:
            close = _utc(s["close_time"], "close_time")
            close_us = to_us(close)
            if close_us >= cutoff_us:
                k = _dedup_key((market_of(s), s["personality"], s["timeframe"]), close_us)
                fresh[k] = (close_us, close, s)
                msgs[k] = _message(s, close, emitted)
        except (KeyError, TypeError) as err:
            raise ValueError(f"signal #{i} {s!r:.200}: missing or bad field {err}") from None
    if not fresh:
        return []
    history = settings.sidecar.history
    outbox_dir = settings.outbox_dir
    with _thread_lock:
        book = _book(outbox_dir)
        fcntl.flock(book.lock_fd, fcntl.LOCK_EX)
        try:
            seqs = _append(book, fresh, msgs, history, cutoff_us)
        finally:
            fcntl.flock(book.lock_fd, fcntl.LOCK_UN)
    return seqs


HINT_SIZE = 96


def _append(
    book: _Book,
    fresh: dict[str, tuple[int, dt.datetime, dict[str, Any]]],
    msgs: dict[str, dict[str, Any]],
    history: int,
    cutoff_us: int,
) -> list[int]:
    """Under the lock. The lock file holds a hint, written BEFORE each append: the state the
    outbox is in once that append completes. A book equal to the hint has seen every line,
    so the directory need not be listed; any crash or failure leaves a hint no book matches,
    which forces the full re-read (and torn-line repair)."""
    if (
        not book.seg_first
        or book.fd < 0
        or os.pread(book.lock_fd, HINT_SIZE, 0).rstrip(b"\0 ") != book.marker()
        or os.fstat(book.fd).st_size != book.offset  # belt and braces: bytes we did not write
    ):
        _sync(book)
    new = [k for k in fresh if k not in book.keys]
    if not new:
        return []
    new.sort(key=lambda k: (fresh[k][0], k))  # seq order follows bar close time
    rotate = not book.seg_first or book.last_seq + 1 - book.seg_first >= max(64, history // 4)
    if rotate:
        book.seg_first, book.offset = book.last_seq + 1, 0
    entries = []
    for i, k in enumerate(new, start=book.last_seq + 1):
        msgs[k]["seq"] = i
        line = encode(msgs[k])
        m = msgs[k]
        entries.append(
            Entry(i, (market_of(m), m["personality"], m["timeframe"]), fresh[k][0], line)
        )
    data = b"".join(e.line for e in entries)
    try:
        fd = book.segment_fd()
        if rotate:
            book.seg_ino = os.fstat(fd).st_ino
        end, last = book.offset + len(data), entries[-1].seq
        hint = f"{book.seg_first} {end} {last} {book.seg_ino}\n".encode()
        os.pwrite(book.lock_fd, hint.ljust(HINT_SIZE), 0)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            os.ftruncate(fd, book.offset)  # e.g. disk full: leave no partial batch behind
            raise
    except BaseException:
        book.seg_first = 0  # unknown state: the next publish re-reads the outbox
        raise
    book.offset = end
    for e in entries:
        _apply(book, e)
    poke(book.dir)
    if rotate or book.since_checkpoint >= max(CHECKPOINT_EVERY, len(book.keys) // 2):
        _checkpoint(book, cutoff_us)
    if rotate:
        _compact(book, history)
    return [e.seq for e in entries]

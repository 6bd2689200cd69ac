"""The bots' event loop: each bot's `Runner`; one thread reads every bot's sidecar
subscription, one commits.

Fifty bots as fifty threads cost more than their work: every signal line woke all fifty, and
they queued for the interpreter lock and for fifty fsyncs in turn (bench/bench_bots.py: the
median bot's p99 was 16 ms). Here each bot is still its own subscriber (its own connection,
filter and `since_seq`, as `pipeline.sidecar.client.Client` would send them), but one
selector thread reads them all and records each bot's order as its line is parsed; a second
thread then makes every touched bot's state durable in one pass: one write-ahead log record,
one fsync (fifty bots' journal and state fsyncs on a thread pool took the interpreter lock
from the reader at every return).
"""

from __future__ import annotations

import json
import logging
import random
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.bots.config import BotConfig
from pipeline.bots.state import BotState
from pipeline.bots.store import BotStore, persist_all
from pipeline.bots.trader import Bar, Trader
from pipeline.bots.wal import Entry, Wal
from pipeline.sidecar import protocol as proto
from pipeline.sidecar.client import FATAL_CODES

if TYPE_CHECKING:
    from pipeline.config import Settings

log = logging.getLogger("signalbox.bots")
BACKOFF_S = (0.05, 5.0)  # reconnect backoff, as the sidecar client's
CHECKPOINT_S = 10.0  # the bots' files fsynced and the write-ahead log emptied this often
WAL_MAX = 64 << 20  # or when the log grows past this
STATE_S = 1.0  # the state files (what readers see) trail the log by at most this


@dataclass
class Runner:
    """One bot: its rules, files and state, one lock for its two event sources."""

    cfg: BotConfig
    trader: Trader
    store: BotStore
    state: BotState
    lock: threading.Lock = field(default_factory=threading.Lock)
    alive: bool = True
    committer: Committer | None = None  # None: each event is durable before its call returns
    # line received -> order line written (recorded), and -> state committed (durable)
    reaction_s: list[float] = field(default_factory=list)
    durable_s: list[float] = field(default_factory=list)
    awaiting: list[float] = field(default_factory=list)  # recorded orders' receipt, not durable

    def on_signal(self, msg: dict[str, Any], received: float) -> None:
        with self.lock:
            if self.state.last_seq is not None and int(msg["seq"]) <= self.state.last_seq:
                return  # handled before a restart: never twice
            entries = self.trader.on_signal(self.state, msg)
            for e in entries:
                e["received_at"] = received
            self.store.record(self.state, entries)
            if entries and entries[0]["kind"] == "order":
                self.reaction_s.append(self.store.written_at - msg["_t"])
                self.awaiting.append(msg["_t"])
            self._commit()

    def on_bar(self, bar: Bar) -> None:
        with self.lock:
            slot = self.state.slots.get(bar.market)
            if slot is None or (slot.last_bar_us is not None and bar.open_us <= slot.last_bar_us):
                return
            halted = self.state.halted
            entries = self.trader.on_bar(self.state, bar)
            self.store.record(self.state, entries)
            self._commit()
        for e in entries:
            if e["kind"] in ("fill", "exit"):
                log.info(
                    "bot %s: %s %s %s %.6g @ %.6g (signal #%s)%s",
                    self.cfg.name,
                    e["kind"],
                    e["market"],
                    e["side"],
                    e["size"],
                    e["price"],
                    e.get("seq"),
                    f" {e['reason']}" if e["kind"] == "exit" else "",
                )
        if self.state.halted and not halted:
            log.error("bot %s HALTED: %s", self.cfg.name, self.state.why)

    def reset_seq(self, seq: int | None = None) -> None:
        """Follow the sidecar's seqs from `seq` (None: the outbox was reset, from its next)."""
        with self.lock:
            self.state.last_seq = seq
            self._commit()

    def _commit(self) -> None:
        """The state as of this event: to the group commit, or durable now (under the lock)."""
        if self.committer is not None:
            self.committer.mark(self)
            return
        persist_all([(self.store, self.store.snapshot(self.state, time.time()))])
        done = time.perf_counter()
        self.durable_s.extend(done - t for t in self.awaiting)
        self.awaiting = []


class Committer:
    """Group commit: the runners touched since the last pass, made durable together by one
    record of the bots' write-ahead log (pipeline/bots/wal.py: one fsync a pass), then their
    state files written without fsync; every CHECKPOINT_S a checkpoint fsyncs those files
    and empties the log."""

    def __init__(self, home: Path) -> None:
        self.dirty: dict[int, Runner] = {}
        self.mu = threading.Lock()
        self.wake = threading.Event()
        # cleared while the reader handles a round of lines; the other threads (this one,
        # the heartbeats, the bars) wait for it before each unit of their work, so they do
        # not take the interpreter lock from the reader at each of its syscalls (every recv
        # and journal write lets another thread run). A gate, not a lock: the reader never
        # waits for them
        self.idle = threading.Event()
        self.idle.set()
        self.wal = Wal(home)
        self.unwritten: dict[int, tuple[Runner, bytes]] = {}  # logged, state file not written
        self.unsynced: dict[int, Runner] = {}  # state files written since the last checkpoint
        self.write_at = 0.0
        self.checkpoint_at = time.monotonic() + CHECKPOINT_S
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.passes = self.logged = self.checkpoints = self.synced = 0  # for the summary

    def summary(self) -> str:
        each = self.logged / self.passes if self.passes else 0.0
        return (
            f"{self.passes} commit passes of {each:.1f} bots each, one fsync each; "
            f"{self.checkpoints} checkpoints of {self.synced} fsyncs in all"
        )

    def mark(self, r: Runner) -> None:
        with self.mu:
            self.dirty[id(r)] = r

    def kick(self) -> None:
        """A batch of events is handled: commit what it touched."""
        self.wake.set()

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="commit", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """The last pass and a checkpoint, then stop."""
        self.stopping = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join(30)
        else:
            self.flush()
        self.wal.close()

    def _run(self) -> None:
        while True:
            due = self.write_at if self.unwritten else self.checkpoint_at if self.wal.size else None
            self.wake.wait(None if due is None else max(due - time.monotonic(), 0.0))
            self.wake.clear()
            try:
                self.flush()
            except Exception:
                log.exception("bots: a commit pass failed; the next event retries it")
            if self.stopping:
                self.flush()
                return

    def flush(self) -> None:
        """A pass over the dirty runners, then the checkpoint if it is due (only after a pass
        that fully succeeded: the log is emptied only when every state it held is written)."""
        with self.mu:
            dirty, self.dirty = list(self.dirty.values()), {}
        if dirty:
            self._pass(dirty)
        now = time.monotonic()
        if self.wal.size and (
            self.stopping or now >= self.checkpoint_at or self.wal.size > WAL_MAX
        ):
            self.checkpoint()
        elif self.unwritten and now >= self.write_at:
            self.write_states()

    def _pass(self, dirty: list[Runner]) -> None:
        entries, waiting = [], []
        for r in dirty:
            self.idle.wait()
            with r.lock:
                offset, lines, state = r.store.take(r.state, time.time())
                waiting.append(r.awaiting)
                r.awaiting = []
            entries.append(Entry(r.cfg.name, offset, lines, state))
        try:
            self.wal.append(entries)
        except BaseException:
            for r, e, ts in zip(dirty, entries, waiting, strict=True):
                with r.lock:  # not logged: the next pass logs these lines again
                    r.store.untake(e.offset, e.lines)
                    r.awaiting[:0] = ts
                self.mark(r)
            raise
        done = time.perf_counter()
        self.passes, self.logged = self.passes + 1, self.logged + len(dirty)
        for r, ts, e in zip(dirty, waiting, entries, strict=True):
            r.durable_s.extend(done - t for t in ts)
            self.unwritten[id(r)] = (r, e.state)

    def write_states(self) -> None:
        """The newest logged state of each runner to its `state.json` (no fsync: the log
        holds it), what `committed_entries` and `signalbox status` read."""
        while self.unwritten:
            key, (r, state) = next(iter(self.unwritten.items()))
            self.idle.wait()
            r.store.write_state(state, durable=False)  # failed: stays, the next call retries
            del self.unwritten[key]
            self.unsynced[key] = r
        self.write_at = time.monotonic() + STATE_S

    def checkpoint(self) -> None:
        """Every state written, the bots' files fsynced, then the log emptied."""
        self.write_states()
        for r in self.unsynced.values():
            self.idle.wait()
            r.store.sync()
        self.wal.reset()
        self.checkpoints += 1
        self.synced += 3 * len(self.unsynced) + 1  # journal, state file, folder; the log
        self.unsynced = {}
        self.checkpoint_at = time.monotonic() + CHECKPOINT_S


class Feed:
    """One bot's subscription: its socket, read buffer and reconnect schedule."""

    def __init__(self, settings: Settings, r: Runner, since: int | None) -> None:
        self.r = r
        self.since = since  # resumed from when the state's last_seq is None (since_ahead)
        symbols = sorted({m.partition(":")[2] for m in r.trader.markets})
        self.filters: dict[str, Any] = {
            "symbols": symbols,
            "personalities": [r.cfg.personality],
            "timeframes": r.cfg.timeframes,
            "token": settings.sidecar.token,
        }
        self.path = settings.socket_path
        self.sock: socket.socket | None = None
        self.buf = b""
        self.attempt = 0
        self.retry_at = 0.0
        self.deadline = 0.0  # no byte by then: the connection is dead (3 missed heartbeats)
        self.timeout_s = 10.0

    def connect(self, sel: selectors.BaseSelector, now: float) -> None:
        try:
            sock = proto.connect_unix(self.path, 10)
            since = self.r.state.last_seq if self.r.state.last_seq is not None else self.since
            sock.sendall(proto.subscribe_line(**self.filters, since_seq=since))
        except OSError as err:
            self.retry(now, f"sidecar unavailable ({err.strerror or err})")
            return
        sock.setblocking(False)
        self.sock, self.buf, self.deadline = sock, b"", now + self.timeout_s
        sel.register(sock, selectors.EVENT_READ, self)

    def drop(self, sel: selectors.BaseSelector, now: float, reason: str | None) -> None:
        if self.sock is not None:
            sel.unregister(self.sock)
            self.sock.close()
            self.sock = None
        if reason is not None:
            self.retry(now, reason)

    def retry(self, now: float, reason: str) -> None:
        lo, hi = BACKOFF_S
        cap = min(hi, lo * 2**self.attempt)
        delay = random.uniform(cap / 2, cap)  # jitter: the bots do not reconnect in step
        log.warning("bot %s: %s; reconnecting in %.2f s", self.r.cfg.name, reason, delay)
        self.retry_at, self.attempt = now + delay, self.attempt + 1

    def read(
        self,
        sel: selectors.BaseSelector,
        now: float,
        t: float,
        wall: float,
        parsed: dict[bytes, dict[str, Any]],
    ) -> None:
        """What arrived, each whole line handled; `t`: when the loop saw it (perf_counter).
        `parsed`: the lines of this round already parsed for another bot (each bot gets the
        same line; parsing it once saves 49 of 50 parses, and every bot reads the one dict:
        nothing below writes to it but `_t`, the same for every bot of the round)."""
        assert self.sock is not None
        try:
            chunk = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as err:
            self.drop(sel, now, f"connection lost ({err})")
            return
        if not chunk:
            self.drop(sel, now, "sidecar closed the connection")
            return
        self.deadline = now + self.timeout_s
        *lines, self.buf = (self.buf + chunk).split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            msg = parsed.get(line)
            if msg is None:
                try:
                    msg = parsed[line] = json.loads(line)
                except ValueError as err:
                    self.drop(sel, now, f"connection lost ({err})")
                    return
            if not self.handle(sel, now, msg, t, wall):  # shared: read-only below
                return

    def handle(
        self, sel: selectors.BaseSelector, now: float, msg: dict[str, Any], t: float, wall: float
    ) -> bool:
        """One message; False when the connection is closed for good."""
        r, kind = self.r, msg.get("type")
        if kind == "signal" and isinstance(msg.get("seq"), int):
            msg["_t"] = t
            r.on_signal(msg, wall)
        elif kind == "hello":
            self.attempt = 0
            self.timeout_s = 3 * float(msg.get("heartbeat_s", 5)) + 1
        elif kind == "gap":  # gone from the sidecar's history while the bot was away
            log.warning("bot %s: %s; those signals get no order", r.cfg.name, msg.get("message"))
        elif kind == "error" and msg.get("code") in FATAL_CODES:
            log.error("bot %s stopped: %s: %s", r.cfg.name, msg.get("code"), msg.get("message"))
            r.alive = False  # no heartbeat any more: `signalbox status` shows it stale
            self.drop(sel, now, None)
            return False
        elif kind == "error" and msg.get("code") == "since_ahead":
            log.warning(
                "bot %s: the sidecar's outbox was reset; following its seqs anew", r.cfg.name
            )
            r.reset_seq()
        return True


def serve(settings: Settings, feeds: list[Feed], committer: Committer, stop: threading.Event):
    """Every bot's subscription on one thread, until `stop`."""
    sel = selectors.DefaultSelector()
    try:
        while not stop.is_set():
            now = time.monotonic()
            wait = 0.2
            for f in feeds:
                if f.sock is None and f.r.alive:
                    if now >= f.retry_at:
                        f.connect(sel, now)
                    else:
                        wait = min(wait, f.retry_at - now)
                elif f.sock is not None and now > f.deadline:
                    f.drop(sel, now, "no heartbeat from the sidecar")
            events = sel.select(max(wait, 0.0))
            if not events:
                continue
            t, wall, now = time.perf_counter(), time.time(), time.monotonic()
            parsed: dict[bytes, dict[str, Any]] = {}
            committer.idle.clear()
            try:
                for key, _ in events:
                    f = key.data
                    if f.sock is not None:
                        try:
                            f.read(sel, now, t, wall, parsed)
                        except Exception:
                            f.r.alive = False
                            f.drop(sel, now, None)
                            log.exception("bot %s stopped following the sidecar", f.r.cfg.name)
            finally:
                committer.idle.set()
            committer.kick()
    finally:
        for f in feeds:
            f.drop(sel, time.monotonic(), None)
        sel.close()

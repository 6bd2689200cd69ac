"""The sidecar's memory: the history of signal lines read from the outbox, the latest line
per key, and who is subscribed; new lines are fanned out to the live subscribers as the very
bytes the publisher wrote, joined once per distinct filter.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Protocol

from pipeline.candles.timeframes import MINUTE_US, to_us
from pipeline.config import Settings
from pipeline.sidecar import protocol as proto
from pipeline.sidecar.segments import Entry, Key, Tail, latest_from_state, read_state


class Subscriber(Protocol):
    """What the hub needs of a connection (pipeline/sidecar/subscriber.py's `Conn`)."""

    filter: proto.Filter

    def send(self, data: bytes, n: int = 1) -> None: ...


log = logging.getLogger("signalbox.sidecar")


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
        self.tail = Tail(settings.outbox_dir)
        self.seqs: list[int] = []
        self.lines: list[bytes] = []
        self.keys: list[Key] = []
        self.latest: dict[Key, Entry] = {}
        self.last_seq = 0
        self.trimmed_upto = 0  # every seq <= this has left the in-memory history
        self.read_error = ""  # the last outbox read error logged
        # dicts as ordered sets: fan-out goes in subscription order (fair, and consecutive
        # sends to one subscriber process find it awake instead of waking it each time)
        self.live: dict[Subscriber, None] = {}
        self.conns: set[Subscriber] = set()

    # -- outbox ---------------------------------------------------------------------------
    def restore(self) -> None:
        """History and latest signals from the outbox, as they were before a restart."""
        state = read_state(self.settings.outbox_dir)
        for e in latest_from_state(state):
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

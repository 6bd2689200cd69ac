"""The outbox on disk, and reading it: segment files of signal lines, the checkpoint, and
`Tail`, which follows them for the sidecar. Publishing (pipeline.sidecar.outbox) writes them.

Layout of `settings.outbox_dir`:
- `<first seq>.jsonl` segments: one encoded `signal` message per line, exactly the bytes the
  sidecar forwards. Only the newest segment is appended to; a torn last line (a publisher
  SIGKILLed mid-write) has no newline, so readers never consume it.
- `state.json`: a checkpoint (position, last seq, the keys still inside the TTL for
  deduplication, the latest line per key), replaced atomically.
- `lock`: the fcntl lock publishers share. The sidecar only reads, so it never blocks them.
- `wake.sock` (+ `wake.sock.lock`, held by the sidecar): the sidecar's wake-up datagram socket.

Every file here is opened without following symlinks and must be a regular file of this user
(`files.open_private`); the directory must be ours and writable by nobody else.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.candles.timeframes import to_us
from pipeline.sidecar.files import open_private
from pipeline.sidecar.protocol import encode

log = logging.getLogger("signalbox.sidecar.outbox")

SUFFIX = ".jsonl"
STATE = "state.json"
LOCK = "lock"
WAKE = "wake.sock"

Key = tuple[str, str, str]  # market (exchange:symbol), personality, timeframe


def market_of(m: dict[str, Any]) -> str:
    """`exchange:symbol` of a signal or message (lines written before venues were Bybit's)."""
    return f"{m.get('exchange') or 'bybit'}:{m['symbol']}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One outbox line, parsed just enough to route it."""

    seq: int
    key: Key
    close_us: int
    line: bytes


def parse(line: bytes) -> Entry | None:
    """An outbox line as an Entry, or None when it is not a readable signal line."""
    try:
        m = json.loads(line)
        close = to_us(dt.datetime.fromisoformat(m["close_time"]))
        return Entry(int(m["seq"]), (market_of(m), m["personality"], m["timeframe"]), close, line)
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


def segment_name(first_seq: int) -> str:
    return f"{first_seq:016d}{SUFFIX}"


def segments(outbox_dir: Path) -> list[tuple[int, Path]]:
    """(first seq, path) of every segment, oldest first."""
    try:
        names = os.listdir(outbox_dir)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        stem = name[: -len(SUFFIX)]
        if name.endswith(SUFFIX) and stem.isdigit():
            out.append((int(stem), outbox_dir / name))
    return sorted(out)


def read_lines(fd: int, offset: int) -> tuple[list[bytes], int, int]:
    """Complete lines after `offset`: (lines with their newline, end of the last one, size)."""
    size = os.fstat(fd).st_size
    if size <= offset:
        return [], offset, size
    data = os.pread(fd, size - offset, offset)
    end = data.rfind(b"\n") + 1
    if not end:
        return [], offset, offset + len(data)
    return [ln + b"\n" for ln in data[: end - 1].split(b"\n")], offset + end, offset + len(data)


def read_state(outbox_dir: Path) -> dict[str, Any] | None:
    """The checkpoint, or None when missing or unreadable (then segments are re-read)."""
    try:
        fd = open_private(outbox_dir / STATE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            state = json.loads(f.read())
        int(state["segment"]), int(state["offset"]), int(state["last_seq"])
        if not isinstance(state["keys"], dict) or not isinstance(state["latest"], list):
            raise TypeError
        return state
    except (ValueError, KeyError, TypeError, RecursionError):
        log.warning("outbox checkpoint %s is unreadable; re-reading segments", outbox_dir / STATE)
        return None


def latest_from_state(state: dict[str, Any] | None) -> list[Entry]:
    """The latest line per key kept in the checkpoint (survives compaction of its segment)."""
    out = []
    for msg in (state or {}).get("latest", []):
        e = parse(encode(msg)) if isinstance(msg, dict) else None
        if e is not None:
            out.append(e)
    return out


class Tail:
    """Follows the outbox from a position, complete lines only, across rotations.

    The segment list is read before the current segment: a newer segment exists only once
    the current one is final, so reading to its end after listing misses nothing.
    """

    def __init__(self, outbox_dir: Path) -> None:
        self.dir = outbox_dir
        self.seg_first = 0
        self.offset = 0
        self.last_seq = 0
        self._fd: int | None = None
        self.skipped = 0  # seqs that never appeared (compacted before they were read)

    def _open(self, first: int) -> int | None:
        self.close()
        try:
            self._fd = open_private(self.dir / segment_name(first), os.O_RDONLY)
        except FileNotFoundError:
            return None
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _read_current(self, out: list[Entry]) -> bool:
        """Append the new complete lines of the current segment to `out`; any read?"""
        fd = self._fd if self._fd is not None else self._open(self.seg_first)
        if fd is None:
            return False
        lines, self.offset, _ = read_lines(fd, self.offset)
        for line in lines:
            e = parse(line)
            if e is None:
                log.warning("skipping an unreadable outbox line in %s", self.seg_first)
            elif e.seq > self.last_seq:
                if self.last_seq and e.seq != self.last_seq + 1:
                    self.skipped += e.seq - self.last_seq - 1
                out.append(e)
                self.last_seq = e.seq
        return bool(lines)

    def read(self) -> list[Entry]:
        """New entries since the last read. The hot path (a poke after an append) costs an
        fstat and a pread: a rotation is spotted by opening the segment that must follow,
        named last seq + 1; listing the directory is the fallback for everything else."""
        out: list[Entry] = []
        if self._fd is not None:
            while True:
                got = self._read_current(out)
                nxt = self.last_seq + 1
                try:
                    fd = open_private(self.dir / segment_name(nxt), os.O_RDONLY)
                except FileNotFoundError:
                    if got:
                        return out
                    break
                self.close()
                self._fd, self.seg_first, self.offset = fd, nxt, 0
        segs = [first for first, _ in segments(self.dir)]
        if not segs:
            return out
        if self.seg_first not in segs:  # first read, or our segment was compacted away
            later = [f for f in segs if f > self.seg_first]
            if not later:
                return out
            self.seg_first, self.offset = later[0], 0
            self.close()
        i = segs.index(self.seg_first)
        while True:  # listed first: a segment followed by another one is final
            self._read_current(out)
            if i + 1 >= len(segs):
                return out
            i += 1
            self.seg_first, self.offset = segs[i], 0
            self.close()

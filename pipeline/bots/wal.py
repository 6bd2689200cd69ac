"""The bots process's write-ahead log, `<home>/bots/.wal`: one fsync per group commit instead
of two per bot.

A pass appends one record holding, for every bot it touched, the journal lines recorded since
the bot's previous pass (and the byte offset they start at) and the bot's new state; then
fsyncs the log once. Only after that are the bots' `state.json` files written (temp file and
rename, no fsync): a SIGKILL keeps them (the page cache survives the process), and after a
machine crash the log holds what they lost. A checkpoint fsyncs the bots' journals and state
files and empties the log; on start, `recover` replays the log into the bots' files before
any bot loads its state, so a bot's committed state is always one whose journal lines are
on disk, and readers of `state.json` (`committed_entries`, the `paper_trades` ingest) never
see an entry a crash could undo.

A record is `<payload length, crc32>` then the payload; a torn or corrupt last record (a crash
mid-append) fails its length or checksum and is dropped with the pass it held, which had not
returned: none of its states were written.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from pipeline.bots.store import BotStore

log = logging.getLogger("signalbox.bots")
_HEAD = struct.Struct("<II")  # payload length, crc32 of the payload
_ENTRY = struct.Struct("<HQII")  # bot name length, journal offset, lines length, state length


@dataclass(frozen=True)
class Entry:
    """One bot in one pass: its journal lines from byte `offset` on, and its state file."""

    bot: str
    offset: int
    lines: bytes
    state: bytes


def wal_path(home: Path) -> Path:
    return home / "bots" / ".wal"  # a dot: never a bot's folder name (config: [a-z0-9_-])


def encode(entries: list[Entry]) -> bytes:
    parts = []
    for e in entries:
        name = e.bot.encode()
        parts += [_ENTRY.pack(len(name), e.offset, len(e.lines), len(e.state)), name]
        parts += [e.lines, e.state]
    payload = b"".join(parts)
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def decode(data: bytes) -> tuple[list[list[Entry]], int]:
    """The whole records in `data` (a log's content) and the length they span; what follows
    (a torn or corrupt record) is not a pass that returned."""
    records, pos = [], 0
    while pos + _HEAD.size <= len(data):
        size, crc = _HEAD.unpack_from(data, pos)
        payload = data[pos + _HEAD.size : pos + _HEAD.size + size]
        if len(payload) < size or zlib.crc32(payload) != crc:
            break
        entries, at = [], 0
        while at < size:
            n, offset, nl, ns = _ENTRY.unpack_from(payload, at)
            at += _ENTRY.size
            bot = payload[at : at + n].decode()
            lines = payload[at + n : at + n + nl]
            state = payload[at + n + nl : at + n + nl + ns]
            at += n + nl + ns
            entries.append(Entry(bot, offset, lines, state))
        records.append(entries)
        pos += _HEAD.size + size
    return records, pos


class Wal:
    """The log, open for appending (one writer: the bots process's committer)."""

    def __init__(self, home: Path) -> None:
        self.path = wal_path(home)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self.fd).st_size

    def append(self, entries: list[Entry]) -> None:
        """One pass's record, durable when this returns (one fsync)."""
        data = encode(entries)
        try:
            os.write(self.fd, data)
            os.fsync(self.fd)
        except BaseException:
            os.ftruncate(self.fd, self.size)  # no half record for the next to follow
            raise
        self.size += len(data)

    def reset(self) -> None:
        """Empty the log: everything it held is fsynced in the bots' own files."""
        os.ftruncate(self.fd, 0)
        os.fsync(self.fd)
        self.size = 0

    def close(self) -> None:
        os.close(self.fd)


def recover(home: Path) -> int:
    """Replay the log into the bots' journals and state files, fsync them, empty the log:
    before any bot loads its state. Idempotent (a crash mid-recovery replays it again: the
    same bytes to the same offsets). Returns the number of passes replayed."""
    path = wal_path(home)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    records, end = decode(data)
    if end < len(data):
        log.warning(
            "bots: %s ends in %d bytes of an unfinished commit pass (a crash mid-write); "
            "dropped, its bots redo those events",
            path,
            len(data) - end,
        )
    states: dict[str, bytes] = {}
    journals: dict[str, int] = {}
    try:
        for entries in records:
            for e in entries:
                d = home / "bots" / e.bot
                if e.bot not in journals:
                    if not d.is_dir():  # deleted while the process was down: started afresh
                        log.warning("bots: %s is gone; its logged passes are dropped", d)
                        journals[e.bot] = -1
                        continue
                    # pwrite: no O_APPEND, the offsets are the record's
                    journals[e.bot] = os.open(d / "journal.jsonl", os.O_WRONLY | os.O_CREAT, 0o644)
                fd = journals[e.bot]
                if fd < 0:
                    continue
                if e.offset > os.fstat(fd).st_size:
                    raise RuntimeError(
                        f"{path} continues bot {e.bot}'s journal at byte {e.offset}, but "
                        f"{d / 'journal.jsonl'} is shorter: its files were changed while the "
                        f"bots were down. Delete {d} to start the bot afresh, or {path} to "
                        "drop the logged passes"
                    )
                os.pwrite(fd, e.lines, e.offset)
                states[e.bot] = e.state
        for bot, fd in journals.items():
            if fd >= 0:
                os.fsync(fd)
                BotStore(home, bot).write_state(states[bot], durable=True)
    finally:
        for fd in journals.values():
            if fd >= 0:
                os.close(fd)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    if records:
        log.info(
            "bots: replayed %d commit passes from %s into %d bots", len(records), path, len(states)
        )
    return len(records)

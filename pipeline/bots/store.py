"""A bot's files in the home, `<home>/bots/<name>/`: `state.json`, `journal.jsonl`, `heartbeat`.

Exactly once across crashes: every event's journal lines are appended (and fsynced) first,
then the state that names the journal's new length and the event's seq is written atomically
(temp file, fsync, rename). A bot killed between the two finds the journal longer than its
state says, cuts the uncommitted tail off, and handles the event again from the state it had
before it: so each signal's order is journaled once, never twice, never lost. Readers (the
`paper_trades` asset) read only the committed part: up to `journal_bytes` of the state.

`commit` does both steps for one event, fsyncing each (a bot on its own, the tests). `signalbox
bots` splits them: `record` appends an event's lines the moment it is handled; its group
commit (pipeline/runtime/botloop.py) then `take`s many bots' new lines and states into one
record of the process's write-ahead log (pipeline/bots/wal.py), one fsync for them all, and
only after it writes their state files without fsync (`write_state`); a checkpoint `sync`s
them. Either way a state file names only journal bytes that a crash cannot take back.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from pipeline import jsonfile
from pipeline.bots.state import BotState

STATE_KEYS = {"name", "cash", "slots", "journal_bytes", "n"}


def bots_dir(home: Path) -> Path:
    return home / "bots"


class BotStore:
    """One bot's state and journal files."""

    def __init__(self, home: Path, name: str) -> None:
        self.dir = bots_dir(home) / name
        self.name = name
        self.state_path = self.dir / "state.json"
        self.journal_path = self.dir / "journal.jsonl"
        self.heartbeat_path = self.dir / "heartbeat"
        self._tmp = self.dir / f".state.json.{os.getpid()}.tmp"
        self._quoted = json.dumps(name)
        self._fd: int | None = None
        self._unlogged: list[bytes] = []  # recorded, not yet in the write-ahead log
        self._logged = 0  # the journal's length up to which the log (or an fsync) holds it
        self.written_at = 0.0  # perf_counter when the last entries were written (recorded)

    def load(self) -> BotState | None:
        """The committed state (None for a new bot), the journal cut back to it."""
        rec = jsonfile.read(self.state_path, STATE_KEYS)
        self.dir.mkdir(parents=True, exist_ok=True)
        committed = 0 if rec is None else int(rec["journal_bytes"])
        self._fd = os.open(self.journal_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        if os.fstat(self._fd).st_size > committed:
            os.ftruncate(self._fd, committed)  # an event that never committed: redone
            os.fsync(self._fd)
        self._logged, self._unlogged = committed, []
        return None if rec is None else BotState.from_json(rec)

    def commit(self, state: BotState, entries: list[dict[str, Any]], at: float) -> None:
        """Append `entries` (numbered from state.n) and write the state that covers them."""
        self.record(state, entries)
        persist_all([(self, self.snapshot(state, at))])

    def record(self, state: BotState, entries: list[dict[str, Any]]) -> None:
        """Append `entries` (numbered from state.n) to the journal, not yet fsynced: a killed
        process can no longer lose them; the state that commits them comes after."""
        assert self._fd is not None, "load() first"
        if not entries:
            return
        lines = []
        for e in entries:
            lines.append(f'{{"bot": {self._quoted}, "n": {state.n}, {_body(e)}')
            state.n += 1
        data = ("\n".join(lines) + "\n").encode()
        os.write(self._fd, data)  # recorded: a process kill no longer loses it
        self._unlogged.append(data)
        self.written_at = time.perf_counter()
        state.journal_bytes += len(data)

    def snapshot(self, state: BotState, at: float) -> bytes:
        """The state file's content as of now (what `persist_all` writes)."""
        state.updated_at = at
        return json.dumps(state.to_json()).encode()

    def _stage(self, data: bytes) -> int:
        """The state's temp file written, still open for its fsync."""
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        return fd

    def write_state(self, data: bytes, durable: bool) -> None:
        """`state.json` replaced by `data`: temp file, rename; `durable`: the temp file
        fsynced before the rename and the folder after it."""
        fd = self._stage(data)
        try:
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp, self.state_path)
        if durable:
            jsonfile.fsync_dir(self.dir)

    def _persist(self, data: bytes) -> None:
        """The journal fsynced, then the state (`data`): temp file, fsync, rename."""
        if self._fd is not None:
            os.fsync(self._fd)
        self.write_state(data, durable=True)
        self._unlogged, self._logged = [], os.lseek(self._fd, 0, os.SEEK_END) if self._fd else 0

    def take(self, state: BotState, at: float) -> tuple[int, bytes, bytes]:
        """For the write-ahead log: the journal lines recorded since the last `take` (and the
        offset they start at), and the state file's content as of now."""
        lines, self._unlogged = b"".join(self._unlogged), []
        offset, self._logged = self._logged, state.journal_bytes
        return offset, lines, self.snapshot(state, at)

    def untake(self, offset: int, lines: bytes) -> None:
        """A `take` whose log record failed: its lines go into the next one."""
        self._unlogged.insert(0, lines)
        self._logged = offset

    def sync(self) -> None:
        """The checkpoint: the journal, the state file and its rename on disk (fsynced)."""
        if self._fd is not None:
            os.fsync(self._fd)
        fd = os.open(self.state_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        jsonfile.fsync_dir(self.dir)

    def beat(self, at: float | None = None) -> None:
        """The heartbeat: the file's content is the wall time of the bot's last sign of life."""
        tmp = self.heartbeat_path.with_name(".heartbeat.tmp")
        tmp.write_text(f"{time.time() if at is None else at:.3f}\n")
        os.replace(tmp, self.heartbeat_path)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_BODIES: dict[tuple[tuple[str, Any], ...], str] = {}


def _body(e: dict[str, Any]) -> str:
    """`json.dumps(e)` without its opening brace, memoised: fifty bots journal the same order
    for one line (only "bot" and "n" differ), and encoding it is most of recording it."""
    key = tuple(e.items())
    body = _BODIES.get(key)
    if body is None:
        if len(_BODIES) > 1024:
            _BODIES.clear()
        body = _BODIES[key] = json.dumps(e)[1:]
    return body


def persist_all(items: list[tuple[BotStore, bytes]], pool: Executor | None = None) -> None:
    """Make each store's journal and state (`snapshot` bytes) durable, the stores side by
    side on `pool`: their fsyncs and renames wait on the disk together, not one by one."""
    if pool is None or len(items) < 2:
        for s, data in items:
            s._persist(data)
        return
    for f in [pool.submit(s._persist, data) for s, data in items]:
        f.result()  # every store's outcome: the first failure raised after all finished


def committed_entries(home: Path, name: str, offset: int = 0) -> Iterator[tuple[int, dict]]:
    """(byte offset after the line, entry) of each committed journal line from `offset` on."""
    store = BotStore(home, name)
    rec = jsonfile.read(store.state_path, STATE_KEYS)
    if rec is None:
        return
    end = int(rec["journal_bytes"])
    with store.journal_path.open("rb") as f:
        f.seek(offset)
        pos = offset
        for line in f:
            if pos + len(line) > end or not line.endswith(b"\n"):
                return  # uncommitted; or cut by a machine crash, until the log restores it
            pos += len(line)
            yield pos, json.loads(line)


def heartbeat_age(home: Path, name: str, now: float | None = None) -> float | None:
    """Seconds since the bot's last heartbeat, None if it never beat."""
    try:
        at = float(BotStore(home, name).heartbeat_path.read_text())
    except (OSError, ValueError):
        return None
    return (time.time() if now is None else now) - at


def summary(home: Path, name: str, now: float | None = None) -> dict[str, Any]:
    """What `signalbox status` shows of a bot: equity, open positions, halted, heartbeat age."""
    rec = None
    try:
        rec = jsonfile.read(BotStore(home, name).state_path, STATE_KEYS)
    except jsonfile.Unreadable as err:
        return {"name": name, "error": str(err)}
    age = heartbeat_age(home, name, now)
    out: dict[str, Any] = {"name": name, "heartbeat_age_s": None if age is None else round(age, 1)}
    if rec is None:
        return {**out, "started": False}
    st = BotState.from_json(rec)
    return {
        **out,
        "started": True,
        "equity": round(st.equity, 2),
        "positions": st.positions(),
        "last_seq": st.last_seq,
        "halted": st.halted,
        "why": st.why,
    }

"""The bots' write-ahead log (pipeline/bots/wal.py) with real files: a group-commit pass is one
log record fsynced; the bots' state files come after it without fsync. Crashes at each point
(after the log's fsync before the state files, mid-append, mid-recovery, and a machine crash
that loses every unsynced write) leave every bot at its last logged pass, each signal journaled
once, and what readers saw before the crash still there after it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from pipeline.bots.config import BotConfig
from pipeline.bots.store import BotStore, committed_entries, summary
from pipeline.bots.trader import Trader
from pipeline.bots.wal import encode, recover, wal_path
from pipeline.runtime.botloop import Committer, Runner

NAMES = ("a", "b", "c")


def runners(home: Path, committer: Committer) -> list[Runner]:
    out = []
    for name in NAMES:
        cfg = BotConfig(name=name, personality="swing")
        trader = Trader(cfg, cfg.backtest_params(), ["bybit:BTCUSDT"])
        store = BotStore(home, name)
        state = store.load() or trader.new_state()
        out.append(Runner(cfg, trader, store, state, committer=committer))
    return out


def signal(seq: int) -> dict:
    return {"seq": seq, "exchange": "bybit", "symbol": "BTCUSDT", "personality": "swing",
            "timeframe": "1m", "action": "BUY" if seq % 2 else "SELL", "confidence": 0.8,
            "quality": "ok", "close_time": f"2024-01-01T00:{seq:02d}:00Z",
            "_t": time.perf_counter()}  # fmt: skip


def handle(rs: list[Runner], seq: int) -> None:
    for r in rs:
        r.on_signal(signal(seq), 1000.0 + seq)


def logged_pass(c: Committer) -> None:
    """A pass up to the log's fsync: the process dies before it writes any state file."""
    with c.mu:
        dirty, c.dirty = list(c.dirty.values()), {}
    c._pass(dirty)


def seqs(home: Path, name: str) -> list[int]:
    return [e["seq"] for _, e in committed_entries(home, name)]


def close(rs: list[Runner]) -> None:
    for r in rs:
        r.store.close()


def reload(home: Path) -> list[Runner]:
    """A restart: recovery, then every bot loads its state (what `signalbox bots` does)."""
    recover(home)
    c = Committer(home)
    rs = runners(home, c)
    c.wal.close()
    close(rs)
    return rs


def test_killed_after_the_log_fsync_before_the_state_files_the_log_restores_them(tmp_path):
    c = Committer(tmp_path)
    rs = runners(tmp_path, c)
    handle(rs, 1)
    c.flush()  # logged, and the state files written
    handle(rs, 2)
    logged_pass(c)  # logged; killed before the state files
    handle(rs, 3)  # recorded in the journals, never logged
    for name in NAMES:  # readers see what the state files name: not yet seq 2
        assert seqs(tmp_path, name) == [1]
    c.wal.close()
    close(rs)
    again = reload(tmp_path)
    for r in again:
        assert r.state.last_seq == 2 and r.state.n == 2
        assert seqs(tmp_path, r.cfg.name) == [1, 2]  # seq 3 cut off: redone, once
        assert r.store.journal_path.read_bytes().count(b"\n") == 2
    assert wal_path(tmp_path).stat().st_size == 0


def test_a_machine_crash_loses_no_entry_a_reader_saw(tmp_path):
    """Only the log and what the last checkpoint fsynced survive a machine crash: the bots'
    folders are put back as the checkpoint left them, the log kept as it was."""
    c = Committer(tmp_path)
    rs = runners(tmp_path, c)
    handle(rs, 1)
    c.flush()
    c.checkpoint()
    fsynced = tmp_path / "fsynced"
    for name in NAMES:
        shutil.copytree(tmp_path / "bots" / name, fsynced / name)
    for seq in (2, 3):
        handle(rs, seq)
        c.flush()
        c.write_states()
    seen = {name: seqs(tmp_path, name) for name in NAMES}
    assert all(s == [1, 2, 3] for s in seen.values())
    c.wal.close()
    close(rs)
    for name in NAMES:  # the crash: every write since the checkpoint lost, but the log's
        shutil.rmtree(tmp_path / "bots" / name)
        shutil.copytree(fsynced / name, tmp_path / "bots" / name)
        assert seqs(tmp_path, name) == [1]
    again = reload(tmp_path)
    for r in again:
        assert seqs(tmp_path, r.cfg.name) == seen[r.cfg.name]
        assert r.state.last_seq == 3 and r.state.n == 3


def test_a_torn_last_record_is_dropped_with_its_pass(tmp_path, caplog):
    c = Committer(tmp_path)
    rs = runners(tmp_path, c)
    for seq in (1, 2):
        handle(rs, seq)
        logged_pass(c)
    handle(rs, 3)  # its pass dies mid-append: part of its record on disk
    entries = [r.store.take(r.state, 3.0) for r in rs]
    from pipeline.bots.wal import Entry

    record = encode([Entry(r.cfg.name, *e) for r, e in zip(rs, entries, strict=True)])
    with wal_path(tmp_path).open("ab") as f:
        f.write(record[: len(record) // 2])
    c.wal.close()
    close(rs)
    with caplog.at_level("WARNING", logger="signalbox.bots"):
        again = reload(tmp_path)
    assert any("unfinished commit pass" in m for m in caplog.messages)
    for r in again:
        assert r.state.last_seq == 2 and seqs(tmp_path, r.cfg.name) == [1, 2]


def test_a_corrupt_record_ends_the_log_there(tmp_path):
    c = Committer(tmp_path)
    rs = runners(tmp_path, c)
    for seq in (1, 2):
        handle(rs, seq)
        logged_pass(c)
    c.wal.close()
    close(rs)
    data = bytearray(wal_path(tmp_path).read_bytes())
    data[-1] ^= 0xFF  # the second record's last byte: its checksum no longer matches
    wal_path(tmp_path).write_bytes(bytes(data))
    assert recover(tmp_path) == 1
    for name in NAMES:
        assert summary(tmp_path, name)["last_seq"] == 1


def test_recovery_run_twice_is_recovery_once(tmp_path):
    """Killed mid-recovery, before the log was emptied: the next start replays it again."""
    c = Committer(tmp_path)
    rs = runners(tmp_path, c)
    for seq in (1, 2, 3):
        handle(rs, seq)
        logged_pass(c)
    c.wal.close()
    close(rs)
    log = wal_path(tmp_path).read_bytes()
    assert recover(tmp_path) == 3
    files = {p: p.read_bytes() for p in sorted((tmp_path / "bots").glob("*/*")) if p.is_file()}
    wal_path(tmp_path).write_bytes(log)
    assert recover(tmp_path) == 3
    assert {p: p.read_bytes() for p in files} == files
    assert recover(tmp_path) == 0  # emptied
    for r in reload(tmp_path):
        assert r.state.last_seq == 3 and seqs(tmp_path, r.cfg.name) == [1, 2, 3]


def test_close_checkpoints_and_empties_the_log(tmp_path):
    c = Committer(tmp_path)
    c.start()
    rs = runners(tmp_path, c)
    for seq in (1, 2):
        handle(rs, seq)
        c.kick()
    c.close()
    close(rs)
    assert wal_path(tmp_path).stat().st_size == 0
    for r in rs:
        assert summary(tmp_path, r.cfg.name)["last_seq"] == 2
        assert len(r.durable_s) == 2  # both orders reported durable, once each


def test_a_bot_deleted_while_down_starts_afresh(tmp_path, caplog):
    c = Committer(tmp_path)
    rs = runners(tmp_path, c)
    handle(rs, 1)
    logged_pass(c)
    c.wal.close()
    close(rs)
    shutil.rmtree(tmp_path / "bots" / "a")  # README: delete the bot's folder to start afresh
    with caplog.at_level("WARNING", logger="signalbox.bots"):
        assert recover(tmp_path) == 1
    assert any("bots/a is gone; its logged passes are dropped" in m for m in caplog.messages)
    assert not (tmp_path / "bots" / "a").exists()
    assert seqs(tmp_path, "b") == seqs(tmp_path, "c") == [1]


def test_a_journal_cut_behind_the_logs_back_is_refused_with_what_to_do(tmp_path):
    c = Committer(tmp_path)
    rs = runners(tmp_path, c)
    handle(rs, 1)
    c.flush()
    c.checkpoint()  # seq 1 in the bots' own files, the log empty
    handle(rs, 2)
    logged_pass(c)  # the log continues each journal after seq 1's line
    c.wal.close()
    close(rs)
    (tmp_path / "bots" / "c" / "journal.jsonl").write_bytes(b"")
    with pytest.raises(RuntimeError, match="continues bot c's journal at byte") as err:
        recover(tmp_path)
    assert f"Delete {tmp_path / 'bots' / 'c'} to start the bot afresh" in str(err.value)
    assert wal_path(tmp_path).stat().st_size > 0  # kept for the next start

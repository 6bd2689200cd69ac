"""The pipeline side of the hand-off: `publish` and the on-disk outbox, no server running."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT
from pipeline.sidecar import outbox
from pipeline.sidecar.outbox import publish
from pipeline.sidecar.segments import Tail, latest_from_state, read_state, segments

pytest_plugins = ["tests.fx_sidecar"]


def outbox_lines(settings) -> list[dict]:
    lines = []
    for _, path in segments(settings.outbox_dir):
        data = path.read_bytes()
        lines += [json.loads(x) for x in data[: data.rfind(b"\n") + 1].splitlines()]
    return lines


def forget_process_cache() -> None:
    """Act like a fresh process (a new Dagster run): nothing cached about the outbox."""
    outbox._books.clear()


def test_publish_assigns_increasing_seqs_and_publishes_each_signal_once(signals, sidecar_cfg):
    _, s = sidecar_cfg()
    first = signals(6)
    assert publish(s, first) == [1, 2, 3, 4, 5, 6]
    # the live run passes all of today's signals every minute: only the new ones go out
    assert publish(s, first) == []
    assert publish(s, signals(8)) == [7, 8]
    forget_process_cache()
    assert publish(s, signals(9)) == [9]
    lines = outbox_lines(s)
    assert [m["seq"] for m in lines] == list(range(1, 10))
    keys = [(m["symbol"], m["personality"], m["timeframe"], m["close_time"]) for m in lines]
    assert len(set(keys)) == 9
    # seq order follows bar close time within a batch
    assert [m["close_time"] for m in lines[:6]] == sorted(m["close_time"] for m in lines[:6])


def test_the_same_symbol_on_two_venues_is_two_signals(signals, sidecar_cfg):
    """The dedupe key carries the exchange: BTC on Bybit and on Hyperliquid at the same bar
    both go out, each once, each naming its venue; a filter picks a market or a symbol."""
    from pipeline.sidecar.protocol import Filter

    _, s = sidecar_cfg()
    now = dt.datetime.now(dt.UTC)
    bybit = signals(2, symbol="BTC", now=now)
    hyper = signals(2, symbol="BTC", exchange="hyperliquid", now=now)
    assert publish(s, bybit) == [1, 2]
    assert publish(s, hyper) == [3, 4]
    assert publish(s, bybit + hyper) == []
    lines = outbox_lines(s)
    assert [m["exchange"] for m in lines] == ["bybit", "bybit", "hyperliquid", "hyperliquid"]
    entries = [outbox.parse(json.dumps(m).encode()) for m in lines]
    hl = Filter(symbols=frozenset({"hyperliquid:BTC"}))
    assert [e.seq for e in entries if hl.matches(e.key)] == [3, 4]
    assert all(Filter(symbols=frozenset({"BTC"})).matches(e.key) for e in entries)


def test_signal_message_fields(signals, sidecar_cfg):
    _, s = sidecar_cfg()
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    sig = signals(1, now=now)[0]
    monthly = {
        **sig,
        "timeframe": "1M",
        "close_time": dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        "open_time": dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    }
    publish(s, [sig, monthly], now=dt.datetime(2026, 12, 1, 0, 5, tzinfo=dt.UTC))
    publish(s, [sig])
    by_tf = {m["timeframe"]: m for m in outbox_lines(s)}
    m = by_tf["1m"]
    assert m["type"] == "signal" and m["schema"] == 1 and m["exchange"] == "bybit"
    assert m["close_time"] == now.isoformat().replace("+00:00", "Z")
    assert m["expires_at"] == (now + dt.timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert m["price"] == sig["price"] and m["action"] == sig["action"]
    assert m["reasons"] == sig["reasons"] and m["quality"] == "ok"
    emitted = dt.datetime.fromisoformat(m["emitted_at"])
    assert abs((emitted - dt.datetime.now(dt.UTC)).total_seconds()) < 600
    assert by_tf["1M"]["expires_at"] == "2027-01-01T00:00:00Z"  # calendar month, not 30 days


def test_signals_older_than_the_ttl_are_history_not_news(signals, sidecar_cfg):
    _, s = sidecar_cfg(signal_ttl_minutes=30)
    now = dt.datetime.now(dt.UTC).replace(second=10, microsecond=0)
    sigs = signals(80, personalities=("swing",), now=now)  # one a minute for 80 minutes
    assert len(publish(s, sigs, now=now)) == 30  # closed within the last 30 minutes
    # a backfill of an old day: nothing written, not even a file touched
    old = signals(10, now=dt.datetime(2024, 1, 2, tzinfo=dt.UTC))
    before = {p: p.stat().st_mtime_ns for _, p in segments(s.outbox_dir)}
    assert publish(s, old) == []
    assert {p: p.stat().st_mtime_ns for _, p in segments(s.outbox_dir)} == before
    # the replay exchange's clock can be the reference instead of the wall clock
    assert len(publish(s, old, now=dt.datetime(2024, 1, 2, 0, 5, tzinfo=dt.UTC))) == 10


def test_malformed_signal_raises_before_anything_is_written(signals, sidecar_cfg):
    _, s = sidecar_cfg()
    good = signals(3)
    for bad in (
        {"confidence": 1.5},
        {"action": "HOLD"},
        {"price": float("nan")},
        {"timeframe": "7x"},
        {"quality": None},
    ):
        with pytest.raises(ValueError):
            publish(s, [*good, {**good[0], **bad}])
    missing = {k: v for k, v in good[0].items() if k != "price"}
    with pytest.raises(ValueError, match="price"):
        publish(s, [missing])
    assert outbox_lines(s) == []
    assert publish(s, good) == [1, 2, 3]


def test_origin_names_the_lane_and_replayed_stays_the_last_key(signals, sidecar_cfg):
    _, s = sidecar_cfg()
    fast, piped, default = signals(3)
    assert publish(s, [{**fast, "origin": "fast"}, {**piped, "origin": "pipeline"}, default])
    lines = outbox_lines(s)
    assert [m["origin"] for m in lines] == ["fast", "pipeline", "pipeline"]  # default: pipeline
    # the sidecar splices `"replayed": true` over the line's end: the field must stay last
    assert all(list(m)[-1] == "replayed" for m in lines)
    late = signals(1, offset=-1)[0]
    with pytest.raises(ValueError, match=r"signal bybit:BTCUSDT/\w+/1m: origin .*'slow'"):
        publish(s, [late, {**late, "personality": "vote", "origin": "slow"}])
    assert len(outbox_lines(s)) == 3  # nothing of the bad batch was written


ALL = ("scalping", "swing", "ma_trend", "vote")
# Publishes slots [offset, offset + n) in batches (n < 0: until killed), like a pipeline run,
# on the clock reading the test passes (so that slots mean the same minutes as in the test).
_WORKER = """
import datetime as dt
import sys
from pipeline.config import load_settings
from pipeline.sidecar.outbox import publish
from tests.fx_sidecar import make_signals
s = load_settings(sys.argv[1])
n, offset, batch, size = (int(a) for a in sys.argv[2:6])
now = dt.datetime.fromisoformat(sys.argv[6])
print("start", flush=True)
i = 0
while n < 0 or i < n:
    k = batch if n < 0 else min(batch, n - i)
    sigs = make_signals(k, offset=offset + i, personalities=%r, reasons=["x" * size], now=now)
    publish(s, sigs)
    i += k
print("done", flush=True)
""".replace("%r", repr(ALL))


def _worker(
    cfg: Path, home: Path, n: int, offset: int, batch: int, size: int = 10, *, now: dt.datetime
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SIGNALBOX_HOME": str(home)}
    args = [str(cfg), str(n), str(offset), str(batch), str(size), now.isoformat()]
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE
    )


def test_concurrent_publishers_never_share_or_skip_a_seq(signals, sidecar_cfg, home):
    cfg, s = sidecar_cfg(history=40)  # small history: rotation and compaction happen too
    # three processes, overlapping signal ranges: each signal must still go out exactly once
    now = dt.datetime.now(dt.UTC)
    procs = [_worker(cfg, home, 300, off, 7, now=now) for off in (0, 100, 200)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0 and out.split() == [b"start", b"done"]
    forget_process_cache()
    tail = Tail(s.outbox_dir)
    entries = tail.read()
    # 500 distinct signals went out; what the bounded outbox still holds is contiguous
    assert entries[-1].seq == 500
    assert [e.seq for e in entries] == list(range(entries[0].seq, 501))
    assert 40 <= len(entries) <= 40 + 2 * 64
    assert publish(s, signals(500, personalities=ALL, now=now)) == []


def test_outbox_is_bounded_and_keeps_latest_and_dedup_across_compaction(signals, sidecar_cfg):
    _, s = sidecar_cfg(history=40)
    sigs = signals(400, personalities=ALL)
    for sig in sigs:
        publish(s, [sig])
    lines = outbox_lines(s)
    assert lines[-1]["seq"] == 400
    assert 40 <= len(lines) <= 40 + 2 * 64
    assert len(segments(s.outbox_dir)) <= 4
    # a fresh process still refuses every signal ever published, compacted or not
    forget_process_cache()
    assert publish(s, sigs) == []
    # the latest signal of every key is still known: checkpoint, then the segments after it
    latest: dict = {}
    state = read_state(s.outbox_dir)
    for e in [*latest_from_state(state), *Tail(s.outbox_dir).read()]:
        latest[e.key] = max(latest.get(e.key, 0), e.seq)
    assert latest == {
        (f"bybit:{sig['symbol']}", sig["personality"], sig["timeframe"]): seq
        for seq, sig in zip(range(397, 401), sigs[-4:], strict=True)
    }


def test_torn_last_line_is_repaired_and_never_consumed(signals, sidecar_cfg):
    _, s = sidecar_cfg()
    assert publish(s, signals(3)) == [1, 2, 3]
    _, newest = segments(s.outbox_dir)[-1]
    with newest.open("ab") as f:  # what a SIGKILL in the middle of a write leaves behind
        f.write(b'{"type":"signal","schema":1,"seq":4,"symbol":"BTCU')
    tail = Tail(s.outbox_dir)
    assert [e.seq for e in tail.read()] == [1, 2, 3]  # the torn line is not a signal
    forget_process_cache()
    assert publish(s, signals(5)) == [4, 5]
    assert [e.seq for e in tail.read()] == [4, 5]
    assert [m["seq"] for m in outbox_lines(s)] == [1, 2, 3, 4, 5]
    assert newest.read_bytes().endswith(b"\n")


def test_sigkill_during_publishing_never_corrupts_the_seq(signals, sidecar_cfg, home):
    cfg, s = sidecar_cfg(history=200)
    now = dt.datetime.now(dt.UTC)
    last = 0
    for round_ in range(3):
        # batches of 50 lines of ~20 kB: a kill lands inside a write more often than not
        p = _worker(cfg, home, -1, 20_000 * round_, 50, size=20_000, now=now)
        assert p.stdout is not None and p.stdout.readline() == b"start\n"
        time.sleep(0.2 + 0.1 * round_)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        forget_process_cache()
        seqs = [e.seq for e in Tail(s.outbox_dir).read()]
        assert seqs and seqs[-1] > last  # the worker got to publish before it died
        assert seqs == list(range(seqs[0], seqs[-1] + 1))
        # the next publisher repairs any torn line and carries on right after the last seq
        assert publish(s, signals(2, offset=60_000 + 2 * round_)) == [seqs[-1] + 1, seqs[-1] + 2]
        entries = Tail(s.outbox_dir).read()
        assert len({(e.key, e.close_us) for e in entries}) == len(entries)
        assert all(e.line.endswith(b"\n") for e in entries)
        last = entries[-1].seq

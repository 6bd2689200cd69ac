"""The sidecar server over real sockets, running as `signalbox sidecar` in a subprocess."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time

import pytest

from pipeline.sidecar import outbox
from pipeline.sidecar.client import Client, SidecarError, format_signal
from pipeline.sidecar.outbox import poke, publish
from pipeline.sidecar.protocol import iso, unix_address
from pipeline.sidecar.segments import WAKE, segments

pytest_plugins = ["tests.fx_sidecar"]


def test_socket_is_owner_only_and_says_hello(sidecar_cfg, sidecar, connect, signals):
    cfg, s = sidecar_cfg()
    publish(s, signals(3))
    sidecar(cfg)
    assert stat.S_ISSOCK(s.socket_path.lstat().st_mode)
    assert stat.S_IMODE(s.socket_path.stat().st_mode) == 0o600
    hello = connect(s.socket_path).recv()
    assert hello is not None
    assert hello["type"] == "hello" and hello["schema"] == 1
    assert hello["seq"] == 3 and hello["oldest_seq"] == 1 and hello["heartbeat_s"] == 0.5


def test_latest_on_connect_then_new_ones_in_order(sidecar_cfg, sidecar, connect, signals):
    cfg, s = sidecar_cfg()
    publish(s, signals(6, offset=2))  # three minutes of scalping + swing
    publish(s, signals(2))  # the newest minute: now the latest of both keys
    sidecar(cfg)
    sub = connect(s.socket_path)  # a plain client that never subscribes gets everything
    assert sub.recv_type("hello")["seq"] == 8
    got = sub.signals(2)
    assert [m["seq"] for m in got] == [7, 8]
    assert {m["personality"] for m in got} == {"scalping", "swing"}
    heartbeat = sub.recv(heartbeats=True)
    assert heartbeat is not None
    assert (heartbeat["type"], heartbeat["seq"]) == ("heartbeat", 8)
    for i in range(5):  # then each new signal as it is published, in seq order
        publish(s, signals(3, offset=-3 * (i + 1), personalities=("vote",)))
    assert [m["seq"] for m in sub.signals(15)] == list(range(9, 24))


def test_a_signal_from_both_lanes_reaches_a_subscriber_once_from_the_first(
    sidecar_cfg, sidecar, connect, signals
):
    """The fast lane publishes first; the pipeline's copy of the same key and close_time
    (published by another process, a Dagster run) is dropped: one line, `origin` fast."""
    cfg, s = sidecar_cfg()
    sidecar(cfg)
    sub = connect(s.socket_path)
    sub.send({"op": "subscribe", "since_seq": 0})
    assert sub.recv_type("hello")["seq"] == 0
    sig, later = signals(2, personalities=("scalping",))  # `later`: the next minute's bar
    assert publish(s, [{**sig, "origin": "fast"}]) == [1]
    outbox._books.clear()  # the pipeline's run is another process: nothing cached
    assert publish(s, [{**sig, "origin": "pipeline"}, {**later, "origin": "pipeline"}]) == [2]
    got = sub.signals(2)  # the duplicate would have come between these two
    assert [(m["seq"], m["origin"], m["close_time"]) for m in got] == [
        (1, "fast", iso(sig["close_time"])),
        (2, "pipeline", iso(later["close_time"])),
    ]
    assert format_signal(got[0]).split(" quality=ok ")[1].startswith("origin=fast")


def test_filters(sidecar_cfg, sidecar, connect, signals):
    cfg, s = sidecar_cfg()
    publish(s, signals(8, personalities=("scalping", "swing", "vote", "ma_trend")))
    publish(s, signals(4, timeframe="5m", personalities=("scalping", "swing")))
    sidecar(cfg)
    sub = connect(s.socket_path)
    sub.send({"op": "subscribe", "personalities": ["swing"], "timeframes": ["1m"]})
    # the latest 1m swing signal only: seqs 1-4 and 5-8 are the two minutes (by key within
    # a minute), 9-12 the 5m ones
    assert [(m["seq"], m["personality"], m["timeframe"]) for m in sub.signals(1)] == [
        (7, "swing", "1m")
    ]
    # a non-matching signal is not delivered: the next one is the next matching one
    publish(s, signals(1, offset=-1, personalities=("scalping",)))
    publish(s, signals(1, offset=-1, personalities=("swing",), timeframe="5m"))
    publish(s, signals(1, offset=-1, personalities=("swing",)))
    nxt = sub.signals(1)[0]
    assert (nxt["personality"], nxt["timeframe"], nxt["seq"]) == ("swing", "1m", 15)
    # symbols are case-insensitive, a bare string is accepted
    other = connect(s.socket_path)
    other.send({"op": "subscribe", "symbols": "btcusdt", "personalities": ["vote"]})
    assert [m["personality"] for m in other.signals(1)] == ["vote"]


def test_since_seq_replays_and_says_when_history_is_short(sidecar_cfg, sidecar, connect, signals):
    cfg, s = sidecar_cfg(history=20)
    for i in range(0, 60, 6):  # 60 signals over several calls
        publish(s, signals(6, offset=60 - i))
    sidecar(cfg)
    sub = connect(s.socket_path)
    sub.send({"op": "subscribe", "since_seq": 50})
    assert [m["seq"] for m in sub.signals(10)] == list(range(51, 61))
    # the history keeps 20: asking for more says so explicitly, then replays what it has
    old = connect(s.socket_path)
    old.send({"op": "subscribe", "since_seq": 5, "personalities": ["swing"]})
    gap = old.recv_type("gap")
    assert gap["since_seq"] == 5 and gap["oldest_seq"] == 41
    got = old.signals(10)
    assert [m["seq"] for m in got] == list(range(42, 61, 2))
    assert {m["personality"] for m in got} == {"swing"}
    publish(s, signals(2, offset=-1))
    assert [m["seq"] for m in old.signals(1)] == [62]
    # a seq from the future is reported and the stream carries on
    ahead = connect(s.socket_path)
    ahead.send({"op": "subscribe", "since_seq": 1000})
    assert ahead.recv_type("error")["code"] == "since_ahead"
    publish(s, signals(2, offset=-4))
    assert [m["seq"] for m in ahead.signals(2)] == [63, 64]


def test_replay_longer_than_the_client_buffer_is_not_an_eviction(
    sidecar_cfg, sidecar, connect, signals
):
    cfg, s = sidecar_cfg(history=3000, client_buffer=10)
    publish(s, signals(2500, reasons=["r" * 300]))
    sidecar(cfg)
    sub = connect(s.socket_path)
    sub.send({"op": "subscribe", "since_seq": 0})
    assert [m["seq"] for m in sub.signals(2500)] == list(range(1, 2501))


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"hello there\n", "not_json"),
        (b"\x00\xff\xfe garbage \x80\n", "not_json"),
        (b"[1, 2, 3]\n", "not_object"),
        (b'{"op": "unsubscribe"}\n', "unknown_op"),
        (b'{"op": "subscribe", "symbols": 5}\n', "invalid_filter"),
        (b'{"op": "subscribe", "symbols": []}\n', "invalid_filter"),
        (b'{"op": "subscribe", "personalities": ["yolo"]}\n', "invalid_filter"),
        (b'{"op": "subscribe", "timeframe": ["1m"]}\n', "invalid_filter"),
        (b'{"op": "subscribe", "since_seq": -1}\n', "invalid_since_seq"),
        (b'{"op": "subscribe", "since_seq": true}\n', "invalid_since_seq"),
        (b'{"op": "subscribe", "since_seq": "5"}\n', "invalid_since_seq"),
        (b"[" * 50_000 + b"\n", "not_json"),
        (b'{"op": "subscribe", "x": "' + b"a" * 70_000 + b'"}\n', "line_too_long"),
        (b"a" * 200_000, "line_too_long"),
    ],
)
def test_malformed_input_gets_an_error_and_the_connection_keeps_working(
    sidecar_cfg, sidecar, connect, signals, line, code
):
    cfg, s = sidecar_cfg()
    publish(s, signals(4))
    sidecar(cfg)
    sub = connect(s.socket_path)
    sub.send(line)
    err = sub.recv_type("error")
    assert err["code"] == code and err["fatal"] is False and err["message"]
    sub.send(b"\n" + json.dumps({"op": "subscribe", "since_seq": 2}).encode() + b"\n")
    assert [m["seq"] for m in sub.signals(2)] == [3, 4]


def test_slow_subscriber_is_evicted_without_delaying_others(sidecar_cfg, sidecar, connect, signals):
    cfg, s = sidecar_cfg(client_buffer=10, history=5000)
    sidecar(cfg)
    stuck = connect(s.socket_path)
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.send({"op": "subscribe"})
    good = connect(s.socket_path)
    good.send({"op": "subscribe", "since_seq": 0})  # since_seq: no race with the first batch
    assert stuck.recv_type("hello") and good.recv_type("hello")
    # ~3 MB of signals the stuck client never reads; the good one keeps up, batch by batch
    for i in range(0, 1500, 50):
        seqs = publish(s, signals(50, offset=i, reasons=["x" * 2000]))
        assert [m["seq"] for m in good.signals(50)] == seqs
    # the stuck one was cut off with a reason, after the messages it could still take
    last = None
    while (msg := stuck.recv(timeout=10)) is not None:
        last = msg
    assert last is not None and last["type"] == "error"
    assert last["code"] == "too_slow" and last["fatal"] is True


def test_stale_socket_is_replaced_but_a_live_sidecar_is_not_stolen(sidecar_cfg, sidecar, connect):
    cfg, s = sidecar_cfg()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with unix_address(s.socket_path) as addr:
        stale.bind(addr)  # what a crashed sidecar leaves behind: a socket nobody listens on
    stale.close()
    first = sidecar(cfg)
    assert connect(s.socket_path).recv_type("hello")
    second = sidecar(cfg, wait=False)
    assert second.proc is not None and second.proc.wait(20) == 1
    assert "already serving" in second.log
    assert first.alive and connect(s.socket_path).recv_type("hello")
    assert first.stop() == 0
    assert not s.socket_path.exists()


def test_not_a_socket_is_left_alone(sidecar_cfg, sidecar):
    cfg, s = sidecar_cfg()
    s.socket_path.write_text("precious")
    p = sidecar(cfg, wait=False)
    assert p.proc is not None and p.proc.wait(20) == 1
    assert "is a regular file, not a socket" in p.log
    assert s.socket_path.read_text() == "precious"


def test_tcp_requires_the_token(sidecar_cfg, sidecar, connect, signals):
    cfg, s = sidecar_cfg(tcp_port=0, token="s3cret")
    publish(s, signals(2))
    p = sidecar(cfg)
    assert p.tcp_port
    tcp = ("127.0.0.1", p.tcp_port)
    # no token: an error and the connection is closed; nothing else is said
    anon = connect(tcp=tcp)
    anon.send({"op": "subscribe"})
    err = anon.recv()
    assert err is not None and err["code"] == "unauthorized" and err["fatal"] is True
    assert anon.recv() is None
    wrong = connect(tcp=tcp)
    wrong.send({"op": "auth", "token": "guess"})
    assert wrong.recv()["code"] == "unauthorized"  # type: ignore[index]
    assert wrong.recv() is None
    # the right token, with the subscribe or as a separate auth line
    ok = connect(tcp=tcp)
    ok.send({"op": "subscribe", "token": "s3cret", "since_seq": 0})
    assert ok.recv_type("hello")["seq"] == 2
    assert [m["seq"] for m in ok.signals(2)] == [1, 2]
    ok2 = connect(tcp=tcp)
    ok2.send({"op": "auth", "token": "s3cret"})
    ok2.send({"op": "subscribe", "personalities": ["swing"]})
    assert [m["personality"] for m in ok2.signals(1)] == ["swing"]
    # the client library over TCP; a wrong token is an error retrying cannot fix
    client = Client(host="127.0.0.1", port=p.tcp_port, token="s3cret", since_seq=0)
    assert [m["seq"] for m in itertools.islice(client, 2)] == [1, 2]
    client.close()
    with pytest.raises(SidecarError, match="unauthorized"):
        next(iter(Client(host="127.0.0.1", port=p.tcp_port, token="nope")))
    # the Unix socket needs no token
    assert connect(s.socket_path).recv_type("hello")


def test_tcp_without_a_token_refuses_to_start(sidecar_cfg, sidecar):
    cfg, _ = sidecar_cfg(tcp_port=0)
    p = sidecar(cfg, wait=False)
    assert p.proc is not None and p.proc.wait(20) == 1
    assert "needs a token" in p.log


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_socat_is_a_working_client(sidecar_cfg, sidecar, signals):
    cfg, s = sidecar_cfg()
    publish(s, signals(2))
    sidecar(cfg)
    proc = subprocess.Popen(
        ["socat", "-", f"UNIX-CONNECT:{s.socket_path}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b'{"op":"subscribe","personalities":["swing"],"since_seq":0}\n')
    proc.stdin.flush()
    lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
    assert [m["type"] for m in lines] == ["hello", "signal"]
    assert lines[1]["personality"] == "swing"
    publish(s, signals(2, offset=-1))  # one of the two is new: swing, one minute later
    assert json.loads(proc.stdout.readline())["seq"] == 3
    proc.kill()
    proc.wait()


def test_dead_subscribers_are_dropped(sidecar_cfg, sidecar, connect, signals):
    cfg, s = sidecar_cfg()
    p = sidecar(cfg)
    for _ in range(20):
        c = connect(s.socket_path)
        c.send({"op": "subscribe"})
        c.close()
    live = connect(s.socket_path)
    live.send({"op": "subscribe", "since_seq": 0})
    live.recv_type("hello")
    publish(s, signals(2))
    assert [m["seq"] for m in live.signals(2)] == [1, 2]
    assert p.alive


def test_live_stream_follows_segment_rotation_and_compaction(
    sidecar_cfg, sidecar, connect, signals
):
    cfg, s = sidecar_cfg(history=40)  # segments of 64 lines, the oldest deleted as it goes
    sidecar(cfg)
    sub = connect(s.socket_path)
    # since_seq 0: lines published before the server reads this request are replayed, not
    # folded into the latest-per-key snapshot
    sub.send({"op": "subscribe", "since_seq": 0})
    sub.recv_type("hello")
    got, seqs = [], []
    # Batch by batch: a burst of more than `history` lines faster than the sidecar reads
    # would be compacted away unread (by design the publisher never waits for the sidecar).
    for i in range(0, 301, 7):
        seqs += publish(s, signals(7, offset=i))
        got += [m["seq"] for m in sub.signals(7)]
    assert got == seqs == list(range(1, 302))
    assert segments(s.outbox_dir)[0][0] > 64  # it did rotate, and compacted the oldest away


def test_a_personality_from_a_yaml_path_is_subscribed_to_by_its_name(
    tmp_path, home, sidecar, connect, signals
):
    import yaml

    from pipeline.config import load_settings
    from pipeline.strategy.personality import PERSONALITY_DIR

    mine = tmp_path / "mine.yaml"
    mine.write_text(
        (PERSONALITY_DIR / "swing.yaml").read_text().replace("name: swing", "name: mine")
    )
    cfg = tmp_path / "signalbox.yaml"
    cfg.write_text(
        yaml.safe_dump({"home": str(home), "personalities": ["scalping", str(mine)], "sidecar": {}})
    )
    s = load_settings(cfg, env={"SIGNALBOX_HOME": str(home)})
    assert s.personality_names == ["scalping", "mine"]
    publish(s, signals(2, personalities=("scalping", "mine")))
    sidecar(cfg)
    sub = connect(s.socket_path)
    sub.send({"op": "subscribe", "personalities": ["mine"]})
    assert [m["personality"] for m in sub.signals(1)] == ["mine"]
    publish(s, signals(1, offset=-1, personalities=("scalping",)))
    publish(s, signals(1, offset=-1, personalities=("mine",)))
    assert [(m["seq"], m["personality"]) for m in sub.signals(1)] == [(4, "mine")]


def _old_wake_name(outbox_dir) -> str:
    """The abstract socket name the sidecar used to wake up on: anyone could bind it."""
    digest = hashlib.sha256(os.fsencode(os.path.realpath(outbox_dir))).hexdigest()[:32]
    return f"\0signalbox-sidecar-{digest}"


def test_the_wake_up_socket_cannot_be_squatted_and_a_stale_one_is_replaced(
    sidecar_cfg, sidecar, connect, signals
):
    cfg, s = sidecar_cfg()
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    squatter.bind(_old_wake_name(s.outbox_dir))  # any local user could do this
    try:
        p = sidecar(cfg)
    finally:
        squatter.close()
    wake = s.outbox_dir / WAKE
    assert stat.S_ISSOCK(wake.lstat().st_mode)
    assert stat.S_IMODE(wake.lstat().st_mode) == 0o600
    assert stat.S_IMODE(s.outbox_dir.stat().st_mode) == 0o700
    assert poke(s.outbox_dir)  # the publisher's poke reaches the sidecar
    p.stop(signal.SIGKILL)
    assert stat.S_ISSOCK(wake.lstat().st_mode)  # left behind by the killed sidecar
    assert not poke(s.outbox_dir)
    p.start()  # replaces it
    assert poke(s.outbox_dir)
    sub = connect(s.socket_path)
    sub.send({"op": "subscribe", "since_seq": 0})
    sub.recv_type("hello")
    seqs = publish(s, signals(2))
    assert [m["seq"] for m in sub.signals(2)] == seqs
    assert p.stop() == 0
    assert not wake.exists()


def test_an_evicted_subscriber_reads_the_reason_last_however_late_it_reads(
    sidecar_cfg, sidecar, connect, signals
):
    cfg, s = sidecar_cfg(client_buffer=10, history=5000)
    # The connection is closed 0.5 s after the eviction (10 s by default); the client reads
    # only well after that.
    p = sidecar(cfg, close_grace_s=0.5)
    stuck = connect(s.socket_path)
    stuck.send({"op": "subscribe", "since_seq": 0})
    assert stuck.recv_type("hello")
    published: list[int] = []
    for i in range(0, 1500, 50):  # ~3 MB it does not read
        published += publish(s, signals(50, offset=i, reasons=["x" * 2000]))
    p.wait_log("disconnecting a subscriber")
    time.sleep(1.5)
    msgs = []
    while (msg := stuck.recv(timeout=10)) is not None:
        msgs.append(msg)
    assert stuck.buf == b"", p.log  # no torn line
    *sigs, last = msgs
    assert last["type"] == "error" and last["code"] == "too_slow" and last["fatal"] is True
    seqs = [m["seq"] for m in sigs]
    assert seqs and seqs == published[: len(seqs)] and len(seqs) < len(published)

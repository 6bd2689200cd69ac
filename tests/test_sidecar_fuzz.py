"""Random bytes and random JSON at the sidecar for a few seconds: it stays up and keeps serving.

Seeded (each fuzzer thread has its own `random.Random`), time-bounded, over the Unix socket
and the token-protected TCP listener at once, while signals are published and a well-behaved
client follows them.
"""

from __future__ import annotations

import contextlib
import json
import queue
import random
import socket
import threading
import time
from typing import Any

from pipeline.sidecar.client import Client
from pipeline.sidecar.outbox import publish

pytest_plugins = ["tests.fx_sidecar"]

DURATION_S = 3.0
KINDS = {"hello", "signal", "heartbeat", "error", "gap"}
WORDS = [
    "op",
    "subscribe",
    "auth",
    "token",
    "symbols",
    "personalities",
    "timeframes",
    "since_seq",
    "swing",
    "1m",
    "BTCUSDT",
    "",
    "\udc80",
    "é",
    "\x00",
]


def rand_json(r: random.Random, depth: int = 0) -> Any:
    k = r.random()
    if depth > 4 or k < 0.4:
        text = "".join(chr(r.randint(1, 0x2FFF)) for _ in range(r.randint(0, 20)))
        big = r.randint(-(2**70), 2**70)
        return r.choice(
            [None, True, False, big, r.random() * 1e300, -1, 0, 10**100, text, r.choice(WORDS)]
        )
    if k < 0.6:
        return [rand_json(r, depth + 1) for _ in range(r.randint(0, 5))]
    obj = {r.choice(WORDS): rand_json(r, depth + 1) for _ in range(r.randint(0, 5))}
    if r.random() < 0.7:
        obj["op"] = r.choice(["subscribe", "subscribe", "auth", "ping", 3, None])
    return obj


def rand_payload(r: random.Random) -> bytes:
    k = r.random()
    if k < 0.3:
        return r.randbytes(r.randint(1, 2000))
    if k < 0.4:
        huge = r.randbytes(r.randint(60_000, 140_000)).replace(b"\n", b" ")
        return huge + b"\n" if r.random() < 0.5 else huge
    if k < 0.45:
        return b"[" * r.randint(1000, 60_000) + b"\n"
    text = json.dumps(rand_json(r), ensure_ascii=r.random() < 0.5)
    data = text.encode(errors="surrogatepass")
    if r.random() < 0.2:  # split mid-line, or no newline at all
        return data[: r.randint(0, len(data))]
    return data + b"\n"


def fuzzer(
    seed: int, addr: Any, family: int, stop: threading.Event, bad: list[str], errors: list[str]
) -> None:
    r = random.Random(seed)
    while not stop.is_set():
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(addr)
            buf = b""
            for _ in range(r.randint(1, 20)):
                s.sendall(rand_payload(r))
                if r.random() < 0.5:  # sometimes read what came back, sometimes never
                    s.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        buf += s.recv(1 << 20)
                    s.settimeout(2)
                if r.random() < 0.1:
                    s.shutdown(socket.SHUT_WR)
                    break
            for line in buf.split(b"\n")[:-1]:
                msg = json.loads(line)
                if msg.get("type") not in KINDS:
                    bad.append(repr(line[:200]))
                elif msg["type"] == "error":
                    errors.append(msg["code"])
        except (OSError, ValueError) as err:
            if isinstance(err, ValueError):
                bad.append(f"unparseable reply: {err}")
        finally:
            s.close()


def test_fuzz_the_server_stays_up_and_keeps_serving(sidecar_cfg, sidecar, signals):
    cfg, s = sidecar_cfg(tcp_port=0, token="fuzz-token", client_buffer=50)
    p = sidecar(cfg)
    assert p.tcp_port
    got: queue.Queue[int] = queue.Queue()
    good = Client(s.socket_path, since_seq=0, backoff_min_s=0.02, backoff_max_s=0.2)
    reader = threading.Thread(target=lambda: [got.put(m["seq"]) for m in good], daemon=True)
    reader.start()
    stop = threading.Event()
    bad: list[str] = []
    errors: list[str] = []
    threads = []
    targets = [(str(s.socket_path), socket.AF_UNIX)] * 3 + [
        (("127.0.0.1", p.tcp_port), socket.AF_INET)
    ]
    for seed, (addr, family) in enumerate(targets):
        threads.append(
            threading.Thread(target=fuzzer, args=(seed, addr, family, stop, bad, errors))
        )
    for t in threads:
        t.start()
    published: list[int] = []
    deadline = time.monotonic() + DURATION_S
    slot = 0
    while time.monotonic() < deadline:
        published += publish(s, signals(2, offset=slot))
        slot += 2
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(10)
    assert p.alive, p.log
    assert not bad
    # the fuzzers did get through to the request handling, on both listeners
    assert {"not_json", "line_too_long", "unauthorized"} <= set(errors)
    assert [got.get(timeout=10) for _ in published] == published
    assert good.connects == 1  # the well-behaved client was never disconnected
    assert "Traceback" not in p.log
    # and a new subscriber is still served
    late = Client(s.socket_path, since_seq=published[-1] - 1, reconnect=False)
    assert next(iter(late))["seq"] == published[-1]
    late.close()
    good.close()

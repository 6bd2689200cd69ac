"""Sidecar: publish-to-subscriber latency and throughput, next to a bare Unix-socket baseline.

"Publish" is the pipeline's `outbox.publish()` call (lock, append, poke), so the whole
hand-off is measured: outbox -> sidecar process -> subscriber processes. Times are taken with
`time.perf_counter()` (CLOCK_MONOTONIC, one clock for every process on the machine).
Signal prices come from the real Bybit BTCUSDT file when it is present.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import percentile, real_file, table, uds_one_way

TITLE = "Signal sidecar"
ROOT = Path(__file__).resolve().parent.parent
BYBIT = "bybit_linear_BTCUSDT_1m_2025-05-29_2025-06-29.parquet"
PERSONALITIES = ("scalping", "swing", "ma_trend", "vote")
# (subscribers, subscriber processes, publishes, seconds between publishes)
LATENCY_RUNS = [(1, 1, 400, 0.004), (100, 1, 200, 0.01), (1000, 2, 100, 0.05)]
THROUGHPUT_N = 20_000


# -- child processes ----------------------------------------------------------------------

_STREAM = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
line = sys.stdin.buffer.readline()
n = int(sys.argv[2])
for _ in range(n // 100):
    s.sendall(line * 100)
s.close()
"""


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _seq_of(line: bytes) -> int:
    i = line.find(b'"seq":')
    return int(line[i + 6 : line.find(b",", i)]) if i >= 0 else -1


def subscriber_main(path: str, conns: int, after: int, last: int, out: str) -> None:
    """Open `conns` subscriptions; record when each signal with after < seq <= last arrives.

    Prints "ready" once every connection has seen seq `after` (the warm-up signal), exits
    when every connection has seen `last`. The loop only stamps and keeps what it reads
    (parsing comes after), so the subscribers' own cost stays out of the figures as far as
    possible when 1000 of them share two cores with the sidecar.
    """
    _raise_fd_limit()
    gc.disable()  # a collection over the stamps kept would show up as latency
    ep = select.epoll()
    sub = json.dumps({"op": "subscribe", "since_seq": after - 1}).encode() + b"\n"
    socks = []
    for _ in range(conns):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.sendall(sub)
        s.setblocking(False)
        socks.append(s)
        ep.register(s.fileno(), select.EPOLLIN)
    mark_ready = b'"type":"signal","schema":1,"seq":%d,' % after
    mark_done = b'"type":"signal","schema":1,"seq":%d,' % last
    chunks: dict[int, list[tuple[float, bytes]]] = {s.fileno(): [] for s in socks}
    ready = done = 0
    read, clock = os.read, time.perf_counter
    while done < conns:
        for fd, _ in ep.poll(30):
            data = read(fd, 65536)  # a 256 KiB buffer costs more than the read itself
            now = clock()
            if not data:
                raise SystemExit(f"connection {fd} closed by the sidecar")
            chunks[fd].append((now, data))
            if mark_ready in data:
                ready += 1
                if ready == conns:
                    print("ready", flush=True)
            if mark_done in data:
                done += 1
    times: dict[int, list[float]] = {}
    for conn in chunks.values():
        buf = b""
        for now, data in conn:
            *lines, buf = (buf + data).split(b"\n")
            for line in lines:
                if line.startswith(b'{"type":"signal"'):
                    seq = _seq_of(line)
                    if after < seq <= last:
                        times.setdefault(seq, []).append(now)
    Path(out).write_text(json.dumps(times))


# -- helpers ------------------------------------------------------------------------------


def _prices() -> list[float]:
    path = real_file(BYBIT)
    if path is None:
        from pipeline.replay import synthetic

        now = int(time.time() // 60 * 60_000)
        return [float(x) for x in synthetic.candles("BTCUSDT", now - 2000 * 60_000, now)[:, 4]]
    import pyarrow.parquet as pq

    return [float(x) for x in pq.read_table(path, columns=["close"]).column(0).to_pylist()]


class Signals:
    """Distinct signals (one per personality and minute, going back from now)."""

    def __init__(self) -> None:
        self.prices = _prices()
        self.slot = 0
        self.now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)

    def take(self, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            i = self.slot
            self.slot += 1
            close = self.now - dt.timedelta(minutes=i // len(PERSONALITIES))
            price = self.prices[i % len(self.prices)]
            out.append(
                {
                    "exchange": "bybit",
                    "symbol": "BTCUSDT",
                    "personality": PERSONALITIES[i % 4],
                    "timeframe": "1m",
                    "action": "BUY" if i % 3 else "SELL",
                    "confidence": 0.5 + (i % 50) / 100,
                    "price": price,
                    "open_time": close - dt.timedelta(minutes=1),
                    "close_time": close,
                    "reasons": ["rsi_14 < 30", "close > ema_50"],
                    "quality": "ok",
                }
            )
        return out


class Env:
    """A temporary SIGNALBOX_HOME with a sidecar process."""

    def __init__(self) -> None:
        import yaml

        from pipeline.config import load_settings

        self.tmp = tempfile.TemporaryDirectory(prefix="sbx-bench-")
        self.home = Path(self.tmp.name)
        self.cfg = self.home / "signalbox.yaml"
        self.cfg.write_text(
            yaml.safe_dump(
                {
                    "sidecar": {
                        "history": 50_000,
                        "client_buffer": 100_000,
                        "signal_ttl_minutes": 60 * 24 * 60,
                    }
                }
            )
        )
        self.env = {
            **os.environ,
            "SIGNALBOX_HOME": str(self.home),
            "SIGNALBOX_CONFIG": str(self.cfg),
            "PYTHONPATH": str(ROOT),
        }
        self.settings = load_settings(self.cfg, env=self.env)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.sidecar.server"],
            cwd=ROOT,
            env=self.env,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            if b" serving " in raw:
                break
        else:
            raise RuntimeError("the sidecar did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
            self.proc = None

    def close(self) -> None:
        self.stop()
        self.tmp.cleanup()


def _fmt_ms(s: float) -> str:
    return f"{s * 1000:.3f} ms"


# -- measurements -------------------------------------------------------------------------


def baseline(tmp: Path, line: bytes) -> dict[str, float]:
    """Bare Unix-socket ping-pong (one-way = RTT/2) and streaming between two processes."""
    one_way = uds_one_way(tmp, line)
    path = str(tmp / "stream.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    stream = subprocess.Popen(
        [sys.executable, "-c", _STREAM, path, str(THROUGHPUT_N)], stdin=subprocess.PIPE
    )
    conn, _ = srv.accept()
    assert stream.stdin is not None
    stream.stdin.write(line)
    stream.stdin.close()
    t0 = time.perf_counter()
    total, want = 0, len(line) * (THROUGHPUT_N // 100) * 100
    while total < want:
        chunk = conn.recv(1 << 18)
        if not chunk:
            break
        total += len(chunk)
    took = time.perf_counter() - t0
    conn.close()
    stream.wait(10)
    srv.close()
    return {
        "p50": percentile(one_way, 50),
        "p99": percentile(one_way, 99),
        "rate": (total / len(line)) / took,
    }


def latency(env: Env, sigs: Signals, subs: int, procs: int, n: int, gap: float) -> dict:
    from pipeline.sidecar.outbox import publish

    after = publish(env.settings, sigs.take(1))[0] + 1  # seq of the warm-up signal
    last = after + n
    outs, children = [], []
    for k in range(procs):
        out = env.home / f"lat-{subs}-{k}.json"
        outs.append(out)
        children.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.bench_sidecar",
                    "sub",
                    str(env.settings.socket_path),
                    str(subs // procs),
                    str(after),
                    str(last),
                    str(out),
                ],
                cwd=ROOT,
                env=env.env,
                stdout=subprocess.PIPE,
            )
        )
    # the warm-up signal: a subscriber that connects later gets it by replay (since_seq)
    assert publish(env.settings, sigs.take(1)) == [after]
    for c in children:
        assert c.stdout is not None
        if c.stdout.readline().strip() != b"ready":
            raise RuntimeError("subscriber did not get ready")
    t_pub: dict[int, float] = {}
    calls = []
    for _ in range(n):
        time.sleep(gap)
        batch = sigs.take(1)
        t0 = time.perf_counter()
        (seq,) = publish(env.settings, batch)
        calls.append(time.perf_counter() - t0)
        t_pub[seq] = t0
    for c in children:
        c.wait(120)
    lat = []
    for out in outs:
        for seq, ts in json.loads(out.read_text()).items():
            lat += [t - t_pub[int(seq)] for t in ts]
    assert len(lat) == n * subs, (len(lat), n * subs)
    return {
        "p50": percentile(lat, 50),
        "p99": percentile(lat, 99),
        "max": max(lat),
        "n": len(lat),
        "call_p50": percentile(calls, 50),
        "call_p99": percentile(calls, 99),
    }


def throughput(env: Env, sigs: Signals, batch: int) -> float:
    """Signals per second from the first publish to the last arrival at one subscriber."""
    from pipeline.sidecar.outbox import publish

    after = publish(env.settings, sigs.take(1))[0] + 1
    last = after + THROUGHPUT_N
    out = env.home / f"tp-{batch}.json"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.bench_sidecar",
            "sub",
            str(env.settings.socket_path),
            "1",
            str(after),
            str(last),
            str(out),
        ],
        cwd=ROOT,
        env=env.env,
        stdout=subprocess.PIPE,
    )
    publish(env.settings, sigs.take(1))
    assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
    todo = [sigs.take(batch) for _ in range(THROUGHPUT_N // batch)]
    t0 = time.perf_counter()
    for b in todo:
        publish(env.settings, b)
    child.wait(120)
    arrivals = json.loads(out.read_text())
    return THROUGHPUT_N / (max(t for ts in arrivals.values() for t in ts) - t0)


def publish_while_down(env: Env, sigs: Signals) -> tuple[float, float]:
    from pipeline.sidecar.outbox import publish

    env.stop()
    calls = []
    for _ in range(300):
        batch = sigs.take(1)
        t0 = time.perf_counter()
        publish(env.settings, batch)
        calls.append(time.perf_counter() - t0)
    return percentile(calls, 50), percentile(calls, 99)


def run() -> str:
    sys.path.insert(0, str(ROOT))
    load = os.getloadavg()[0]
    env = Env()
    try:
        sigs = Signals()
        sample = sigs.take(1)
        env.start()
        from pipeline.sidecar.outbox import publish

        publish(env.settings, sample)
        line = next(iter(sorted((env.home / "outbox").glob("*.jsonl")))).read_bytes()
        line = line.splitlines(keepends=True)[0]
        base = baseline(env.home, line)
        lat = {
            subs: latency(env, sigs, subs, procs, n, gap) for subs, procs, n, gap in LATENCY_RUNS
        }
        tp1 = throughput(env, sigs, 1)
        tp100 = throughput(env, sigs, 100)
        down = publish_while_down(env, sigs)
    finally:
        env.close()
    rows = []
    for subs, r in lat.items():
        for q in ("p50", "p99"):
            rows.append(
                [
                    f"latency {q}, {subs} subscriber(s)",
                    _fmt_ms(base[q]),
                    _fmt_ms(r[q]),
                    f"{r[q] / base[q]:.1f}x",
                ]
            )
    rows.append(
        [
            "sustained signals/s, publish() per signal",
            f"{base['rate']:,.0f}",
            f"{tp1:,.0f}",
            f"{tp1 / base['rate']:.3f}x",
        ]
    )
    rows.append(
        [
            "sustained signals/s, publish() per 100 signals",
            f"{base['rate']:,.0f}",
            f"{tp100:,.0f}",
            f"{tp100 / base['rate']:.3f}x",
        ]
    )
    calls = [
        [
            "publish() call, sidecar up (1 subscriber)",
            _fmt_ms(lat[1]["call_p50"]),
            _fmt_ms(lat[1]["call_p99"]),
        ],
        [
            "publish() call, sidecar up (1000 subscribers)",
            _fmt_ms(lat[1000]["call_p50"]),
            _fmt_ms(lat[1000]["call_p99"]),
        ],
        ["publish() call, sidecar down", _fmt_ms(down[0]), _fmt_ms(down[1])],
    ]
    runs = ", ".join(
        f"{s} subscriber(s): {n} publishes {g * 1000:.0f} ms apart, {p} subscriber process(es)"
        for s, p, n, g in LATENCY_RUNS
    )
    return "\n\n".join(
        [
            "Latency is from the start of the pipeline's `publish()` call (outbox append under the "
            "lock, then a poke datagram; every ~256 lines a checkpoint that syncs them to disk "
            "first) to the line arriving at each subscriber, measured on "
            "one monotonic clock. Baseline: a bare Unix-socket ping-pong between two processes "
            f"(one-way = RTT/2, {len(line)}-byte lines, 2,800 round trips) and a bare stream of "
            "the same lines, in the same run. Targets: p50 < 0.5 ms with 1 subscriber, "
            "p99 < 20 ms with 1000.",
            table(["measure", "bare socket baseline", "sidecar", "ratio"], rows),
            table(["pipeline side", "p50", "p99"], calls),
            f"Runs: {runs}; sustained: {THROUGHPUT_N:,} signals to 1 subscriber "
            "(client_buffer raised to 100,000 so the burst is not cut off as a slow subscriber). "
            "Subscribers are lean epoll loops that stamp each read (64 KiB reads) and parse "
            "afterwards; with 1000 of them sharing the 2 cores with the sidecar, their own reading "
            "is part of the p99. Signal prices from the real Bybit BTCUSDT 1m file where present. "
            f"Load average at the start: {load:.2f}.",
        ]
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["sub"]:
        a = sys.argv[2:]
        subscriber_main(a[0], int(a[1]), int(a[2]), int(a[3]), a[4])

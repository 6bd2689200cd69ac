"""Paper bots: how fast a bot records an order for a signal line, and whether 50 bots on one
sidecar slow another subscriber down.

1. Reaction: one bot (the `signalbox bots` code: its sidecar subscription, trader and store)
   against a real sidecar process; per signal, from the parsed line in the bot's hands to the
   order line written to its journal ("recorded": a process kill can no longer lose it) and
   to its state committed with fsync ("durable": not even a machine crash can). Baseline: one
   bare write + fsync of a line on the same disk, in the same run.
2. 50 bots: a `signalbox bots` process with 50 bots (each its own subscription, all wanting
   every signal) on one sidecar; another subscriber's publish -> receive latency with and
   without them, in the same run. The bots' own reaction times come from their log.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import pcts, percentile, table

TITLE = "Paper bots"
ROOT = Path(__file__).resolve().parent.parent
N_REACT = int(os.environ.get("BENCH_BOTS_SIGNALS", "300"))
N_BOTS = int(os.environ.get("BENCH_BOTS", "50"))
N_OTHER = int(os.environ.get("BENCH_BOTS_OTHER", "200"))
GAP_S = 0.02  # between publishes


def _config(home: Path, bots: int) -> Path:
    import yaml

    cfg = home / "signalbox.yaml"
    data = {
        "home": str(home),
        "source": "replay",
        "sidecar": {"heartbeat_s": 1, "signal_ttl_minutes": 60 * 24 * 30, "history": 5000},
        "bots": [
            {"name": f"bot{i:02d}", "personality": "swing", "symbols": ["BTCUSDT"]}
            for i in range(bots)
        ],
    }
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def _signals(n: int, offset: int) -> list[dict[str, Any]]:
    """n distinct signals (one per minute, back from yesterday) the bots all want."""
    base = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(days=1)
    out = []
    for i in range(offset, offset + n):
        close = base - dt.timedelta(minutes=i)
        out.append(
            {
                "exchange": "bybit",
                "symbol": "BTCUSDT",
                "personality": "swing",
                "timeframe": "1m",
                "action": "BUY" if i % 2 else "SELL",
                "confidence": 0.8,
                "price": 65000.0,
                "open_time": close - dt.timedelta(minutes=1),
                "close_time": close,
                "reasons": ["bench"],
                "quality": "ok",
            }
        )
    return out


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.runtime.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
        )


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench: timed out waiting for {what}")
        time.sleep(0.05)


def _fsync_floor(tmp: Path, n: int = 200) -> list[float]:
    out = []
    fd = os.open(tmp / "floor.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, b"x" * 300 + b"\n")
            os.fsync(fd)
            out.append(time.perf_counter() - t)
    finally:
        os.close(fd)
    return out


def reaction(tmp: Path) -> tuple[list[float], list[float]]:
    """One bot in this process against a sidecar process: (recorded, durable) seconds."""
    from pipeline.config import load_settings
    from pipeline.runtime.bots import follow_signals, runners
    from pipeline.sidecar.outbox import publish

    home = tmp / "react"
    home.mkdir()
    cfg = _config(home, 1)
    env = {**os.environ, "SIGNALBOX_HOME": str(home), "SIGNALBOX_CONFIG": str(cfg)}
    settings = load_settings(cfg, env={"SIGNALBOX_HOME": str(home)})
    sc = _spawn(["sidecar"], env, tmp / "sidecar-react.log")
    stop = threading.Event()
    (r,) = runners(settings)
    t = threading.Thread(target=follow_signals, args=(settings, r, stop), daemon=True)
    try:
        _wait(settings.socket_path.exists, 30, "the sidecar")
        t.start()
        _wait(lambda: r.state.last_seq is not None, 30, "the bot to subscribe")
        for s in _signals(N_REACT, 0):
            publish(settings, [s])
            time.sleep(GAP_S)
        _wait(lambda: len(r.reaction_s) >= N_REACT, 60, "every order")
    finally:
        stop.set()
        t.join(5)
        sc.send_signal(signal.SIGTERM)
        sc.wait(20)
    return r.reaction_s, r.durable_s


def other_subscriber(tmp: Path) -> tuple[list[float], list[float], str]:
    """Another subscriber's publish -> receive latency without, then with, N_BOTS bots."""
    from pipeline.config import load_settings
    from pipeline.replay import ReplayExchange
    from pipeline.sidecar.client import Client
    from pipeline.sidecar.outbox import publish

    home = tmp / "fifty"
    home.mkdir()
    cfg = _config(home, N_BOTS)
    settings = load_settings(cfg, env={"SIGNALBOX_HOME": str(home)})
    got: dict[int, float] = {}
    sent: dict[int, float] = {}
    with ReplayExchange(seed=7) as ex:
        env = {
            **os.environ,
            "SIGNALBOX_HOME": str(home),
            "SIGNALBOX_CONFIG": str(cfg),
            "SIGNALBOX_SOURCE": "replay",
            "SIGNALBOX_BYBIT_URL": ex.rest_url,
            "SIGNALBOX_BYBIT_WS": ex.ws_url,
        }
        sc = _spawn(["sidecar"], env, tmp / "sidecar-fifty.log")
        bots: subprocess.Popen[bytes] | None = None
        client = Client(settings.socket_path, since_seq=0)

        def listen() -> None:
            for msg in client.signals():
                got[msg["seq"]] = time.perf_counter()

        try:
            _wait(settings.socket_path.exists, 30, "the sidecar")
            threading.Thread(target=listen, daemon=True).start()

            def burst(offset: int) -> list[float]:
                seqs = []
                for s in _signals(N_OTHER, offset):
                    t = time.perf_counter()
                    (seq,) = publish(settings, [s])
                    sent[seq] = t
                    seqs.append(seq)
                    time.sleep(GAP_S)
                _wait(lambda: all(q in got for q in seqs), 60, "the other subscriber")
                return [got[q] - sent[q] for q in seqs]

            without = burst(10_000)
            bots = _spawn(["bots"], env, tmp / "bots.log")
            states = [home / "bots" / f"bot{i:02d}" / "state.json" for i in range(N_BOTS)]
            _wait(lambda: all(p.exists() for p in states), 120, f"{N_BOTS} bots to start")
            time.sleep(1.0)
            with_bots = burst(20_000)
            bots.send_signal(signal.SIGTERM)
            bots.wait(60)
        finally:
            client.close()
            if bots is not None and bots.poll() is None:
                bots.kill()
            sc.send_signal(signal.SIGTERM)
            sc.wait(20)
    log = (tmp / "bots.log").read_text()
    return without, with_bots, log


def _bots_p99(log: str) -> tuple[int, list[float], list[float]]:
    pat = r"recorded p50 ([\d.]+) p99 ([\d.]+) ms, -> durable \(fsynced\) p50 ([\d.]+) p99 ([\d.]+)"
    found = re.findall(pat, log)
    rec = [float(m[1]) for m in found]
    dur = [float(m[3]) for m in found]
    return len(found), rec, dur


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="sbx-bots-") as d:
        tmp = Path(d)
        floor = _fsync_floor(tmp)
        recorded, durable = reaction(tmp)
        without, with_bots, log = other_subscriber(tmp)
    n_logged, rec99, dur99 = _bots_p99(log)
    p99 = percentile(recorded, 99) * 1000
    rows = [
        ["floor: write + fsync of one journal line", len(floor), *pcts(floor, digits=3)],
        ["1 bot: line received → order recorded", len(recorded), *pcts(recorded, digits=3)],
        ["1 bot: line received → state durable (fsynced)", len(durable), *pcts(durable, digits=3)],
    ]
    other = [
        ["without bots", len(without), *pcts(without, digits=2)],
        [f"with {N_BOTS} bots", len(with_bots), *pcts(with_bots, digits=2)],
    ]
    worst = (
        f"Across the {n_logged} bots of that process (their own log, each over "
        f"{N_OTHER} orders), line received -> order recorded: p99 {percentile(rec99, 50):.2f} ms "
        f"for the median bot, {max(rec99):.2f} ms for the worst (durable: "
        f"{percentile(dur99, 50):.2f} / {max(dur99):.2f} ms). All 50 wake for each line at once "
        "and take turns on one process's interpreter lock, at nice 5."
        if rec99
        else "The bots' log held no reaction summary."
    )
    return (
        f"Signals published every {GAP_S * 1000:.0f} ms (`BENCH_BOTS_SIGNALS`={N_REACT}, "
        f'`BENCH_BOTS`={N_BOTS}, `BENCH_BOTS_OTHER`={N_OTHER}). "Recorded" is the order line '
        "written to the bot's journal (after it a killed bot cannot lose or repeat it); "
        "\"durable\" adds the journal's fsync and the state's fsync + rename.\n\n"
        + table(["reaction", "orders", "p50 ms", "p95 ms", "p99 ms"], rows)
        + f"\n\nTarget: recorded p99 < 5 ms: {'meets' if p99 < 5 else 'misses'} it "
        f"({p99:.3f} ms).\n\n"
        + table(
            ["another subscriber's publish → receive", "signals", "p50 ms", "p95 ms", "p99 ms"],
            other,
        )
        + f"\n\n{worst}\n"
    )


if __name__ == "__main__":
    print(run())

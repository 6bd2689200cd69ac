"""`signalbox bots`: the configured paper bots, each a subscriber of the sidecar, in one process.

Per bot: its own sidecar subscription (resuming with `since_seq` = the last seq its state
committed; a bot's first start begins at the sidecar's current seq, so it never acts on old
news) and an order recorded per signal line; `<home>/bots/<name>/` holds its state, journal
and heartbeat (pipeline/bots/store.py: exactly once across kills). One thread reads every
bot's subscription and one group-commits their states (pipeline/runtime/botloop.py), so fifty
bots cost one reader, not fifty threads waking per line.

Bars: the fill needs the open of the first bar opening at or after the signal's close_time,
and stops need each bar's high and low. The process follows each venue's live 1m kline stream
(the Exchange protocol the fast lane uses) for the bots' markets and, on start and after any
hole, asks the venue's REST for the closed candles since a market's last processed bar. We
chose the venue over the warehouse replica: a bar is known the moment the exchange confirms
it (the replica trails by the pipeline's ingest and sync), the bots never hold the replica
open (which would make every pipeline write copy it), and it is the same candle the warehouse
stores (a later revision is what reconciliation calls "candle revised").
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from pipeline.bots.config import bot_markets
from pipeline.bots.store import BotStore
from pipeline.bots.trader import Bar, Trader
from pipeline.candles.timeframes import MINUTE_US, from_us, to_us
from pipeline.config import Settings
from pipeline.runtime.botloop import Committer, Feed, Runner, serve

log = logging.getLogger("signalbox.bots")
HEARTBEAT_S = 1.0
SWITCH_S = 0.0005
NICE = 5  # scheduling priority below the sidecar's (bench/bench_bots.py: other subscribers)


def runners(settings: Settings) -> list[Runner]:
    """Every configured bot, resumed from its committed state (or new)."""
    from pipeline.bots.wal import recover

    recover(settings.home)  # the last passes' states, before any bot loads its own
    out = []
    markets = settings.markets
    for cfg in settings.bots:
        trader = Trader(
            cfg, cfg.backtest_params(settings.backtest.params), bot_markets(cfg, markets)
        )
        store = BotStore(settings.home, cfg.name)
        state = store.load()
        if state is None:
            state = trader.new_state()
        for m in trader.markets:  # a market added to the bot's list since
            state.slots.setdefault(m, trader.new_state().slots[m])
        out.append(Runner(cfg, trader, store, state))
    return out


def follow(
    settings: Settings, rs: list[Runner], committer: Committer, stop: threading.Event
) -> None:
    """Every bot's sidecar subscription on this thread, until `stop`."""
    from pipeline.sidecar.client import server_status

    new = [r for r in rs if r.state.last_seq is None]
    while new and not stop.is_set():  # first start: from now on (the history is old news)
        status = server_status(settings.socket_path, timeout=2)
        if status is not None:
            for r in new:
                r.reset_seq(int(status.get("seq", 0)))
            committer.kick()
            break
        stop.wait(0.5)
    serve(settings, [Feed(settings, r, r.state.last_seq) for r in rs], committer, stop)


class Bars:
    """Closed 1m candles of the bots' markets, from each venue's stream, holes filled by REST."""

    def __init__(self, settings: Settings, rs: list[Runner], committer: Committer) -> None:
        from pipeline.runtime.processes import decided_endpoint

        self.settings, self.runners, self.committer = settings, rs, committer
        self.endpoint = decided_endpoint(settings)
        self.by_market: dict[str, list[Runner]] = {}
        for r in rs:
            for m in r.trader.markets:
                self.by_market.setdefault(m, []).append(r)
        self.seen: dict[str, int] = {}  # newest open_time (us) fed per market
        self.locks = {m: threading.Lock() for m in self.by_market}
        self.streams: list[Any] = []
        self.clients: dict[str, Any] = {}

    def start(self) -> None:
        from pipeline.exchanges import client

        venues: dict[str, list[str]] = {}
        for m in self.by_market:
            venue, _, symbol = m.partition(":")
            venues.setdefault(venue, []).append(symbol)
        for venue, symbols in venues.items():
            c = self.clients[venue] = client(venue, self.settings, self.endpoint)
            now = c.server_time()
            for s in symbols:
                self._start_at(f"{venue}:{s}", now)
                self._fill(f"{venue}:{s}", now)
            self.streams.append(c.stream(symbols, lambda k, v=venue: self._candle(v, k)))

    def _start_at(self, market: str, now: dt.datetime) -> None:
        """Where a market's bars begin: after the oldest last bar of its bots; a new bot's
        market at the current minute."""
        lasts = [r.state.slots[market].last_bar_us for r in self.by_market[market]]
        known = [x for x in lasts if x is not None]
        if known and len(known) == len(lasts):
            self.seen[market] = min(known)
        else:
            cur = to_us(now) // MINUTE_US * MINUTE_US
            self.seen[market] = min([cur - MINUTE_US, *known])
            for r in self.by_market[market]:
                with r.lock:
                    slot = r.state.slots[market]
                    if slot.last_bar_us is None:
                        slot.last_bar_us = cur - MINUTE_US

    def _fill(self, market: str, until: dt.datetime) -> None:
        """The closed candles after the last one fed, up to `until`, from REST."""
        venue, _, symbol = market.partition(":")
        start = from_us(self.seen[market] + MINUTE_US)
        if start >= until:
            return
        frame = self.clients[venue].fetch_klines(symbol, start, until)
        for row in frame.iter_rows(named=True):
            self._feed(
                Bar(
                    market,
                    to_us(row["open_time"]),
                    row["open"],
                    row["high"],
                    row["low"],
                    row["close"],
                )
            )

    def _candle(self, venue: str, k: Any) -> None:
        try:
            self._on_candle(venue, k)
        except Exception:
            log.exception("%s:%s: a bar could not be processed", venue, k.symbol)

    def _on_candle(self, venue: str, k: Any) -> None:
        market = f"{venue}:{k.symbol}"
        if market not in self.locks:
            return
        with self.locks[market]:
            t = to_us(k.open_time)
            if t > self.seen[market] + MINUTE_US:  # a hole (a reconnect): REST first
                try:
                    self._fill(market, k.open_time)
                except Exception as err:
                    log.warning("%s: cannot fill the bars before %s (%s)", market, k.open_time, err)
            self._feed(Bar(market, t, k.open, k.high, k.low, k.close))

    def _feed(self, bar: Bar) -> None:
        """To every bot of the market (each skips what it has processed already)."""
        self.seen[bar.market] = max(self.seen[bar.market], bar.open_us)
        for r in self.by_market[bar.market]:
            self.committer.idle.wait()  # between the reader's rounds
            r.on_bar(bar)
        self.committer.kick()

    def close(self) -> None:
        for s in self.streams:
            s.close()
        for c in self.clients.values():
            c.close()


def caught_up(settings: Settings, rs: list[Runner], stop: threading.Event, wait_s: float) -> None:
    """Until every bot has handled the signals the sidecar already holds (what came while
    the bots were down), so their orders are recorded before the bars they fill on arrive."""
    from pipeline.sidecar.client import server_status

    status = server_status(settings.socket_path, timeout=2)
    if status is None:
        return
    seq = int(status.get("seq", 0))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not stop.is_set():
        if all(r.state.last_seq is not None and r.state.last_seq >= seq for r in rs if r.alive):
            return
        stop.wait(0.05)


def heartbeats(rs: list[Runner], committer: Committer, stop: threading.Event) -> None:
    while not stop.is_set():
        for r in rs:
            if r.alive:
                committer.idle.wait()  # between the reader's rounds
                r.store.beat()
        stop.wait(HEARTBEAT_S)


def main(settings: Settings) -> int:
    """Run every configured bot until SIGTERM/SIGINT."""
    from pipeline.runtime.processes import process_logging

    process_logging("bots")
    if not settings.bots:
        log.error("no bots are configured: add a `bots:` section to %s", settings.config_path)
        return 2
    rs = runners(settings)
    settle(rs)
    stop = threading.Event()
    # at the default 5 ms GIL switch interval the reader, with a line in hand, would wait
    # behind the committer serialising states (as in the fast lane, fastlane.SWITCH_S)
    sys.setswitchinterval(SWITCH_S)

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, _stop)
    for r in rs:
        log.info(
            "bot %s: %s on %s, equity %.2f, last seq %s%s",
            r.cfg.name,
            r.cfg.personality,
            ", ".join(r.trader.markets),
            r.state.equity,
            r.state.last_seq,
            f", HALTED: {r.state.why}" if r.state.halted else "",
        )
    committer = Committer(settings.home)
    for r in rs:
        r.committer = committer
    reader = threading.Thread(
        target=_guard, args=(settings, rs, committer, stop), name="signals", daemon=True
    )
    reader.start()
    # the rest yields the CPU to the sidecar and the lanes it serves: niceness is per thread
    # on Linux and inherited by the threads this one starts (the committer's fsync pool, the
    # bars' streams); the reader keeps the sidecar's, its work per line is the few ms of
    # recording each bot's order that the latency target is about
    os.nice(NICE)
    committer.start()
    threading.Thread(target=heartbeats, args=(rs, committer, stop), daemon=True).start()
    caught_up(settings, rs, stop, wait_s=10.0)
    bars = Bars(settings, rs, committer)
    cpu0 = time.process_time()
    try:
        while not stop.is_set():
            try:
                bars.start()
                gc.freeze()  # the venue clients' objects too (no collection: the reader runs)
                log.info("bots: following the bars of %s", ", ".join(bars.by_market))
                cpu0 = time.process_time()
                break
            except Exception as err:  # the exchange not answering yet: try again
                log.warning("cannot follow the bars yet (%s); retrying", err)
                stop.wait(2.0)
        stop.wait()
    finally:
        stop.set()
        reader.join(10)
        bars.close()
        committer.close()  # the last states made durable
        for r in rs:
            with r.lock:
                r.store.close()
    cpu = time.process_time() - cpu0
    for r in rs:
        if r.reaction_s:
            log.info("bot %s: %s", r.cfg.name, reaction_summary(r))
    log.info("bots: %s; %.2f CPU s since following the bars", committer.summary(), cpu)
    log.info("stopped")
    return 0


def settle(rs: list[Runner]) -> None:
    """Before the reader starts: the backtest kernel loaded (its first call reads numba's
    cache, ~10 ms) and every object of the start moved out of the garbage collector's way.
    A full collection walks every tracked object holding the interpreter lock; over the
    ~120k that the imports leave it took 160-270 ms on a loaded 2-core machine, and one in a
    round of signals stalled every bot's order alike (bench/bench_bots.py: median bot's p99 =
    worst bot's). `gc.freeze` leaves them out of every later collection."""
    for r in [r for r in rs if r.trader.markets][:1]:
        market = r.trader.markets[0]
        r.trader.on_bar(r.trader.new_state(), Bar(market, 0, 1.0, 1.0, 1.0, 1.0))
    gc.collect()
    gc.freeze()


def reaction_summary(r: Runner) -> str:
    """The bot's reaction times this run: signal line received -> order recorded / durable."""
    import numpy as np

    rec, dur = np.array(r.reaction_s) * 1000, np.array(r.durable_s) * 1000
    return (
        f"{len(rec)} orders, line received -> order recorded p50 {np.percentile(rec, 50):.3f} "
        f"p99 {np.percentile(rec, 99):.3f} ms, -> durable (fsynced) p50 "
        f"{np.percentile(dur, 50):.3f} p99 {np.percentile(dur, 99):.3f} ms"
    )


def _guard(
    settings: Settings, rs: list[Runner], committer: Committer, stop: threading.Event
) -> None:
    try:
        follow(settings, rs, committer, stop)
    except Exception:
        for r in rs:
            r.alive = False  # no heartbeat any more: `signalbox status` shows them stale
        log.exception("bots: the sidecar subscriptions stopped")

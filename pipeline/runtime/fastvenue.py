"""One venue in the fast lane's process: its live stream, REST fills, and what it publishes.

A `VenueRunner` owns the venue's client, its `VenueLane` (pipeline.fastlane.engine) and ONE
worker thread. Stream callbacks only queue candles, so a slow REST fill never blocks the
WebSocket thread, and every candle is fed by that one thread in arrival order.

- Start: bootstrap the lane from the warehouse replica, subscribe, then fill
  [expected, newest closed] over REST (subscribing first loses nothing in between; a candle
  the fill already fed is then a duplicate the lane ignores).
- A gap (the lane names the missing minutes): fetch them over REST, feed them, then the candle.
- Watchdog: no confirmed candle for `stall_s` seconds of the exchange's clock (asked once
  per `tick_s`) means the stream is dead or stuck: close it, subscribe again (backoff of the
  one retry policy, under tenacity), and fill over REST.
- Silent symbols (a revision, nothing stored yet) are bootstrapped again every
  `rebootstrap_s`: the lane resumes once the replica has moved past the reason.
- The worker takes the candles queued by then, up to `BATCH`, as one batch (`handle_many`):
  the symbols of one close are evaluated together, and their signals go out in one publish.
- Signals are appended to the journal, then published through the outbox (which drops what
  the pipeline published first), each row with `origin: "fast"`; a latency record per batch.
- Each confirmed candle from the stream also goes to `<home>/fastlane/newest.json`
  (pipeline.fastlane.newest), once per closed minute: the live sensor's batch detection.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.exchanges.protocol import ClosedCandle, ExchangeError
from pipeline.fastlane import journal, newest
from pipeline.fastlane.engine import GAP, REVISED, USED
from pipeline.runtime import latency

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.exchanges.protocol import Exchange, Stream
    from warehouse import Warehouse

log = logging.getLogger("signalbox.fast")
MINUTE = dt.timedelta(minutes=1)
ORIGIN = "fast"
# Candles fed as one batch at most: one evaluation pass over many symbols is cheaper than one
# per symbol when several fire at one close (rows are built once per personality), but
# nothing of a batch is published before all of it is computed; ten keeps the first signals
# of a 50-symbol close early and most of the saving.
BATCH = 10
LaneFactory = Callable[["Settings", str, list[str]], Any]  # VenueLane(settings, venue, symbols)
# One replica read at a time in this process: DuckDB shares one database instance per file
# within a process, and a second sealed connection opened while one is open fails.
_REPLICA = threading.Lock()


@dataclass(frozen=True)
class Timing:
    """How the process watches its streams: `stall_s` of exchange clock without a confirmed
    candle before a reconnect; wall seconds between watchdog checks (one server-time request
    each) and between re-bootstraps of silent symbols."""

    stall_s: float = 70.0
    tick_s: float = 5.0
    rebootstrap_s: float = 30.0


class VenueClock:
    """The exchange's clock: asked once per watchdog tick, run forward on our monotonic clock
    in between, and never behind the newest candle close seen (a replay clock may run fast)."""

    def __init__(self, client: Exchange) -> None:
        self.client = client
        self._at: tuple[dt.datetime, float] | None = None
        self.floor = dt.datetime.min.replace(tzinfo=dt.UTC)

    def sync(self) -> dt.datetime:
        now = self.client.server_time()
        self._at = (now, time.monotonic())
        return max(now, self.floor)

    def now(self) -> dt.datetime:
        if self._at is None:
            return self.sync()
        t, mono = self._at
        return max(t + dt.timedelta(seconds=time.monotonic() - mono), self.floor)


def candles_of(frame: Any) -> list[ClosedCandle]:
    """The protocol's candle frame (one symbol, open-time order) as `ClosedCandle`s."""
    cols = ("symbol", "open_time", "open", "high", "low", "close", "volume", "turnover")
    return [ClosedCandle(*row) for row in frame.select(cols).iter_rows()]


class VenueRunner:
    """The fast lane of one venue (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        venue: str,
        symbols: list[str],
        client: Exchange,
        wh: Warehouse,
        lane_factory: LaneFactory,
        timing: Timing,
        stop: threading.Event,
    ) -> None:
        self.settings, self.venue, self.symbols = settings, venue, list(symbols)
        self.client, self.wh, self.timing, self.stop = client, wh, timing, stop
        self.lane = lane_factory(settings, venue, self.symbols)
        self.clock = VenueClock(client)
        self.queue: queue.SimpleQueue[tuple[ClosedCandle, float] | None] = queue.SimpleQueue()
        self.stream: Stream | None = None
        self.quiet_since: dt.datetime | None = None  # exchange time of the last sign of life
        self.unbooted: set[str] = set(self.symbols)
        self.told_silent: dict[str, str] = {}
        self.newest = newest.Writer(settings.home, venue, self.symbols)
        self.reconnects = 0
        self.published = 0
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name=f"fast-{venue}", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        """Make the worker look at `stop` now."""
        self.queue.put(None)

    def _main(self) -> None:
        try:
            self.run()
        except BaseException as err:  # the process exits non-zero and `up` restarts it
            log.exception("%s: the fast lane failed: %s", self.venue, err)
            self.failure = err
            self.stop.set()
        finally:
            self._close_stream()
            self.client.close()

    def run(self) -> None:
        self._bootstrap(self.symbols)
        if not self._connect():
            return
        self._guarded(self._catch_up, self.symbols)
        next_tick = next_boot = time.monotonic()
        next_tick += self.timing.tick_s
        next_boot += self.timing.rebootstrap_s
        while not self.stop.is_set():
            wait = max(min(next_tick, next_boot) - time.monotonic(), 0.0)
            try:
                item = self.queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is not None:
                self._guarded(self.handle_many, [item, *self._queued(BATCH - 1)])
            self._guarded(self.newest.tick, self.clock.now)
            if self.stop.is_set():
                break
            if time.monotonic() >= next_tick:
                self._guarded(self._watchdog)
                next_tick = time.monotonic() + self.timing.tick_s
            if time.monotonic() >= next_boot:
                self._guarded(self._rebootstrap)
                next_boot = time.monotonic() + self.timing.rebootstrap_s

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> None:
        """An exchange or warehouse failure is logged and retried later (a gap is detected
        again on the next candle, the watchdog asks again); anything else is a bug."""
        from warehouse import WarehouseBusy

        try:
            fn(*args)
        except (ExchangeError, WarehouseBusy, OSError) as err:
            log.warning("%s: %s: %s (will try again)", self.venue, type(err).__name__, err)

    def _queued(self, most: int) -> list[tuple[ClosedCandle, float]]:
        """Up to `most` candles waiting in the queue now (a `wake` among them is dropped: the
        loop looks at `stop` after each batch anyway)."""
        out: list[tuple[ClosedCandle, float]] = []
        while len(out) < most:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return out
            if item is not None:
                out.append(item)
        return out

    # -- the stream ----------------------------------------------------------------------
    def _on_candle(self, candle: ClosedCandle) -> None:
        self.queue.put((candle, time.time()))

    def _connect(self) -> bool:
        """Subscribe (retrying with the policy's backoff until it works or we stop)."""
        from tenacity import Retrying, retry_if_exception_type

        from pipeline.exchanges.retry import Policy, backoff

        policy = Policy(backoff_s=1.0, backoff_cap_s=30.0)

        def retrying(rs: Any) -> None:
            err = rs.outcome.exception()
            log.warning("%s: cannot subscribe (%s); trying again", self.venue, err)

        try:
            self.stream = Retrying(
                retry=retry_if_exception_type(ExchangeError),
                stop=lambda rs: self.stop.is_set(),
                wait=lambda rs: backoff(policy, rs.attempt_number),
                sleep=self.stop.wait,
                before_sleep=retrying,
                reraise=True,
            )(self.client.stream, self.symbols, self._on_candle)
        except ExchangeError:
            return False  # asked to stop while retrying
        self.quiet_since = None  # the watchdog counts from its next look at the clock
        log.info("%s: connected, %s", self.venue, ", ".join(self.symbols))
        return True

    def _close_stream(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception as err:  # a dead connection may fail to close: it is gone anyway
                log.debug("%s: closing the stream: %s", self.venue, err)

    def _watchdog(self) -> None:
        now = self.clock.sync()
        if self.quiet_since is None:
            self.quiet_since = now
        quiet = now - self.quiet_since
        if quiet.total_seconds() <= self.timing.stall_s:
            return
        self.reconnects += 1
        log.warning(
            "%s: reconnect: no confirmed candle for %.0f s of exchange clock",
            self.venue,
            quiet.total_seconds(),
        )
        self._close_stream()
        if self._connect():
            self._guarded(self._catch_up, self.symbols)

    # -- feeding -------------------------------------------------------------------------
    def handle(self, candle: ClosedCandle, received: float | None = None, via: str = "ws") -> None:
        """Feed one candle from the stream: fill a gap first, publish what it produced."""
        self._seen(candle, via)
        fed = self.lane.feed(candle)
        if fed.status == GAP and fed.missing:
            start, end = fed.missing
            n = self._fill(candle.symbol, start, end)
            log.info("%s: gap filled %d minute(s) of %s over REST", self.venue, n, candle.symbol)
            fed = self.lane.feed(candle)
        self._tell(candle.symbol, fed)
        if fed.status == USED and fed.signals:
            self._publish(fed.signals, candle.open_time + MINUTE, received, via)
        if via == "ws":
            self.newest.saw(candle.symbol, candle.open_time, self.clock.now())

    def handle_many(self, items: list[tuple[ClosedCandle, float]]) -> None:
        """Feed stream candles as one batch (the symbols of one close evaluated together:
        `VenueLane.feed_many`) and publish its signals per close; a candle after a gap goes
        through `handle`."""
        for candle, _ in items:
            self._seen(candle, "ws")
        feds = self.lane.feed_many([c for c, _ in items])
        ready: dict[dt.datetime, tuple[list[dict[str, Any]], float]] = {}
        seen = []
        for (candle, received), fed in zip(items, feds, strict=True):
            if fed.status == GAP:  # fed again there, after the REST fill
                self.handle(candle, received)
                continue
            seen.append(candle)
            self._tell(candle.symbol, fed)
            if fed.status == USED and fed.signals:
                rows, at = ready.get(candle.open_time + MINUTE, ([], received))
                ready[candle.open_time + MINUTE] = (rows + fed.signals, max(at, received))
        for close, (rows, received) in ready.items():
            self._publish(rows, close, received, "ws")
        for candle in seen:  # after publishing: the record adds nothing to the lane's latency
            self.newest.saw(candle.symbol, candle.open_time, self.clock.now())

    def _seen(self, candle: ClosedCandle, via: str) -> None:
        """A stream candle is a sign of life, and the exchange clock is past its close."""
        close = candle.open_time + MINUTE
        if via == "ws":
            self.quiet_since = max(self.quiet_since or close, close)
            self.clock.floor = max(self.clock.floor, close)

    def _tell(self, symbol: str, fed: Any) -> None:
        if fed.status == REVISED:
            log.warning("%s: %s silent because %s", self.venue, symbol, fed.note or "revised")
            self.told_silent[symbol] = fed.note
        elif fed.status == GAP:
            log.warning("%s: %s still has a gap after the REST fill: %s", self.venue, symbol, fed)

    def _fill(self, symbol: str, start: dt.datetime, end: dt.datetime) -> int:
        """Fetch [start, end) over REST and feed it in order; publish what it produced."""
        now = self.clock.sync()
        frame = self.client.fetch_klines(symbol, start, min(end, now), closed_by=now)
        rows: list[dict[str, Any]] = []
        n, last = 0, None
        for c in candles_of(frame):
            fed = self.lane.feed(c)
            self._tell(symbol, fed)
            if fed.status == GAP and fed.missing:
                # The venue has no candle for these minutes: the pipeline records them as
                # confirmed gaps, so the symbol stays silent until the replica knows them.
                self.lane.absent(symbol, *fed.missing)
                log.warning(
                    "%s: %s silent: no candle at the venue for %s to %s", self.venue, symbol,
                    f"{fed.missing[0]:%H:%M}", f"{fed.missing[1]:%H:%M}",
                )  # fmt: skip
                break
            n += fed.status == USED
            rows += fed.signals if fed.status == USED else []
            last = c.open_time + MINUTE
        if rows and last is not None:
            self._publish(rows, last, None, "rest")
        return n

    def _catch_up(self, symbols: list[str]) -> None:
        """Fill each symbol from the minute its lane expects to the newest closed one."""
        now = self.clock.sync()
        for symbol in symbols:
            expected = self.lane.expected(symbol)
            if expected is not None and expected + MINUTE <= now:
                n = self._fill(symbol, expected, now)
                log.info("%s: %s caught up %d minute(s) over REST", self.venue, symbol, n)

    def _publish(
        self, rows: list[dict[str, Any]], close: dt.datetime, received: float | None, via: str
    ) -> None:
        """Journal first (the parity check sees everything computed), then the outbox."""
        from pipeline.sidecar.outbox import publish

        rows = [{**r, "origin": ORIGIN} for r in rows]
        journal.append(self.settings.home, rows)
        started = time.time()
        seqs = publish(self.settings, rows, now=self.clock.now())
        done = time.time()
        self.published += len(seqs)
        latency.record(
            self.settings.home, stage="fast", exchange=self.venue, via=via,
            close=close.timestamp(), confirm_at=received, publish_started_at=started,
            published_at=done, signals=len(rows), published=len(seqs),
        )  # fmt: skip
        log.info(
            "%s: published %d of %d signal(s) up to %s (%s)",
            self.venue, len(seqs), len(rows), close.strftime("%H:%M"), via,
        )  # fmt: skip

    # -- silent symbols ------------------------------------------------------------------
    def _bootstrap(self, symbols: list[str]) -> None:
        try:
            with _REPLICA:
                expected = self.lane.bootstrap(self.wh, symbols)
        except Exception as err:  # no replica yet, or it is busy: silent, asked again later
            from warehouse import WarehouseBusy
            from warehouse.store import NoWarehouse

            if not isinstance(err, WarehouseBusy | NoWarehouse | OSError):
                raise
            log.warning("%s: cannot read the replica yet (%s); silent for now", self.venue, err)
            self.unbooted.update(symbols)
            return
        self.unbooted.difference_update(symbols)
        silent = self.lane.silent()
        for symbol in symbols:
            why = silent.get(symbol) or ("nothing stored" if expected.get(symbol) is None else "")
            if why and self.told_silent.get(symbol) != why:
                log.warning("%s: %s silent because %s", self.venue, symbol, why)
            elif not why and symbol in self.told_silent:
                log.info("%s: %s resumed from the replica", self.venue, symbol)
            if why:
                self.told_silent[symbol] = why
            else:
                self.told_silent.pop(symbol, None)

    def _rebootstrap(self) -> None:
        todo = set(self.lane.silent()) | self.unbooted
        todo |= {s for s in self.symbols if self.lane.expected(s) is None}
        if not todo:
            return
        symbols = [s for s in self.symbols if s in todo]
        self._bootstrap(symbols)
        self._catch_up([s for s in symbols if self.lane.expected(s) is not None])

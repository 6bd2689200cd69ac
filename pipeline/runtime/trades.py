"""`signalbox trades`: the trade collector, an always-on process beside the pipeline.

It follows each venue's public trade stream (Bybit's `publicTrade.<SYMBOL>`, through
pipeline/exchanges/bybit_trades.py), closes every covered minute (pipeline/orderflow/collect.py)
and journals it (pipeline/orderflow/journal.py) for the `order_flow_1m` asset: only Dagster
runs write DuckDB. A venue without a trade stream (Hyperliquid, for now) is named once in the
log and has no coverage: its markets have no order flow, never zero.

`signalbox up` starts and supervises it (its log: `<home>/logs/trades.log`); the exchange is
the one `up` decided and handed over (`$SIGNALBOX_ENDPOINT`), else the home's recorded source.
SIGTERM or Ctrl-C closes the streams.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.exchanges.protocol import Endpoint, Exchange

log = logging.getLogger("signalbox.trades")
TICK_S = 0.25  # how often closed minutes are looked for
SYNC_S = 5.0  # how often the exchange clock is asked
TRADE_VENUES = ("bybit",)  # venues with a trade stream


class VenueTrades:
    """One venue's trade stream, its minute collector and its journal."""

    def __init__(
        self, settings: Settings, venue: str, symbols: list[str], client: Exchange, **kw: Any
    ) -> None:
        from pipeline.exchanges.bybit_trades import qty_steps
        from pipeline.orderflow.collect import MinuteCollector
        from pipeline.runtime.fastvenue import VenueClock

        self.home, self.venue, self.symbols, self.client = settings.home, venue, symbols, client
        steps = qty_steps(client, symbols)  # type: ignore[arg-type]
        unknown = [s for s, step in steps.items() if step is None]
        if unknown:
            log.warning(
                "%s lists no qty step for %s: their minutes cannot be checked", venue, unknown
            )
        self.collector = MinuteCollector(symbols, steps, **kw)
        self.clock = VenueClock(client)
        self.connections = 0
        self.journaled = 0
        self._synced = 0.0
        self._marked: int | None = None
        self.stream: Any = None

    def start(self) -> VenueTrades:
        from pipeline.exchanges.bybit_trades import trade_stream

        self.stream = trade_stream(
            self.client,  # type: ignore[arg-type]
            self.symbols,
            self.collector.add,
            self._connected,
        )
        return self

    def _connected(self) -> None:
        self.connections += 1
        if self.connections > 1:
            log.warning("%s: trade stream reconnected; coverage restarts", self.venue)
        self.collector.interrupted()

    def tick(self) -> int:
        """Journal the minutes closed by now; how many."""
        from pipeline.orderflow import journal
        from pipeline.orderflow.live import write_mark

        mono = time.monotonic()
        now = self.clock.sync() if mono - self._synced >= SYNC_S else self.clock.now()
        if mono - self._synced >= SYNC_S:
            self._synced = mono
        rows = self.collector.close(int(now.timestamp() * 1000))
        if rows:
            journal.append(self.home, self.venue, rows)
            self.journaled += len(rows)
        through = self.collector.closed_through()
        if through is not None and (rows or through != self._marked):
            write_mark(self.home, self.venue, through)  # after the journal: runs wait on it
            self._marked = through
        return len(rows)

    def stop(self) -> None:
        if self.stream is not None:
            self.stream.close()


def venues(settings: Settings, endpoint: Endpoint, **kw: Any) -> list[VenueTrades]:
    """A collector per configured venue that has a trade stream."""
    from pipeline.exchanges import client
    from pipeline.markets import by_venue

    out = []
    for venue, symbols in by_venue(settings.markets).items():
        if venue not in TRADE_VENUES:
            log.info("%s has no trade stream here: its markets have no order flow", venue)
            continue
        out.append(VenueTrades(settings, venue, symbols, client(venue, settings, endpoint), **kw))
    return out


def main(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT (0); 1 when a stream cannot be opened (`up` restarts us)."""
    from pipeline.exchanges.protocol import ExchangeError
    from pipeline.runtime.processes import decided_endpoint, process_logging

    process_logging("trades")
    endpoint = decided_endpoint(settings)
    signalled: list[int] = []  # only a flag in the handler (see pipeline/runtime/fastlane.py)
    previous = {
        s: signal.signal(s, lambda signum, _frame: signalled.append(signum))
        for s in (signal.SIGTERM, signal.SIGINT)
    }
    running: list[VenueTrades] = []
    try:
        for v in venues(settings, endpoint):
            running.append(v.start())
            log.info(
                "following %d trade stream(s) of %s at %s", len(v.symbols), v.venue, endpoint.label
            )
        while not signalled:
            time.sleep(TICK_S)
            for v in running:
                v.tick()
    except ExchangeError as err:
        log.error("%s", err)
        return 1
    finally:
        for v in running:
            v.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    log.info("stopped (%d minute(s) journaled)", sum(v.journaled for v in running))
    return 0

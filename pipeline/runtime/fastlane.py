"""`signalbox fast`: the fast lane, an always-on process beside the Dagster pipeline.

It follows every configured venue's live 1m stream and publishes each closed minute's signals
through the outbox the moment the candle is confirmed (pipeline.runtime.fastvenue: one
`VenueRunner` and worker thread per venue), computed by pipeline.fastlane.engine from the
warehouse replica's data. The pipeline stays the system of record: whichever lane publishes a
signal first, the outbox drops the other's copy, and what the fast lane computed is journaled
for the `signals` asset's parity check.

`signalbox up` starts and supervises it (its log: `<home>/logs/fast.log`); the exchange is the
one `up` decided and handed over (`$SIGNALBOX_ENDPOINT`), else the home's recorded source.
SIGTERM or Ctrl-C closes the streams and ends every thread it started.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING

from pipeline.runtime.fastvenue import LaneFactory, Timing, VenueRunner

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.exchanges.protocol import Endpoint

log = logging.getLogger("signalbox.fast")
WAKE_S = 1.0  # how often the main thread looks for a signal (it only waits meanwhile)


def _engine() -> LaneFactory:
    from pipeline.fastlane.engine import VenueLane

    return VenueLane


class FastLane:
    """Every venue's runner, started and stopped together; one failing stops them all."""

    def __init__(
        self,
        settings: Settings,
        endpoint: Endpoint,
        lane_factory: LaneFactory | None = None,
        timing: Timing | None = None,
    ) -> None:
        from pipeline.exchanges import client
        from pipeline.exchanges.sources import warehouse_for
        from pipeline.markets import by_venue

        self.stop_event = threading.Event()
        wh = warehouse_for(settings, endpoint)
        factory, timing = lane_factory or _engine(), timing or Timing()
        self.runners = []
        for venue, symbols in by_venue(settings.markets).items():
            c = client(venue, settings, endpoint)
            self.runners.append(
                VenueRunner(settings, venue, symbols, c, wh, factory, timing, self.stop_event)
            )

    def start(self) -> FastLane:
        for r in self.runners:
            r.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every runner and wait for its thread (which closes its stream)."""
        self.stop_event.set()
        for r in self.runners:
            r.wake()
        for r in self.runners:
            r.thread.join(timeout)

    @property
    def failed(self) -> bool:
        return any(r.failure is not None for r in self.runners)


SWITCH_S = 0.0005


def main(
    settings: Settings, lane_factory: LaneFactory | None = None, timing: Timing | None = None
) -> int:
    """Run until SIGTERM/SIGINT (0) or until a runner fails (1: `up` restarts us)."""
    from pipeline.runtime.processes import decided_endpoint, process_logging

    process_logging("fast")
    # The stream threads take each confirm while a worker computes: at Python's default 5 ms
    # a thread waiting for the GIL waits up to that long per message, so 50 symbols' confirms
    # of one close would trickle in over ~250 ms behind the worker's compute.
    sys.setswitchinterval(SWITCH_S)
    endpoint = decided_endpoint(settings)
    lane = FastLane(settings, endpoint, lane_factory, timing)

    signalled: list[int] = []

    def _stop(signum: int, frame: object) -> None:
        signalled.append(signum)  # only a flag: the Event's lock may be held right here

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    venues = ", ".join(f"{r.venue} ({len(r.symbols)})" for r in lane.runners)
    log.info("starting: %s at %s (%s)", venues, endpoint.label, endpoint.rest_url)
    try:
        lane.start()
        while not signalled and not lane.stop_event.wait(WAKE_S):
            pass
    finally:
        lane.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    left = [r.thread.name for r in lane.runners if r.thread.is_alive()]
    published = sum(r.published for r in lane.runners)
    log.info("stopped (%d signal(s) published)%s", published, f"; left: {left}" if left else "")
    return 1 if lane.failed else 0

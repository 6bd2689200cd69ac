"""The replay exchange as an object: its server on a background thread, plus the controls.

For tests and in-process use; `signalbox replay` runs the same server in the foreground.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

from pipeline.replay.clock import ExchangeClock, to_ms
from pipeline.replay.data import make_source
from pipeline.replay.faults import Faults
from pipeline.replay.market import Market
from pipeline.replay.ratelimit import DEFAULT_LIMIT, DEFAULT_WINDOW_S, RateLimit
from pipeline.replay.server import ReplayServer


class ReplayExchange:
    """The replay exchange on a background thread: for tests and in-process use.

    with ReplayExchange(seed=7, clock=ExchangeClock("2024-01-01T23:57Z", 60)) as ex:
        HTTP().endpoint = ex.rest_url ...
    """

    def __init__(
        self,
        seed: int = 7,
        data: str | Path | None = None,
        faults: float = 0.0,
        clock: ExchangeClock | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        symbols: list[str] | None = None,
        fault_kinds: list[str] | None = None,
        long_delay_s: float = 3.0,
        ws_push_s: float = 2.0,
        rate_limit: int = DEFAULT_LIMIT,
        rate_window_s: float = DEFAULT_WINDOW_S,
    ) -> None:
        self.clock = clock or ExchangeClock()
        self.market = Market(make_source(seed, data, symbols))
        self.faults = Faults(seed, faults, fault_kinds, long_delay_s=long_delay_s)
        self.limits = RateLimit(rate_limit, rate_window_s)
        self.server = ReplayServer(
            self.market, self.clock, self.faults, host, port, ws_push_s, self.limits
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> ReplayExchange:
        """Serve on a background thread; returns once listening (a restart keeps the port)."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.server.start())
            except BaseException as err:
                failure.append(err)
                loop.close()
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.server.close())
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="replay-exchange", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._thread = None

    def __enter__(self) -> ReplayExchange:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.server.port

    @property
    def rest_url(self) -> str:
        return self.server.rest_url

    @property
    def ws_url(self) -> str:
        """The linear public stream, ws://127.0.0.1:PORT/v5/public/linear."""
        return self.server.ws_url

    @property
    def pybit_public_wss(self) -> str:
        """Value for `pybit.unified_trading.PUBLIC_WSS` (keeps pybit's {CHANNEL_TYPE})."""
        return f"ws://{self.server.host}:{self.port}/v5/public/{{CHANNEL_TYPE}}"

    # -- control (the same as the /_replay endpoints) ------------------------------------
    def now(self) -> dt.datetime:
        return self.clock.now()

    def set_clock(
        self, now: dt.datetime | str | int | None = None, speed: float | None = None
    ) -> None:
        self.clock.set(now, speed)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def set_faults(self, **kwargs: Any) -> dict[str, Any]:
        """rate, kinds, duration_s, count, long_delay_s, delay_s (see faults.Faults.configure)."""
        return self.faults.configure(**kwargs)

    def set_rate_limit(self, limit: int, window_s: float | None = None) -> dict[str, Any]:
        """Requests per window per client IP and endpoint of the Bybit face (0: off)."""
        return self.limits.configure(limit, window_s)

    def clear_faults(self) -> dict[str, Any]:
        return self.faults.clear()

    def revise(self, symbol: str, open_time: dt.datetime | str | int, **values: float) -> list[str]:
        """Late revision of a closed 1m candle; returns its new wire row."""
        row = self.market.revise(symbol, to_ms(open_time), values, self.clock.now_ms())
        return json.loads(row[0])

    def drop_streams(self) -> int:
        """Cut every WebSocket connection now (a network drop mid-minute); how many."""
        if self._loop is None or self._thread is None:
            return 0

        async def drop() -> int:
            return self.server.drop_streams()

        return asyncio.run_coroutine_threadsafe(drop(), self._loop).result(5)

    def stats(self) -> dict[str, Any]:
        return self.server.stats_dict()

    def reset_stats(self) -> None:
        self.server.stats.clear()
        self.faults.counts.clear()

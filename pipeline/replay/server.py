"""The replay exchange's server: every venue's face (Bybit v5 REST and public WebSocket,
Hyperliquid's /info and /ws) on one loopback port.

A small asyncio HTTP/1.1 server (keep-alive, request bodies for the admin endpoints, and
exact control over broken responses for fault injection) that hands WebSocket upgrades to
`ws.WsSession`. Routes:

    GET  /v5/market/kline           Bybit kline (see market.py for start/end/limit semantics)
    GET  /v5/market/time            the exchange clock
    GET  /v5/market/instruments-info  the listed symbols, cursor-paged (instruments.py)
    GET  /v5/market/tickers         lastPrice and a seeded turnover24h per symbol
    GET  /v5/market/funding/history, /v5/market/open-interest  the market context
                                    (context_face.py); kline with category=spot: the spot
                                    leg (context.SpotSource)
    WS   /v5/public/{linear,spot,inverse,option}
    POST /info                      Hyperliquid meta, spotMeta, candleSnapshot
    WS   /ws                        Hyperliquid candle channel (hyperliquid_face.py)
    GET  /_replay/health            {"ok": true, ...}
    GET|POST /_replay/faults        {"rate", "kinds", "duration_s", "count", "long_delay_s",
                                     "delay_s", "clear"} -> the fault plan (faults.py)
    POST /_replay/revise            {"symbol", "open_time" (ms or ISO), "open"...} late revision
    GET|POST /_replay/clock         {"now" (ms or ISO), "speed", "advance_s"} -> clock state
    GET|POST /_replay/stats         request counts by path and fault kind; {"reset": true}
    GET|POST /_replay/limits        {"limit", "window_s"}: the Bybit face's rate limit

Faults (faults.py) draw from one plan for every market request of every face. The Bybit face
counts requests per client IP and endpoint against its rate limit (ratelimit.py): every
answer carries Bybit's X-Bapi-Limit headers, and a request beyond the limit gets retCode 10006.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pipeline.candles.timeframes import MINUTE_MS
from pipeline.replay import bybit_face, hyperliquid_face, wire
from pipeline.replay.clock import ExchangeClock, to_ms
from pipeline.replay.context import SpotSource
from pipeline.replay.data import FileSource, Source, make_source
from pipeline.replay.faults import Fault, Faults
from pipeline.replay.http import Reply, http_date, json_reply, parse_head
from pipeline.replay.hyperliquid_ws import HlWsSession
from pipeline.replay.market import Market, MarketError
from pipeline.replay.ratelimit import RateLimit
from pipeline.replay.ws import CHANNELS, WsSession

MAX_HEAD = 64 * 1024


class ReplayServer:
    """The asyncio server; `start()` inside a running loop, `close()` to stop."""

    def __init__(
        self,
        market: Market,
        clock: ExchangeClock,
        faults: Faults,
        host: str = "127.0.0.1",
        port: int = 0,
        ws_push_s: float = 2.0,
        limits: RateLimit | None = None,
    ) -> None:
        self.market, self.clock, self.faults = market, clock, faults
        self.limits = limits or RateLimit()
        self.coins = Market(hyperliquid_face.CoinSource(market.source))  # Hyperliquid's face
        seed = int(getattr(market.source, "seed", 0))
        self.spot = Market(SpotSource(market.source, seed))  # Bybit's category=spot
        self.host, self.port = host, port
        self.ws_push_s = ws_push_s
        self.stats: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._sessions: set[WsSession] = set()
        self._pusher: asyncio.Task[None] | None = None

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v5/public/linear"

    async def start(self) -> None:
        # Import polars (page formatting, ~0.5 s) off the loop now, not inside the first
        # request, where it could outlast a client's timeout.
        threading.Thread(target=importlib.import_module, args=("polars",), daemon=True).start()
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, limit=MAX_HEAD
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._pusher = asyncio.create_task(self._push_loop())

    async def close(self) -> None:
        if self._pusher:
            self._pusher.cancel()
        if self._server:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        if self._server:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _push_loop(self) -> None:
        """Every 50 ms, and just past each minute's close on the exchange clock (a confirm
        goes out at the close, not up to a tick later): first every session's confirms,
        then the forming candles."""
        while True:
            to_close = (MINUTE_MS - self.clock.now_ms() % MINUTE_MS) / 1000 / self.clock.speed
            await asyncio.sleep(min(0.05, to_close + 0.0005))
            for forming in (False, True):
                for session in list(self._sessions):
                    try:
                        session.push_due(forming)
                    except Exception as err:  # never let one session stop the others' pushes
                        print(f"replay: websocket push failed: {err!r}", file=sys.stderr)
                        session.close()

    # -- connections ---------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                method, target, headers = parse_head(head)
                if method is None:
                    writer.write(Reply(400, b"bad request").head(11) + b"bad request")
                    return
                if headers.get("upgrade", "").lower() == "websocket":
                    await self._websocket(target, head, reader, writer)
                    return
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                keep = await self._respond(method, target, body, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _websocket(
        self, target: str, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        path = urlsplit(target).path.rstrip("/")
        channel = path.removeprefix("/v5/public/")
        session: WsSession
        if path == "/ws":
            session = HlWsSession(
                "hyperliquid", reader, writer, self.coins, self.clock, self.ws_push_s, self.stats
            )
        elif path.startswith("/v5/public/") and channel in CHANNELS:
            market = self.spot if channel == "spot" else self.market  # the spot leg's candles
            session = WsSession(
                channel, reader, writer, market, self.clock, self.ws_push_s, self.stats
            )
        else:
            writer.write(Reply(404, b"not found", ctype="text/plain").head() + b"not found")
            return
        self.stats["ws_connections"] += 1
        self._sessions.add(session)
        try:
            await session.run(head)
        finally:
            self._sessions.discard(session)

    async def _respond(
        self, method: str, target: str, body: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        url = urlsplit(target)
        path = url.path.rstrip("/") or "/"
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        self.stats["requests"] += 1
        self.stats[f"path {path}"] += 1
        face: Callable[[Fault | None, int], Reply] | None = None
        if path in bybit_face.PATHS and method == "GET":
            peer = writer.get_extra_info("peername") or ("?",)
            verdict = self.limits.check(str(peer[0]), path)
            if not verdict.allowed:
                self.stats["rate_limited"] += 1
                reply = Reply(200, wire.error_body(10006, "Too many visits!", self.clock.now_ms()))
                reply.headers.update(verdict.headers)
                writer.write(reply.head() + reply.body)
                await writer.drain()
                return True
            face = lambda fault, now: _limited(  # noqa: E731
                bybit_face.reply(path, query, self.market, fault, now, self.spot), verdict.headers
            )
        elif path == "/info" and method == "POST":
            face = lambda fault, now: hyperliquid_face.reply(body, self.coins, fault, now)  # noqa: E731
        if face is not None:
            try:
                return await self._market(face, writer, dated=path == "/info")
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception as err:  # a bug here must not look like a network fault
                traceback.print_exc()
                reply = json_reply(500, {"error": repr(err)})
        elif path in (*bybit_face.PATHS, "/info"):
            reply = Reply(405, b"method not allowed", ctype="text/plain")
        elif path.startswith("/_replay/"):
            reply = self._admin(method, path, query, body)
        else:
            reply = Reply(404, b"not found", ctype="text/plain")
        writer.write(reply.head() + reply.body)
        await writer.drain()
        return True

    # -- exchange endpoints --------------------------------------------------------------
    async def _market(
        self,
        face: Callable[[Fault | None, int], Reply],
        writer: asyncio.StreamWriter,
        dated: bool = False,
    ) -> bool:
        """Answer one market request of any face, with the fault the shared plan draws."""
        fault = self.faults.draw()
        kind = fault.kind if fault else None
        if fault:
            self.faults.record(fault.kind)
            self.stats[f"fault {fault.kind}"] += 1
        if kind == "delay":
            lo, hi = self.faults.delay_s
            await asyncio.sleep(lo + (hi - lo) * fault.p)  # type: ignore[union-attr]
        elif kind == "long_delay":
            await asyncio.sleep(self.faults.long_delay_s)
        if kind == "drop_before":
            writer.close()
            return False
        now = self.clock.now_ms()
        reply = face(fault, now)
        if dated:
            reply.headers["Date"] = http_date(now)
        if writer.is_closing():  # the client gave up during a delay
            return False
        if kind == "drop_mid_body":
            writer.write(reply.head() + reply.body[: max(1, len(reply.body) // 2)])
            writer.close()  # flushes what was written, then FIN: the body stops short
            return False
        if not fault or kind in ("delay", "long_delay"):
            self.stats["ok"] += 1
        writer.write(reply.head() + reply.body)
        await writer.drain()
        return True

    # -- admin ---------------------------------------------------------------------------
    def _admin(self, method: str, path: str, query: dict[str, str], body: bytes) -> Reply:
        try:
            data = json.loads(body) if body.strip() else {}
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            data = {**query, **data} if method == "POST" else dict(query)
            name = path.removeprefix("/_replay/")
            if name == "health":
                src = self.market.source
                return json_reply(
                    200,
                    {
                        "ok": True,
                        "source": src.name,
                        "source_id": src.ident,
                        "label": src.label,
                        "symbols": src.listed(),
                        "coins": self.coins.source.listed(),
                    },
                )
            if name == "faults":
                if method == "POST":
                    return json_reply(200, _configure_faults(self.faults, data))
                return json_reply(200, {**self.faults.state(), "counts": dict(self.faults.counts)})
            if name == "revise" and method == "POST":
                symbol = str(data.pop("symbol", ""))
                open_ms = to_ms(data.pop("open_time"))
                row = self.market.revise(symbol, open_ms, data, self.clock.now_ms())
                return json_reply(200, {"ok": True, "candle": json.loads(row[0])})
            if name == "clock":
                if method == "POST":
                    _set_clock(self.clock, data)
                return json_reply(200, self.clock.state())
            if name == "limits":
                if method == "POST":
                    limit, window = data.get("limit"), data.get("window_s")
                    return json_reply(
                        200,
                        self.limits.configure(
                            None if limit is None else int(limit),
                            None if window is None else float(window),
                        ),
                    )
                return json_reply(200, self.limits.state())
            if name == "stats":
                if method == "POST" and data.get("reset"):
                    self.stats.clear()
                    self.faults.counts.clear()
                return json_reply(200, self.stats_dict())
        except KeyError as err:
            return json_reply(400, {"error": f"missing field {err}"})
        except (ValueError, TypeError, MarketError) as err:
            return json_reply(400, {"error": str(err)})
        return json_reply(404, {"error": f"no admin endpoint {method} {path}"})

    def drop_streams(self) -> int:
        """Cut every WebSocket connection without a close frame, like a network drop (on the
        loop's thread); returns how many were cut."""
        sessions = list(self._sessions)
        for session in sessions:
            session.closed = True
            session.writer.transport.abort()
        return len(sessions)

    def stats_dict(self) -> dict[str, Any]:
        s = dict(self.stats)
        return {
            "requests": s.get("requests", 0),
            "ok": s.get("ok", 0),
            "rate_limited": s.get("rate_limited", 0),
            "ws_connections": s.get("ws_connections", 0),
            "paths": {k[5:]: v for k, v in s.items() if k.startswith("path ")},
            "faults": {k[6:]: v for k, v in s.items() if k.startswith("fault ")},
            "ws_ops": {k[6:]: v for k, v in s.items() if k.startswith("ws_op ")},
        }


def _limited(reply: Reply, headers: dict[str, str]) -> Reply:
    """`reply` with the rate limit's headers (a fault's own 10006 headers win)."""
    reply.headers = {**headers, **reply.headers}
    return reply


def _configure_faults(faults: Faults, data: dict[str, Any]) -> dict[str, Any]:
    if data.get("clear"):
        return faults.clear()
    kinds = data.get("kinds")
    if isinstance(kinds, str):
        kinds = [k for k in kinds.split(",") if k]
    delay = data.get("delay_s")
    return faults.configure(
        rate=None if data.get("rate") is None else float(data["rate"]),
        kinds=kinds,
        duration_s=None if data.get("duration_s") is None else float(data["duration_s"]),
        count=None if data.get("count") is None else int(data["count"]),
        long_delay_s=None if data.get("long_delay_s") is None else float(data["long_delay_s"]),
        delay_s=None if delay is None else (float(delay[0]), float(delay[1])),
    )


def _set_clock(clock: ExchangeClock, data: dict[str, Any]) -> None:
    speed = None if data.get("speed") is None else float(data["speed"])
    if data.get("advance_s") is not None:
        clock.advance(float(data["advance_s"]))
    if data.get("now") is not None or speed is not None:
        clock.set(data.get("now"), speed)


# -- the `signalbox replay` command --------------------------------------------------------
def main(
    host: str = "127.0.0.1",
    port: int = 8765,
    seed: int = 7,
    data: str | None = None,
    faults: float = 0.0,
    clock_start: str | None = None,
    clock_speed: float = 1.0,
    symbols: list[str] | None = None,
    ready: str | None = None,
    rate_limit: tuple[int, float] | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM; prints `REST <url>` and `WS <url>` first, then details.

    With `ready`, also writes `{"rest_url", "ws_url", "hyperliquid_ws_url", "pid"}` there
    (atomically) once listening: how a supervisor learns the URL of a `--port 0` exchange.
    `rate_limit`: (requests, window_s) per client IP and endpoint of the Bybit face (0: off).
    """
    try:
        clock = ExchangeClock(clock_start, clock_speed or 1.0)
        source = make_source(seed, data, symbols)
    except ValueError as err:
        print(f"signalbox replay: {err}", file=sys.stderr)
        return 2
    limits = RateLimit(*rate_limit) if rate_limit else None
    server = ReplayServer(Market(source), clock, Faults(seed, faults), host, port, limits=limits)
    return asyncio.run(_serve(server, source, seed, faults, ready))


async def _serve(
    server: ReplayServer, source: Source, seed: int, faults: float, ready: str | None
) -> int:
    try:
        await server.start()
    except OSError as err:
        print(
            f"signalbox replay: cannot listen on {server.host}:{server.port}: {err.strerror or err}"
            " (is another exchange running? use --port 0 for a free port)",
            file=sys.stderr,
        )
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    what = (
        f"file {source.path} ({source.symbol})"  # type: ignore[attr-defined]
        if isinstance(source, FileSource)
        else f"synthetic market, seed {seed} ({', '.join(source.listed())})"
    )
    clock = server.clock.state()
    if ready:
        from pathlib import Path

        from pipeline import jsonfile

        record = {
            "rest_url": server.rest_url,
            "ws_url": server.ws_url,
            "hyperliquid_ws_url": f"ws://{server.host}:{server.port}/ws",
            "pid": os.getpid(),
        }
        jsonfile.replace(Path(ready), record)
    print(f"REST {server.rest_url}", flush=True)
    print(f"WS {server.ws_url}", flush=True)
    print(
        f"serving {what}; clock {clock['now']} x{clock['speed']:g}; faults {faults:.0%};"
        f" admin {server.rest_url}/_replay/stats. Ctrl-C stops.",
        flush=True,
    )
    await stop.wait()
    await server.close()
    return 0

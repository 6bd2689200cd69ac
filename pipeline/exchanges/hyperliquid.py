"""Hyperliquid market data over the official `hyperliquid-python-sdk`: closed 1m candles.

Requests are the SDK's `Info` (`POST /info`) at the venue's base URL (live:
`hyperliquid.rest_url`; replay: the replay exchange, whose Hyperliquid face answers the same
requests). `Info` is built with an empty meta and spot meta (the pipeline reads perpetuals and
checks coins against its own `meta` request), so constructing it sends nothing; candles come
from the `candleSnapshot` request that `Info.candles_snapshot` sends, posted through
`Info.post` for the same reason,
at most 5000 a request, so `fetch_klines` asks for windows of 5000 minutes; live Hyperliquid
also keeps only the newest 5000 candles of an interval (about 3.5 days of 1m): older windows
would come back empty, which would read as minutes without trades, so the live client refuses
a range that starts before them.

Closed candles without a server-time endpoint: every Hyperliquid response carries an HTTP
`Date` header (whole seconds, the replay's clock on the replay), read through a response hook
on the SDK's requests session. A candle is closed when its close time (open + 1 min) is at or
before the `Date` of the response it came in: the header rounds down, so a forming candle is
never taken for a closed one. `server_time()` is the `Date` of a `meta` request.

Errors map to the protocol's family through the one retry policy (`retry.py`): HTTP 429 is a
rate limit (a `Retry-After` header is honoured), 5xx, timeouts and dropped connections are
retried, a body that is not the documented JSON is `MalformedResponse` (retried a few times),
HTTP 4xx is `InvalidRequest`, and a coin not in the `meta` universe is refused by name before
any candle request.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, Unpack

from pipeline.candles.timeframes import MINUTE_MS
from pipeline.exchanges import retry
from pipeline.exchanges.protocol import ExchangeError, InvalidRequest, MalformedResponse
from pipeline.exchanges.rest import Grid, Page, RestClient, Tuning, iso

if TYPE_CHECKING:
    import polars as pl

    from pipeline.config import Settings
    from pipeline.exchanges.protocol import ClosedCandle, Endpoint, Stream

T = TypeVar("T")

PAGE_LIMIT = 5000
_NO_SPOT: dict[str, list[Any]] = {"universe": [], "tokens": []}
_HINT = "start one with `signalbox replay` or check hyperliquid.rest_url"
_KEYS = ("t", "T", "s", "i", "o", "c", "h", "l", "v")
_GRID = Grid(
    PAGE_LIMIT,
    lambda t: t // MINUTE_MS * MINUTE_MS,
    lambda t, k: t + k * MINUTE_MS,
    lambda opens: opens + MINUTE_MS,
)


class HyperliquidClient(RestClient):
    """Closed 1m candles, the coin list and the clock of a Hyperliquid `/info` endpoint."""

    name: ClassVar[str] = "hyperliquid"
    hint: ClassVar[str] = _HINT

    def __init__(
        self, rest_url: str, *, keeps: int | None = None, **tuning: Unpack[Tuning]
    ) -> None:
        super().__init__(rest_url, **tuning)
        self.keeps = keeps  # the newest candles the venue serves per interval (None: all)
        self.ws_url = self.ws_url.rstrip("/")
        if not self.ws_url.endswith("/ws"):
            raise ExchangeError(f"Hyperliquid's WebSocket URL ends in /ws, not {self.ws_url!r}")
        self._local = threading.local()  # Date of this thread's last response
        self._skew_ms: int | None = None  # server clock - local clock, from the last Date
        self._coins: set[str] | None = None  # the universe, once known

    def _default_ws_url(self) -> str:
        return "ws" + self.rest_url.removeprefix("http") + "/ws"

    # -- the SDK -------------------------------------------------------------------------
    def _open(self, timeout_s: float) -> tuple[Any, Any]:
        from hyperliquid.info import Info

        meta = {"universe": []}  # coins are checked against our own `meta` request
        info = Info(self.rest_url, True, meta, _NO_SPOT, timeout=timeout_s)
        info.session.hooks["response"].append(self._remember_date)
        return info, info.session

    def _remember_date(self, response: Any, *args: Any, **kwargs: Any) -> None:
        raw = response.headers.get("Date")
        try:
            when = email.utils.parsedate_to_datetime(raw) if raw else None
        except (TypeError, ValueError):
            when = None
        self._local.date_ms = None if when is None else int(when.timestamp()) * 1000
        if when is not None:
            self._skew_ms = self._local.date_ms - int(dt.datetime.now(dt.UTC).timestamp() * 1000)

    def _post(
        self,
        what: str,
        payload: dict[str, Any],
        parse: Callable[[Any, int], T],
        *,
        policy: retry.Policy | None = None,
        timeout_s: float | None = None,
    ) -> T:
        """POST /info under the retry policy; `parse(body, date_ms)` validates the answer."""
        timeout_s = timeout_s or self.timeout_s
        info = self._session(timeout_s)

        def attempt() -> T:
            body = self._send(lambda: info.post("/info", payload), what, timeout_s)
            date_ms = getattr(self._local, "date_ms", None)
            if date_ms is None:
                raise MalformedResponse(f"malformed response for {what}: no HTTP Date header")
            return parse(body, date_ms)

        return retry.call(what, attempt, policy or self.policy, url=self.rest_url, hint=_HINT)

    def _send(self, request: Callable[[], Any], what: str, timeout_s: float) -> Any:
        """One SDK request; transient failures become `retry.Transient`."""
        from hyperliquid.utils.error import ClientError, ServerError

        self._local.date_ms = None
        try:
            with self._transport_errors(timeout_s):
                body = request()
        except ClientError as err:
            code, text = err.status_code, str(err.error_message)[:200]
            if code == 429:
                headers = err.header or err.error_data or {}
                raise retry.Transient("rate limited (HTTP 429)", _retry_after(headers)) from None
            raise InvalidRequest(
                f"the exchange rejected {what}: HTTP {code} {text}", code, text
            ) from None
        except ServerError as err:
            raise retry.Transient(f"HTTP {err.status_code}: {str(err.message)[:120]}") from None
        if isinstance(body, dict) and set(body) == {"error"}:  # the SDK's "Could not parse JSON"
            raise MalformedResponse(f"malformed response for {what}: not valid JSON")
        return body

    # -- the protocol --------------------------------------------------------------------
    def fetch_klines(
        self, symbol: str, start: dt.datetime, end: dt.datetime, **kw: Any
    ) -> pl.DataFrame:
        """As the protocol says; on live Hyperliquid, a range reaching past the candles it
        keeps is refused: its empty answer would read as minutes without trades."""
        if self.keeps is not None and (kw.get("interval", "1") == "1"):
            oldest = self.server_time().replace(second=0) - dt.timedelta(minutes=self.keeps - 1)
            if start < oldest:
                raise InvalidRequest(
                    f"live Hyperliquid serves only its newest {self.keeps} 1m candles (from "
                    f"{oldest:%Y-%m-%d %H:%M} UTC on); {symbol} from {start:%Y-%m-%d %H:%M} is "
                    "older, and nothing was stored. Ask for a later start (e.g. set "
                    "live.history_days to 3 or less) or backfill older days from a data file."
                )
        return super().fetch_klines(symbol, start, end, **kw)

    def server_time(self) -> dt.datetime:
        """The `Date` of a `meta` response (whole seconds)."""
        what = f"the server time (Date of /info meta) from {self.rest_url}"
        ms = self._post(what, {"type": "meta", "dex": ""}, lambda body, date: date)
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)

    def instruments(self) -> list[str]:
        """The coins of the perpetuals `meta` universe."""
        what = f"the coin list (/info meta) from {self.rest_url}"
        coins = sorted(self._post(what, {"type": "meta", "dex": ""}, _universe(what)))
        self._coins = set(coins)
        return coins

    def unlisted(self, symbols: list[str]) -> dict[str, str]:
        return _unlisted(symbols, set(self.instruments()))

    def latest_closed_open_time(self, symbol: str) -> dt.datetime | None:
        """The window starts 10 minutes before the server clock as last seen (the first call
        asks `meta` for it) and is open-ended, so a clock that ran ahead is still covered."""
        if self._skew_ms is None:
            self.server_time()
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000) + (self._skew_ms or 0)
        a = now // MINUTE_MS * MINUTE_MS - 10 * MINUTE_MS
        times, _, date_ms = self._page(
            symbol,
            a,
            None,
            policy=self.policy.once(self.probe_timeout_s),
            timeout_s=self.probe_timeout_s,
        )
        closed = times[times + MINUTE_MS <= date_ms]
        return dt.datetime.fromtimestamp(int(closed.max()) / 1000, dt.UTC) if len(closed) else None

    def stream(self, symbols: list[str], on_candle: Callable[[ClosedCandle], None]) -> Stream:
        """The SDK's WebSocket `candle` subscription, one `on_candle` per closed candle."""
        from pipeline.exchanges.hyperliquid_stream import CandleStream

        self._refuse_unknown(symbols)
        base = "http" + self.ws_url.removeprefix("ws").removesuffix("/ws")
        return CandleStream(base, symbols, on_candle, self.policy)

    # -- internals -----------------------------------------------------------------------
    def _pages(self, symbol: str, interval: str) -> tuple[Grid, Callable[[int, int], Page]]:
        if interval != "1":
            raise InvalidRequest(f"Hyperliquid candles here are 1m only, not interval {interval!r}")
        self._refuse_unknown([symbol])
        return _GRID, functools.partial(self._page, symbol)

    def _refuse_unknown(self, symbols: list[str]) -> None:
        """Refuse coins outside the universe (asked once per client) by name."""
        if self._coins is None or not set(symbols) <= self._coins:
            self.instruments()
        assert self._coins is not None
        refused = _unlisted(symbols, self._coins)
        if refused:
            raise InvalidRequest(
                f"{', '.join(refused)} not listed at Hyperliquid ({self.rest_url}): "
                f"{next(iter(refused.values()))}; use its coin names, e.g. BTC, ETH"
            )

    def _page(self, coin: str, a: int, b: int | None, **kw: Any) -> Page:
        """One validated candleSnapshot page [a, b] (open times, ms) and its Date."""
        import numpy as np

        span = f"[{iso(a)}, {'-' if b is None else iso(b)}]"
        what = f"{coin} 1m candles {span} from {self.rest_url}"
        req = {"coin": coin, "interval": "1m", "startTime": a, "endTime": b}
        if b is None:
            req["endTime"] = a + (PAGE_LIMIT - 1) * MINUTE_MS

        def parse(body: Any, date_ms: int) -> Page:
            rows = parse_candles(body, coin, a, req["endTime"], what)
            table = np.array(rows, dtype=np.float64).reshape(-1, 6)
            turnover = np.full((len(rows), 1), np.nan)  # Hyperliquid reports none
            return table[:, 0].astype(np.int64), np.hstack([table[:, 1:], turnover]), date_ms

        return self._post(what, {"type": "candleSnapshot", "req": req}, parse, **kw)


def parse_candles(body: Any, coin: str, lo: int, hi: int, what: str) -> list[tuple[float, ...]]:
    """Validate a candleSnapshot answer: (t, o, h, l, c, v) rows, ascending, in [lo, hi]."""

    def bad(msg: str) -> MalformedResponse:
        return MalformedResponse(f"malformed response for {what}: {msg}")

    if not isinstance(body, list):
        raise bad(f"expected a JSON list of candles, got {type(body).__name__}")
    if len(body) > PAGE_LIMIT:
        raise bad(f"{len(body)} candles, more than the limit {PAGE_LIMIT}")
    rows: list[tuple[float, ...]] = []
    for i, c in enumerate(body):
        if not isinstance(c, dict) or any(k not in c for k in _KEYS):
            missing = [k for k in _KEYS if not isinstance(c, dict) or k not in c]
            raise bad(f"candle {i} lacks {', '.join(missing)}: {c!r:.200}")
        t = c["t"]
        if not isinstance(t, int) or isinstance(t, bool) or t % MINUTE_MS:
            raise bad(f"candle {i} open time t={t!r} is not a whole minute in epoch ms")
        where = f"candle {i} (open {iso(t)})"
        if c["s"] != coin or c["i"] != "1m":
            raise bad(f"{where} is {c['s']!r} {c['i']!r}, expected {coin!r} '1m'")
        if c["T"] != t + MINUTE_MS - 1:
            raise bad(f"{where} close time T={c['T']!r} is not t + 59999")
        if not lo <= t <= hi:
            raise bad(f"{where} is outside the requested range [{iso(lo)}, {iso(hi)}]")
        if rows and t <= rows[-1][0]:
            raise bad(f"{where} does not follow the candle before it (duplicate or unsorted)")
        try:
            o, h, low, close, v = (float(c[k]) for k in ("o", "h", "l", "c", "v"))
        except (TypeError, ValueError):
            raise bad(f"{where} has a field that is not a number: {c!r:.200}") from None
        if not all(map(math.isfinite, (o, h, low, close, v))):
            raise bad(f"{where} has a field that is not a finite number: {c!r:.200}")
        if h < low or min(o, close) < low or max(o, close) > h or low <= 0 or v < 0:
            raise bad(f"{where} is inconsistent (o {o} h {h} l {low} c {close} v {v})")
        rows.append((t, o, h, low, close, v))
    return rows


def _universe(what: str) -> Callable[[Any, int], list[str]]:
    def parse(body: Any, date_ms: int) -> list[str]:
        try:
            names = [u["name"] for u in body["universe"]]
        except (KeyError, TypeError):
            raise MalformedResponse(
                f"malformed response for {what}: no universe of named coins in {body!r:.200}"
            ) from None
        if not all(isinstance(n, str) for n in names):
            raise MalformedResponse(f"malformed response for {what}: a coin name is not text")
        return names

    return parse


def _retry_after(headers: Any) -> float | None:
    try:
        raw = headers.get("Retry-After")
        return float(raw) if raw is not None else None
    except (AttributeError, ValueError):
        return None


def _unlisted(symbols: list[str], coins: set[str]) -> dict[str, str]:
    why = f"not in Hyperliquid's meta universe ({len(coins)} coins)"
    return {s: why for s in symbols if s not in coins}


def connect(settings: Settings, endpoint: Endpoint) -> HyperliquidClient:
    """The Hyperliquid client at the home's source (see `pipeline.exchanges.client`).

    Replay source: REST at `endpoint.rest_url` (the replay's one host:port) and the WebSocket
    at that URL + `/ws`. Live source: `settings.hyperliquid.rest_url` and `.ws_url`.
    """
    h = settings.hyperliquid
    if endpoint.kind == "replay":  # the WebSocket then derives from the REST URL
        return HyperliquidClient(endpoint.rest_url, **h.client_options())
    return HyperliquidClient(h.rest_url, ws_url=h.ws_url, keeps=PAGE_LIMIT, **h.client_options())

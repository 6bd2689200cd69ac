"""Bybit v5 market data for ingestion: closed candles as a validated polars frame.

Requests go through pybit's `HTTP.get_kline` / `get_server_time` (its `endpoint` pointed at
Bybit or the replay exchange). The retry policy lives here, one layer above pybit, which is
configured so that it never sleeps itself. What pybit 5.17 does (pybit/_http_manager.py):

- HTTP status != 200 -> `FailedRequestError` (status_code = HTTP status), never retried;
- retCode in `retry_codes` (default 10002, 10006, ...) -> pybit sleeps (until
  X-Bapi-Limit-Reset-Timestamp for 10006, else `retry_delay`) and loops `max_retries` times,
  then `FailedRequestError("Bad Request. Retries exceeded maximum.", 400)`. We pass
  `retry_codes={10002}` and `max_retries=1`, so a 10006 comes straight back as
  `InvalidRequestError` with its headers and only we decide how long to wait;
- any other non-zero retCode -> `InvalidRequestError` (status_code = retCode);
- a body that is not JSON -> `FailedRequestError(409, "Conflict. Could not decode JSON.")`;
- `requests` ReadTimeout / ConnectionError are re-raised as is (force_retry=False); a body cut
  short raises `requests.exceptions.ChunkedEncodingError`, which pybit does not catch;
- with `return_response_headers=True` a call returns (body, elapsed, headers).

Every request is paced by the rate limit the exchange reports in its `X-Bapi-Limit*` headers
(`ratelimit.Pacer`, one per REST URL in the process, shared by threads and clients), so a
client stays under the limit rather than running into it. Retried under the one policy of
`retry.py`: rate limits (10006, honouring the reset header; HTTP 429/403), 5xx and retCodes
10000/10016, timeouts and dropped connections, and malformed bodies (at most
`malformed_retries` times). Bad input (unknown symbol, bad interval: retCode 10001) fails at
once with `InvalidRequest`. Nothing from a page that fails validation is ever returned. Page
validation and the interval grid live in `bybit_wire.py`; the live stream is pybit's
`WebSocket` (channel linear, topic `kline.1.<SYMBOL>`) at the endpoint's ws_url.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, Unpack

from pipeline.exchanges import retry
from pipeline.exchanges.bybit_wire import (
    PAGE_LIMIT,
    close_times,
    floor_open,
    parse_kline_page,
    shift,
)
from pipeline.exchanges.protocol import (
    ExchangeError,
    InvalidRequest,
    MalformedResponse,
)
from pipeline.exchanges.ratelimit import Pacer
from pipeline.exchanges.rest import Grid, Page, RestClient, Tuning, iso

if TYPE_CHECKING:
    import numpy as np

    from pipeline.config import Settings
    from pipeline.exchanges.protocol import ClosedCandle, Endpoint, Stream

T = TypeVar("T")
_RETRYABLE_RETCODES = {10000, 10016, 10002}
_RATE_LIMIT_RETCODE = 10006
TIME, KLINE = "/v5/market/time", "/v5/market/kline"
INSTRUMENTS, TICKERS = "/v5/market/instruments-info", "/v5/market/tickers"
_PACERS: dict[str, Pacer] = {}  # by REST URL: the exchange counts per IP and endpoint
_PACERS_LOCK = threading.Lock()
_HINT = "start one with `signalbox replay` or point SIGNALBOX_BYBIT_URL at a reachable exchange"


class BybitClient(RestClient):
    """Closed candles and the server clock from a Bybit v5 REST endpoint (or the replay).

    Safe to share between threads (e.g. a pool fetching windows in parallel): pybit's
    requests session pools keep-alive connections, up to 10 per host.
    """

    name: ClassVar[str] = "bybit"
    hint: ClassVar[str] = _HINT

    def __init__(
        self, rest_url: str, *, category: str = "linear", **tuning: Unpack[Tuning]
    ) -> None:
        self.category = category
        super().__init__(rest_url, **tuning)
        with _PACERS_LOCK:
            self.pacer = _PACERS.setdefault(self.rest_url, Pacer())

    def _default_ws_url(self) -> str:
        return self.rest_url.replace("http", "ws", 1) + f"/v5/public/{self.category}"

    @classmethod
    def from_settings(cls, settings: Settings) -> BybitClient:
        """The client at the `bybit:` section's own URLs (whatever the home's source)."""
        return _client(settings, settings.bybit.rest_url, settings.bybit.ws_url)

    def _open(self, timeout_s: float) -> tuple[Any, Any]:
        """A pybit session that never sleeps or retries on its own (see the module doc)."""
        from pybit.unified_trading import HTTP

        http = HTTP(
            timeout=timeout_s,
            max_retries=1,
            retry_delay=0,
            retry_codes={10002},
            force_retry=False,
            return_response_headers=True,
        )
        http.endpoint = self.rest_url
        return http, http.client

    # -- public calls --------------------------------------------------------------------
    def server_time(self) -> dt.datetime:
        """The exchange clock (`/v5/market/time`)."""
        what = f"the server time from {self.rest_url}/v5/market/time"

        def parse(payload: Any) -> dt.datetime:
            try:
                nano = int(payload["result"]["timeNano"])
            except (KeyError, TypeError, ValueError):
                raise MalformedResponse(
                    f"malformed response for {what}: no integer result.timeNano in {payload!r:.200}"
                ) from None
            return dt.datetime.fromtimestamp(nano // 1000 / 1e6, dt.UTC)

        return self._call(what, TIME, lambda http: http.get_server_time(), parse)

    def latest_closed_open_time(self, symbol: str) -> dt.datetime | None:
        """The two newest 1m klines, the newest whose close is by the server clock."""
        what = f"{symbol} latest 1m klines from {self.rest_url}"

        def parse(payload: Any) -> dt.datetime | None:
            times, _, server_ms = parse_kline_page(
                payload,
                symbol=symbol,
                category=self.category,
                interval="1",
                lo_ms=None,
                hi_ms=None,
                what=what,
            )
            closed = times[times + 60_000 <= server_ms]
            if not len(closed):
                return None
            return dt.datetime.fromtimestamp(int(closed.max()) / 1000, dt.UTC)

        return self._call(
            what,
            KLINE,
            lambda http: http.get_kline(
                category=self.category, symbol=symbol, interval="1", limit=2
            ),
            parse,
            timeout_s=self.probe_timeout_s,
            policy=self.policy.once(self.probe_timeout_s),
        )

    def instruments(self) -> list[str]:
        """Every symbol listed in the category (`/v5/market/instruments-info`, cursor-paged)."""
        return sorted({str(item["symbol"]) for item in self.instruments_info()})

    def instruments_info(self) -> list[dict[str, Any]]:
        """Every instrument of the category as Bybit describes it (`symbol`, `status`,
        `quoteCoin`, `contractType`, ...), following `nextPageCursor` to the last page."""
        items: list[dict[str, Any]] = []
        cursor = ""
        for page in range(1000):
            what = f"instruments page {page + 1} ({self.category}) from {self.rest_url}"

            def parse(payload: Any, what: str = what) -> tuple[list[dict[str, Any]], str]:
                try:
                    result = payload["result"]
                    found = [dict(item) for item in result["list"]]
                    if not all(isinstance(item.get("symbol"), str) for item in found):
                        raise TypeError
                    return found, str(result.get("nextPageCursor") or "")
                except (KeyError, TypeError, ValueError):
                    raise MalformedResponse(
                        f"malformed response for {what}: no result.list of instruments in "
                        f"{payload!r:.200}"
                    ) from None

            found, cursor = self._call(
                what,
                INSTRUMENTS,
                lambda http, c=cursor: http.get_instruments_info(
                    category=self.category, limit=1000, **({"cursor": c} if c else {})
                ),
                parse,
            )
            items += found
            if not cursor:
                return items
        raise MalformedResponse(f"instruments from {self.rest_url}: the cursor never ends")

    def turnovers_24h(self) -> dict[str, float]:
        """Each symbol's 24h turnover in quote coin (`/v5/market/tickers`, one request)."""
        what = f"24h tickers ({self.category}) from {self.rest_url}"

        def parse(payload: Any) -> dict[str, float]:
            try:
                return {
                    str(t["symbol"]): float(t["turnover24h"]) for t in payload["result"]["list"]
                }
            except (KeyError, TypeError, ValueError):
                raise MalformedResponse(
                    f"malformed response for {what}: no result.list of symbol and turnover24h "
                    f"in {payload!r:.200}"
                ) from None

        return self._call(
            what, TICKERS, lambda http: http.get_tickers(category=self.category), parse
        )

    def unlisted(self, symbols: list[str]) -> dict[str, str]:
        """The symbols the exchange refuses (retCode 10001 on a one-candle request), each with
        the exchange's words; other failures raise as usual."""
        refused: dict[str, str] = {}
        for symbol in symbols:
            try:
                self._call(
                    f"{symbol} newest 1m kline from {self.rest_url}",
                    KLINE,
                    lambda http, s=symbol: http.get_kline(
                        category=self.category, symbol=s, interval="1", limit=1
                    ),
                    lambda payload: None,
                )
            except InvalidRequest as err:
                if err.ret_code != 10001:
                    raise
                refused[symbol] = f"{err.ret_msg} (retCode {err.ret_code})"
        return refused

    def stream(self, symbols: list[str], on_candle: Callable[[ClosedCandle], None]) -> Stream:
        """pybit's public WebSocket at `ws_url`: `kline.1.<SYMBOL>`, confirmed candles only.

        pybit reconnects on its own (and resubscribes); a candle confirmed twice (e.g. once
        before and once after a reconnect) is passed on once.
        """
        from pipeline.exchanges.bybit_stream import KlineStream

        return KlineStream(self.ws_url, self.category, symbols, on_candle)

    # -- internals -----------------------------------------------------------------------
    def _pages(self, symbol: str, interval: str) -> tuple[Grid, Callable[[int, int], Page]]:
        grid = Grid(
            PAGE_LIMIT,
            lambda t: floor_open(t, interval),
            lambda t, k: shift(t, k, interval),
            lambda times: close_times(times, interval),
        )
        return grid, functools.partial(self._page, symbol, interval)

    def _page(
        self, symbol: str, interval: str, a: int, b: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        what = f"{symbol} interval {interval} klines [{iso(a)}, {iso(b)}] from {self.rest_url}"
        return self._call(
            what,
            KLINE,
            lambda http: http.get_kline(
                category=self.category,
                symbol=symbol,
                interval=interval,
                start=a,
                end=b,
                limit=PAGE_LIMIT,
            ),
            lambda payload: parse_kline_page(
                payload,
                symbol=symbol,
                category=self.category,
                interval=interval,
                lo_ms=a,
                hi_ms=b,
                what=what,
            ),
        )

    def _call(
        self,
        what: str,
        endpoint: str,
        request: Callable[[Any], Any],
        parse: Callable[[Any], T],
        *,
        timeout_s: float | None = None,
        policy: retry.Policy | None = None,
    ) -> T:
        """Run `request` (to `endpoint`, the path its rate limit counts) then `parse` under
        the retry policy (`retry.call`)."""
        http = self._session(timeout_s or self.timeout_s)
        return retry.call(
            what,
            lambda: parse(self._send(http, endpoint, request, what)),
            policy or self.policy,
            url=self.rest_url,
            hint=_HINT,
        )

    def _send(self, http: Any, endpoint: str, request: Callable[[Any], Any], what: str) -> Any:
        """One request through pybit, paced by the endpoint's rate limit; transient failures
        become `retry.Transient`."""
        from pybit.exceptions import FailedRequestError, InvalidRequestError

        Transient = retry.Transient
        probe = self.pacer.acquire(endpoint)
        headers, told = None, False
        try:
            with self._transport_errors(http.timeout):
                payload, _, headers = request(http)
                return payload
        except InvalidRequestError as err:
            code = err.status_code
            headers = getattr(err, "resp_headers", None)
            if code == _RATE_LIMIT_RETCODE:
                self.pacer.exhausted(endpoint, headers, probe)
                told = True
                wait = _reset_wait(err)
                raise Transient(f"rate limited (retCode 10006: {err.message})", wait) from None
            if code in _RETRYABLE_RETCODES:
                raise Transient(f"server error (retCode {code}: {err.message})") from None
            raise InvalidRequest(_rejected(what, code, err.message), code, err.message) from None
        except FailedRequestError as err:
            code = err.status_code
            if code == 409:  # pybit's "could not decode JSON"
                raise MalformedResponse(f"malformed response for {what}: not valid JSON") from None
            if code in (403, 429):
                raise Transient(f"rate limited (HTTP {code}: {err.message})") from None
            if code >= 500 or code == 400:
                raise Transient(f"HTTP {code}: {err.message}") from None
            raise ExchangeError(
                f"{what}: HTTP {code} ({err.message}); is {self.rest_url} a Bybit v5 endpoint?"
            ) from None
        except (AttributeError, KeyError, TypeError) as err:
            # pybit indexes the decoded body as a dict: a JSON array or an error without
            # retMsg fails inside it
            raise MalformedResponse(
                f"malformed response for {what}: not a valid JSON object ({err!r})"
            ) from None
        finally:
            if not told:
                self.pacer.release(endpoint, headers, probe)


def _reset_wait(err: Any) -> float | None:
    """Seconds until X-Bapi-Limit-Reset-Timestamp (epoch ms on the server's wall clock)."""
    headers = getattr(err, "resp_headers", None) or {}
    raw = headers.get("X-Bapi-Limit-Reset-Timestamp")
    try:
        return max(int(raw) / 1000 - time.time(), 0.0) if raw is not None else None
    except ValueError:
        return None


def _rejected(what: str, code: int, message: str) -> str:
    hint = ""
    if "symbol" in message.lower():
        hint = " (check the symbol: an uppercase exchange symbol such as BTCUSDT, listed in the "
        hint += "requested category)"
    elif "period" in message.lower():
        hint = " (the interval must be one of 1 3 5 15 30 60 120 240 360 720 D W M)"
    return f"the exchange rejected {what}: {message} (retCode {code}){hint}"


def connect(settings: Settings, endpoint: Endpoint) -> BybitClient:
    """The Bybit client at the home's source (see `pipeline.exchanges.client`): REST at
    `endpoint.rest_url`, WebSocket at `endpoint.ws_url` (both the replay's in replay mode)."""
    return _client(settings, endpoint.rest_url, endpoint.ws_url)


def _client(settings: Settings, rest_url: str, ws_url: str) -> BybitClient:
    b = settings.bybit
    return BybitClient(rest_url, category=b.category, ws_url=ws_url, **b.client_options())

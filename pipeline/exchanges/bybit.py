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
  short raises `requests.exceptions.ChunkedEncodingError`, which pybit does not catch.

Retried, with exponential backoff and full jitter, at most `max_retries` times and within
`retry_budget_s`: rate limits (10006, honouring the reset header; HTTP 429/403), 5xx and
retCodes 10000/10016, timeouts and dropped connections, and — at most `malformed_retries`
times — malformed bodies. Bad input (unknown symbol, bad interval: retCode 10001) fails at
once with `InvalidRequest`. Nothing from a page that fails validation is ever returned.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from pipeline.config import Settings
    from pipeline.exchanges.sources import Endpoint

T = TypeVar("T")
PAGE_LIMIT = 1000
FIELDS = ("startTime", "open", "high", "low", "close", "volume", "turnover")
COLUMNS = (
    "symbol",
    "open_time",
    "close_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "turnover",
)
_RETRYABLE_RETCODES = {10000, 10016, 10002}
_RATE_LIMIT_RETCODE = 10006
_REFUSED = ("Connection refused", "NewConnectionError", "Failed to resolve", "Name or service")
_HINT = "start one with `signalbox replay` or point SIGNALBOX_BYBIT_URL at a reachable exchange"


class ExchangeError(RuntimeError):
    """Anything that went wrong talking to the exchange; the message says what and where."""


class InvalidRequest(ExchangeError):
    """The exchange rejected the request (unknown symbol, bad interval or parameter)."""

    def __init__(self, message: str, ret_code: int | None = None, ret_msg: str = "") -> None:
        super().__init__(message)
        self.ret_code, self.ret_msg = ret_code, ret_msg


class ExchangeUnavailable(ExchangeError):
    """Unreachable, or still failing after every retry the policy allows."""


class MalformedResponse(ExchangeError):
    """A response that is not a well-formed, consistent answer to the request."""


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms(t: dt.datetime) -> int:
    """Epoch ms of an aware datetime (naive ones are taken as UTC)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def kline_schema() -> dict[str, Any]:
    """Polars schema of `fetch_klines` frames (the columns of `bybit_klines_1m` it fills)."""
    import polars as pl

    ts = pl.Datetime("us", "UTC")
    return {
        "symbol": pl.String,
        "open_time": ts,
        "close_time": ts,
        **{c: pl.Float64 for c in COLUMNS[3:]},
    }


class _Retry(Exception):
    """Internal: a transient failure; `wait_s` set when the server said how long to wait."""

    def __init__(self, reason: str, wait_s: float | None = None, refused: bool = False) -> None:
        super().__init__(reason)
        self.wait_s, self.refused = wait_s, refused


# -- validation ----------------------------------------------------------------------------
def parse_kline_page(
    payload: Any,
    *,
    symbol: str,
    category: str,
    interval: str,
    lo_ms: int | None,
    hi_ms: int | None,
    what: str,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate one kline response; returns (open times ms, values (n, 6), server clock ms).

    `lo_ms`/`hi_ms` bound the open times requested (None: unbounded). Raises
    `MalformedResponse` naming the row and field at fault.
    """
    import numpy as np

    from pipeline.replay import intervals as iv

    def bad(msg: str) -> MalformedResponse:
        return MalformedResponse(f"malformed response for {what}: {msg}")

    if not isinstance(payload, dict):
        raise bad(f"expected a JSON object, got {type(payload).__name__}")
    if payload.get("retCode") != 0:
        raise bad(f"retCode is {payload.get('retCode')!r}, expected 0")
    server_ms = payload.get("time")
    if not isinstance(server_ms, int) or isinstance(server_ms, bool):
        raise bad(f"field 'time' (the server clock) is {server_ms!r}, expected epoch ms")
    result = payload.get("result")
    if not isinstance(result, dict):
        raise bad("field 'result' is missing or not an object")
    if result.get("symbol") != symbol:
        raise bad(f"result.symbol is {result.get('symbol')!r}, expected {symbol!r}")
    if result.get("category", category) != category:
        raise bad(f"result.category is {result.get('category')!r}, expected {category!r}")
    rows = result.get("list")
    if not isinstance(rows, list):
        raise bad("field 'result.list' is missing or not a list")
    if len(rows) > PAGE_LIMIT:
        raise bad(f"{len(rows)} rows, more than the limit {PAGE_LIMIT}")
    if rows and not (set(map(type, rows)) == {list} and set(map(len, rows)) == {7}):
        for i, r in enumerate(rows):
            if not isinstance(r, list) or len(r) != 7:
                got = f"{len(r)} fields" if isinstance(r, list) else type(r).__name__
                raise bad(f"row {i} has {got}, expected 7 ({', '.join(FIELDS)}): {r!r}")
    if not rows:
        return np.empty(0, np.int64), np.empty((0, 6)), server_ms
    cols = list(zip(*rows, strict=True))
    times = np.array(_column(cols[0], int, bad, "startTime", "an integer (epoch ms)"), np.int64)
    values = np.array(
        [_column(cols[j], float, bad, FIELDS[j], "a number") for j in range(1, 7)], np.float64
    ).T

    def row_bad(i: int, msg: str) -> MalformedResponse:
        return bad(f"row {i} (open_time {_iso(int(times[i]))}) {msg}")

    finite = np.isfinite(values)
    if not finite.all():
        i, j = (int(k) for k in np.argwhere(~finite)[0])
        raise row_bad(i, f"field '{FIELDS[j + 1]}' = {rows[i][j + 1]!r} is not a finite number")
    grid = iv.bucket_opens(times, interval)
    off = np.flatnonzero(grid != times)
    if len(off):
        raise row_bad(int(off[0]), f"startTime {times[off[0]]} is not on the {interval} grid")
    steps = np.diff(times)
    wrong = np.flatnonzero(steps >= 0)
    if len(wrong):
        i = int(wrong[0])
        if steps[i] == 0:
            raise row_bad(i + 1, "repeats the open time of the row before it (duplicate)")
        raise row_bad(i + 1, f"is newer than row {i}; the list must be newest first")
    outside = np.flatnonzero(
        ((times < lo_ms) if lo_ms is not None else False)
        | ((times > hi_ms) if hi_ms is not None else False)
    )
    if len(outside):
        span = f"[{'-' if lo_ms is None else _iso(lo_ms)}, {'-' if hi_ms is None else _iso(hi_ms)}]"
        raise row_bad(int(outside[0]), f"is outside the requested open-time range {span}")
    if times[0] > server_ms:
        raise row_bad(0, f"opens after the server clock {_iso(server_ms)}")
    o, h, low, c, vol, turn = values.T
    if (h < low).any():
        i = int(np.flatnonzero(h < low)[0])
        raise row_bad(i, f"high {rows[i][2]} is below low {rows[i][3]}")
    outside_hl = (np.minimum(o, c) < low) | (np.maximum(o, c) > h) | (low <= 0)
    if outside_hl.any():
        i = int(np.flatnonzero(outside_hl)[0])
        raise row_bad(
            i,
            f"open {rows[i][1]} / close {rows[i][4]} outside [low {rows[i][3]}, high "
            f"{rows[i][2]}] or a non-positive price",
        )
    negative = (vol < 0) | (turn < 0)
    if negative.any():
        i = int(np.flatnonzero(negative)[0])
        raise row_bad(i, f"negative volume {rows[i][5]} or turnover {rows[i][6]}")
    return times, values, server_ms


def _column(
    column: tuple[Any, ...],
    kind: type[int] | type[float],
    bad: Callable[[str], MalformedResponse],
    name: str,
    want: str,
) -> list[Any]:
    """Parse one column of the page's strings; on failure name the first offending row."""
    try:
        if set(map(type, column)) == {str}:
            return list(map(kind, column))
    except (ValueError, OverflowError):
        pass
    for i, v in enumerate(column):
        try:
            if type(v) is not str:
                raise TypeError
            kind(v)
        except (ValueError, OverflowError, TypeError):
            raise bad(f"row {i} field '{name}' = {v!r} is not {want} in a string") from None
    raise bad(f"field '{name}' does not parse as {want}")  # pragma: no cover


# -- the client ----------------------------------------------------------------------------
class BybitClient:
    """Closed candles and the server clock from a Bybit v5 REST endpoint (or the replay).

    Safe to share between threads (e.g. a pool fetching windows in parallel): pybit's
    requests session pools keep-alive connections, up to 10 per host.
    """

    def __init__(
        self,
        rest_url: str,
        category: str = "linear",
        timeout_s: float = 10.0,
        max_retries: int = 8,
        retry_budget_s: float = 120.0,
        *,
        probe_timeout_s: float = 3.0,
        malformed_retries: int = 3,
        backoff_s: float = 0.2,
        backoff_cap_s: float = 8.0,
    ) -> None:
        self.rest_url = rest_url.rstrip("/")
        self.category = category
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_budget_s = retry_budget_s
        self.probe_timeout_s = probe_timeout_s
        self.malformed_retries = malformed_retries
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self._sessions: dict[float, Any] = {}
        self._lock = threading.Lock()
        self._jitter = random.Random()

    @classmethod
    def from_settings(cls, settings: Settings) -> BybitClient:
        b = settings.bybit
        return cls(
            b.rest_url,
            b.category,
            timeout_s=b.timeout_s,
            max_retries=b.max_retries,
            probe_timeout_s=b.probe_timeout_s,
        )

    def close(self) -> None:
        for http in self._sessions.values():
            http.client.close()
        self._sessions.clear()

    def __enter__(self) -> BybitClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _http(self, timeout_s: float) -> Any:
        with self._lock:
            return self._sessions.get(timeout_s) or self._new_http(timeout_s)

    def _new_http(self, timeout_s: float) -> Any:
        """A pybit session that never sleeps or retries on its own (see the module doc)."""
        from pybit.unified_trading import HTTP

        http = HTTP(
            timeout=timeout_s, max_retries=1, retry_delay=0, retry_codes={10002}, force_retry=False
        )
        http.endpoint = self.rest_url
        if urlsplit(self.rest_url).hostname in ("127.0.0.1", "localhost", "::1"):
            # Loopback (the replay): skip requests' per-request scan of the proxy variables,
            # ~2 ms a page. Remote URLs keep honouring HTTP(S)_PROXY.
            http.client.trust_env = False
        self._sessions[timeout_s] = http
        return http

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

        return self._call(what, lambda http: http.get_server_time(), parse)

    def fetch_klines(
        self,
        symbol: str,
        start: dt.datetime,
        end: dt.datetime,
        *,
        closed_by: dt.datetime | None = None,
        interval: str = "1",
    ) -> pl.DataFrame:
        """Every CLOSED candle with open_time in [start, end), sorted, unique.

        Pages of up to 1000 candles are requested oldest first with explicit start and end,
        so pages never overlap or leave gaps. A candle is closed when its close_time is at or
        before the server clock of the response it came in (and before `closed_by`, if given).
        `interval` is a Bybit interval (1 3 5 ... 720 D W M); ingestion uses 1.
        """
        import numpy as np

        from pipeline.replay import intervals as iv

        start_ms, end_ms = _ms(start), _ms(end)
        lo = iv.ceil_open(start_ms, interval)
        hi = iv.floor_open(end_ms - 1, interval)
        limit_ms = _ms(closed_by) if closed_by is not None else None
        times_parts: list[np.ndarray] = []
        value_parts: list[np.ndarray] = []
        a = lo
        while a <= hi:
            b = min(iv.shift(a, PAGE_LIMIT - 1, interval), hi)
            times, values, server_ms = self._page(symbol, interval, a, b)
            clock = server_ms if limit_ms is None else min(server_ms, limit_ms)
            keep = _close_times(times, interval) <= clock
            times_parts.append(times[keep])
            value_parts.append(values[keep])
            a = iv.shift(b, 1, interval)
            if server_ms < a:  # nothing can have opened after the exchange clock yet
                break
        times = np.concatenate(times_parts) if times_parts else np.empty(0, np.int64)
        values = np.concatenate(value_parts) if value_parts else np.empty((0, 6))
        order = np.argsort(times, kind="stable")
        times, values = times[order], values[order]
        if len(times) > 1 and (np.diff(times) == 0).any():
            dup = int(times[np.flatnonzero(np.diff(times) == 0)[0]])
            raise MalformedResponse(f"{symbol}: open time {_iso(dup)} came in two pages")
        return _frame(symbol, times, values, interval)

    def latest_closed_open_time(self, symbol: str) -> dt.datetime | None:
        """Open time of the newest closed 1m candle: ONE short request, no retry loop.

        For the live sensor: cheap enough to call every few seconds. Raises `ExchangeError`
        subclasses on any failure; the caller simply tries again on its next tick.
        """
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
            lambda http: http.get_kline(
                category=self.category, symbol=symbol, interval="1", limit=2
            ),
            parse,
            timeout_s=self.probe_timeout_s,
            max_retries=0,
            budget_s=self.probe_timeout_s,
            malformed_retries=0,
        )

    def unlisted(self, symbols: list[str]) -> dict[str, str]:
        """The symbols the exchange refuses (retCode 10001 on a one-candle request), each with
        the exchange's words; other failures raise as usual."""
        refused: dict[str, str] = {}
        for symbol in symbols:
            try:
                self._call(
                    f"{symbol} newest 1m kline from {self.rest_url}",
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

    # -- internals -----------------------------------------------------------------------
    def _page(
        self, symbol: str, interval: str, a: int, b: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        what = f"{symbol} interval {interval} klines [{_iso(a)}, {_iso(b)}] from {self.rest_url}"
        return self._call(
            what,
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
        request: Callable[[Any], Any],
        parse: Callable[[Any], T],
        *,
        timeout_s: float | None = None,
        max_retries: int | None = None,
        budget_s: float | None = None,
        malformed_retries: int | None = None,
    ) -> T:
        """Run `request` then `parse`, retrying transient failures per the module's policy."""
        http = self._http(timeout_s or self.timeout_s)
        retries = self.max_retries if max_retries is None else max_retries
        budget = self.retry_budget_s if budget_s is None else budget_s
        bad_left = self.malformed_retries if malformed_retries is None else malformed_retries
        t0 = time.monotonic()
        attempt = refused = 0
        while True:
            try:
                return parse(self._send(http, request, what))
            except MalformedResponse as err:
                if bad_left <= 0:
                    raise
                bad_left -= 1
                failure: _Retry = _Retry(str(err))
            except _Retry as err:
                failure = err
            attempt += 1
            refused = refused + 1 if failure.refused else 0
            elapsed = time.monotonic() - t0
            if refused >= 2 or (failure.refused and retries == 0):
                raise ExchangeUnavailable(
                    f"cannot reach the exchange at {self.rest_url} for {what} ({failure}); {_HINT}"
                ) from None
            if attempt > retries or elapsed >= budget:
                raise ExchangeUnavailable(
                    f"{what}: still failing after {attempt} attempt(s) in {elapsed:.1f} s "
                    f"(max_retries={retries}, budget {budget:g} s); last error: {failure}"
                ) from None
            if failure.wait_s is not None:
                delay = failure.wait_s + self._jitter.uniform(0, 0.05)
                if elapsed + delay > budget:
                    raise ExchangeUnavailable(
                        f"{what}: rate limited for {failure.wait_s:.1f} s more, beyond the retry "
                        f"budget of {budget:g} s; last error: {failure}"
                    ) from None
            else:
                cap = min(self.backoff_cap_s, self.backoff_s * 2 ** (attempt - 1))
                delay = self._jitter.uniform(0, cap)
            time.sleep(min(delay, max(budget - elapsed, 0.0)))

    def _send(self, http: Any, request: Callable[[Any], Any], what: str) -> Any:
        """One request through pybit; transient failures become `_Retry`."""
        import requests
        from pybit.exceptions import FailedRequestError, InvalidRequestError

        try:
            return request(http)
        except InvalidRequestError as err:
            code = err.status_code
            if code == _RATE_LIMIT_RETCODE:
                wait = _reset_wait(err)
                raise _Retry(f"rate limited (retCode 10006: {err.message})", wait) from None
            if code in _RETRYABLE_RETCODES:
                raise _Retry(f"server error (retCode {code}: {err.message})") from None
            raise InvalidRequest(_rejected(what, code, err.message), code, err.message) from None
        except FailedRequestError as err:
            code = err.status_code
            if code == 409:  # pybit's "could not decode JSON"
                raise MalformedResponse(f"malformed response for {what}: not valid JSON") from None
            if code in (403, 429):
                raise _Retry(f"rate limited (HTTP {code}: {err.message})") from None
            if code >= 500 or code == 400:
                raise _Retry(f"HTTP {code}: {err.message}") from None
            raise ExchangeError(
                f"{what}: HTTP {code} ({err.message}); is {self.rest_url} a Bybit v5 endpoint?"
            ) from None
        except (requests.exceptions.MissingSchema, requests.exceptions.InvalidURL) as err:
            raise ExchangeError(f"{self.rest_url} is not a usable URL ({err}); {_HINT}") from None
        except requests.exceptions.Timeout as err:
            raise _Retry(f"timed out after {http.timeout} s ({type(err).__name__})") from None
        except requests.exceptions.ConnectionError as err:
            text = str(err)
            refused = any(s in text for s in _REFUSED)
            raise _Retry(f"connection failed: {_short(text)}", refused=refused) from None
        except requests.exceptions.RequestException as err:  # e.g. body cut short
            raise _Retry(f"{type(err).__name__}: {_short(str(err))}") from None
        except (AttributeError, KeyError, TypeError) as err:
            # pybit indexes the decoded body as a dict: a JSON array or an error without
            # retMsg fails inside it
            raise MalformedResponse(
                f"malformed response for {what}: not a valid JSON object ({err!r})"
            ) from None


def _short(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


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


def _close_times(times: np.ndarray, interval: str) -> np.ndarray:
    import numpy as np

    from pipeline.replay import intervals as iv

    size = iv.length_ms(interval)
    if size is None:
        return np.array([iv.close_ms(int(t), interval) for t in times], dtype=np.int64)
    return times.astype(np.int64) + size


def _frame(symbol: str, times: np.ndarray, values: np.ndarray, interval: str) -> pl.DataFrame:
    import numpy as np
    import polars as pl

    ts = pl.Datetime("us", "UTC")
    data: dict[str, Any] = {
        "open_time": pl.Series(times.astype(np.int64) * 1000).cast(ts),
        "close_time": pl.Series(_close_times(times, interval) * 1000).cast(ts),
    }
    for j, name in enumerate(COLUMNS[3:]):
        data[name] = pl.Series(values[:, j], dtype=pl.Float64)
    frame = pl.DataFrame(data).select(pl.lit(symbol, pl.String).alias("symbol"), pl.all())
    return frame.select(COLUMNS)


def connect(settings: Settings, endpoint: Endpoint) -> BybitClient:
    """The Bybit client at the home's source (see `pipeline.exchanges.client`)."""
    b = settings.bybit
    return BybitClient(
        endpoint.rest_url,
        b.category,
        timeout_s=b.timeout_s,
        max_retries=b.max_retries,
        probe_timeout_s=b.probe_timeout_s,
    )

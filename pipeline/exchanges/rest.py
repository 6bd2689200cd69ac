"""What every REST venue client shares, so a venue module holds only what is its own.

`RestClient` keeps the URL, timeouts and retry policy, one SDK session per timeout (shared by
threads), the mapping of `requests` failures onto the retry policy, and the paging loop that
keeps only CLOSED candles: pages are asked oldest first with explicit bounds (so they never
overlap or leave gaps), and a candle is closed when its close time is at or before the clock
of the response it came in (and `closed_by`, if given). A venue supplies its SDK session
(`_open`), one validated page (`fetch` of `_closed`) and its interval grid.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypedDict, Unpack
from urllib.parse import urlsplit

from pipeline.candles.timeframes import KLINE_COLUMNS
from pipeline.exchanges import retry
from pipeline.exchanges.protocol import ExchangeError, MalformedResponse

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

# A page: open times (int64 ms), values (n, 6: open high low close volume turnover; NaN
# turnover = not reported) and the response's clock (ms).
Page = tuple["np.ndarray", "np.ndarray", int]

_REFUSED = ("Connection refused", "NewConnectionError", "Failed to resolve", "Name or service")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ms(t: dt.datetime) -> int:
    """Epoch ms of an aware datetime (naive ones are taken as UTC)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


class Tuning(TypedDict, total=False):
    """A client's keyword settings (defaults in `_TUNING`): timeouts, retries, backoff, and
    the WebSocket URL (default: the venue's, at the REST URL's host)."""

    timeout_s: float
    max_retries: int
    retry_budget_s: float
    probe_timeout_s: float
    malformed_retries: int
    backoff_s: float
    backoff_cap_s: float
    ws_url: str | None


_TUNING = Tuning(
    timeout_s=10.0,
    max_retries=8,
    retry_budget_s=120.0,
    probe_timeout_s=3.0,
    malformed_retries=3,
    backoff_s=0.2,
    backoff_cap_s=8.0,
    ws_url=None,
)


class RestClient:
    """Base of the venue clients: sessions, transport errors, closed-candle paging."""

    name: ClassVar[str]
    hint: ClassVar[str]  # how to get a reachable exchange, for "nothing listens" errors

    def __init__(self, rest_url: str, **tuning: Unpack[Tuning]) -> None:
        t: dict[str, Any] = {**_TUNING, **tuning}
        self.rest_url = rest_url.rstrip("/")
        self.ws_url = t["ws_url"] or self._default_ws_url()
        self.timeout_s = t["timeout_s"]
        self.probe_timeout_s = t["probe_timeout_s"]
        self.policy = retry.Policy(
            t["max_retries"],
            t["retry_budget_s"],
            t["malformed_retries"],
            t["backoff_s"],
            t["backoff_cap_s"],
        )
        self._sessions: dict[float, Any] = {}
        self._lock = threading.Lock()

    def _default_ws_url(self) -> str:
        """The venue's WebSocket URL at the REST URL's host, when none is given."""
        raise NotImplementedError

    @property
    def max_retries(self) -> int:
        return self.policy.max_retries

    def _open(self, timeout_s: float) -> tuple[Any, Any]:
        """A new SDK session with `timeout_s` and the `requests.Session` it sends through."""
        raise NotImplementedError

    def _session(self, timeout_s: float) -> Any:
        with self._lock:
            if timeout_s not in self._sessions:
                sdk, session = self._open(timeout_s)
                if urlsplit(self.rest_url).hostname in _LOOPBACK:
                    # Loopback (the replay): skip requests' per-request scan of the proxy
                    # variables, ~2 ms a page. Remote URLs keep honouring HTTP(S)_PROXY.
                    session.trust_env = False
                self._sessions[timeout_s] = (sdk, session)
            return self._sessions[timeout_s][0]

    def close(self) -> None:
        for _, session in self._sessions.values():
            session.close()
        self._sessions.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transport_errors(self, timeout_s: float) -> Iterator[None]:
        """`requests` failures: a bad URL fails at once, the rest become `retry.Transient`."""
        import requests

        try:
            yield
        except (requests.exceptions.MissingSchema, requests.exceptions.InvalidURL) as err:
            url = self.rest_url
            raise ExchangeError(f"{url} is not a usable URL ({err}); {self.hint}") from None
        except requests.exceptions.Timeout as err:
            raise retry.Transient(f"timed out after {timeout_s} s ({type(err).__name__})") from None
        except requests.exceptions.ConnectionError as err:
            text = str(err)
            refused = any(s in text for s in _REFUSED)
            raise retry.Transient(f"connection failed: {short(text)}", refused=refused) from None
        except requests.exceptions.RequestException as err:  # e.g. body cut short
            raise retry.Transient(f"{type(err).__name__}: {short(str(err))}") from None

    def _pages(self, symbol: str, interval: str) -> tuple[Grid, Callable[[int, int], Page]]:
        """The venue's grid for `interval` and its page request for `symbol` (or refuse
        either with `InvalidRequest`)."""
        raise NotImplementedError

    def fetch_klines(
        self,
        symbol: str,
        start: dt.datetime,
        end: dt.datetime,
        *,
        interval: str = "1",
        closed_by: dt.datetime | None = None,
    ) -> pl.DataFrame:
        """`interval` in Bybit's words (1 3 5 ... 720 D W M), where the venue has it;
        ingestion uses 1."""
        import numpy as np

        grid, fetch = self._pages(symbol, interval)
        lo = grid.shift(grid.floor(ms(start) - 1), 1)  # the first open at or after start
        hi = grid.floor(ms(end) - 1)
        limit_ms = ms(closed_by) if closed_by is not None else None
        times_parts: list[np.ndarray] = []
        value_parts: list[np.ndarray] = []
        a = lo
        while a <= hi:
            b = min(grid.shift(a, grid.page - 1), hi)
            times, values, server_ms = fetch(a, b)
            clock = server_ms if limit_ms is None else min(server_ms, limit_ms)
            keep = grid.close_times(times) <= clock
            times_parts.append(times[keep])
            value_parts.append(values[keep])
            a = grid.shift(b, 1)
            if server_ms < a:  # nothing can have opened after the exchange clock yet
                break
        times = np.concatenate(times_parts) if times_parts else np.empty(0, np.int64)
        values = np.concatenate(value_parts) if value_parts else np.empty((0, 6))
        order = np.argsort(times, kind="stable")
        times, values = times[order], values[order]
        if len(times) > 1 and (np.diff(times) == 0).any():
            dup = int(times[np.flatnonzero(np.diff(times) == 0)[0]])
            raise MalformedResponse(f"{symbol}: open time {iso(dup)} came in two pages")
        return frame(symbol, times, values, grid.close_times(times))


@dataclass(frozen=True)
class Grid:
    """A venue's candle grid: candles a page, `floor(t_ms)` the open of the candle holding
    t, `shift(open_ms, k)` k candles on, `close_times(opens)` their exclusive ends (ms)."""

    page: int
    floor: Callable[[int], int]
    shift: Callable[[int, int], int]
    close_times: Callable[[np.ndarray], np.ndarray]


def frame(symbol: str, times: np.ndarray, values: np.ndarray, closes: np.ndarray) -> pl.DataFrame:
    """The protocol's candle frame (`KLINE_COLUMNS`; a NaN turnover becomes null)."""
    import numpy as np
    import polars as pl

    ts = pl.Datetime("us", "UTC")
    data: dict[str, Any] = {
        "open_time": pl.Series(times.astype(np.int64) * 1000).cast(ts),
        "close_time": pl.Series(closes.astype(np.int64) * 1000).cast(ts),
    }
    for j, name in enumerate(KLINE_COLUMNS[3:]):
        data[name] = pl.Series(values[:, j], dtype=pl.Float64, nan_to_null=True)
    out = pl.DataFrame(data).select(pl.lit(symbol, pl.String).alias("symbol"), pl.all())
    return out.select(KLINE_COLUMNS)


def short(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."

"""Bybit v5 market context: funding rate history, open interest and the spot 1m candles.

Wire (Bybit v5 docs "market/history-fund-rate" and "market/open-interest"; pybit 5.17's
`get_funding_rate_history` / `get_open_interest`), both newest first:

- `GET /v5/market/funding/history?category=linear&symbol=&startTime=&endTime=&limit=` (limit
  1-200, default 200; startTime alone is an error) -> `result.list` of `{symbol, fundingRate,
  fundingRateTimestamp}` (strings), `result.category`.
- `GET /v5/market/open-interest?category=linear&symbol=&intervalTime=5min&startTime=&endTime=
  &limit=&cursor=` (limit 1-200, default 50) -> `result.{symbol, category, list:
  [{openInterest, timestamp}], nextPageCursor}`.

Both bounds are inclusive. Requests go through the klines client's `_call` (BybitClient): the
same pacing, tenacity retry policy and error family. A range is asked in windows no page can
overflow (200 hourly fundings; 200 five-minute readings); a page that comes back full is asked
again below its oldest row, so nothing is cut off. Rows are validated like kline pages: a
funding timestamp must be on the minute (the market's funding grid is the asset's check:
flagged, never refused), an open-interest timestamp on the 5-minute grid. Only readings whose
interval is over by the response's clock (and `closed_by`) are kept: time + 5 min for open
interest.
The spot candles are the kline path itself with `category=spot` (`spot_client`), asked for
the perpetual's spot pair as the instrument lists state it (`legs`, pipeline/context/legs.py:
`1000PEPEUSDT`'s is `PEPEUSDT`, 1000 coins a contract) and returned by `fetch_spot` in the
perpetual's units, keyed by its symbol: prices x the multiplier, volume / it (turnover, in
quote coin, as it is), so perpetual close / spot close - 1 is the basis for every market.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Unpack

from pipeline.exchanges.bybit import BybitClient
from pipeline.exchanges.bybit_wire import envelope, parse_column
from pipeline.exchanges.protocol import MalformedResponse
from pipeline.exchanges.rest import Tuning, iso, ms

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from pipeline.config import Settings
    from pipeline.context.legs import Leg
    from pipeline.exchanges.protocol import Endpoint

FUNDING, OPEN_INTEREST = "/v5/market/funding/history", "/v5/market/open-interest"
LIMIT = 200  # both endpoints' most rows a page
MINUTE_MS, HOUR_MS, OI_STEP_MS = 60_000, 3_600_000, 300_000
FUNDING_WINDOW = dt.timedelta(hours=LIMIT)  # a page even at hourly funding
OI_WINDOW = dt.timedelta(minutes=5 * LIMIT)  # a page of 5-minute readings
FUNDING_COLUMNS = ("symbol", "funding_time", "funding_rate")
OI_COLUMNS = ("symbol", "time", "open_interest")


class BybitContext(BybitClient):
    """The linear client plus a spot one (`spot_client`) at the same URL; `spot_legs` is the
    configuration's `bybit.spot_legs` (perpetual -> (spot pair, multiplier))."""

    def __init__(
        self,
        rest_url: str,
        *,
        category: str = "linear",
        spot_legs: dict[str, tuple[str, int]] | None = None,
        **tuning: Unpack[Tuning],
    ) -> None:
        super().__init__(rest_url, category=category, **tuning)
        spot_tuning = {k: v for k, v in tuning.items() if k != "ws_url"}
        self.spot = BybitClient(rest_url, category="spot", **spot_tuning)  # type: ignore[arg-type]
        self.overrides = dict(spot_legs or {})
        self.known: dict[str, Leg] = {}

    def spot_client(self) -> BybitClient:
        """The spot category's client (its candles under the spot pair's own name)."""
        return self.spot

    def legs(self, symbols: list[str], known: dict[str, Leg] | None = None) -> dict[str, Leg]:
        """Each perpetual's spot pair, multiplier and funding interval from the linear and
        spot instrument lists (two listings) and the overrides, or from `known` when it has
        them all and they agree with the overrides (one edited since is asked again);
        remembered for `fetch_spot`."""
        from pipeline.context.legs import resolve

        if known is not None and all(s in known and self._fits(s, known[s]) for s in symbols):
            self.known.update(known)
            return {s: known[s] for s in symbols}
        linear = {str(i["symbol"]): i for i in self.instruments_info()}
        spot = self.spot.instruments_info()
        got = {
            s: resolve(self.name, s, linear.get(s), spot, self.overrides.get(s)) for s in symbols
        }
        self.known.update(got)
        return got

    def _fits(self, symbol: str, leg: Leg) -> bool:
        """`leg` (found earlier) agrees with the configuration as it is now."""
        override = self.overrides.get(symbol)
        if override is None:
            return not leg.how.startswith("configured")
        return (leg.spot, leg.multiplier) == override

    def fetch_spot(
        self, symbol: str, start: dt.datetime, end: dt.datetime, *, closed_by: dt.datetime | None
    ) -> pl.DataFrame:
        """The closed spot 1m candles of perpetual `symbol`'s spot pair in [start, end), in the
        perpetual's units and under its symbol (module doc); its leg is `legs`' (or given to
        `known`). A perpetual without a spot pair raises `Unsupported` with the reason."""
        import polars as pl

        from pipeline.exchanges.protocol import Unsupported

        leg = self.known.get(symbol) or self.legs([symbol])[symbol]
        if leg.spot is None:
            raise Unsupported(self.name, "spot_klines_1m", leg.how)
        frame = self.spot.fetch_klines(leg.spot, start, end, closed_by=closed_by)
        m = leg.multiplier
        return frame.with_columns(
            pl.lit(symbol, pl.String).alias("symbol"),
            *[(pl.col(c) * m if m != 1 else pl.col(c)) for c in ("open", "high", "low", "close")],
            volume=pl.col("volume") / m if m != 1 else pl.col("volume"),
        )

    def close(self) -> None:
        super().close()
        self.spot.close()

    def fetch_funding(
        self, symbol: str, start: dt.datetime, end: dt.datetime, *, closed_by: dt.datetime | None
    ) -> pl.DataFrame:
        """Funding settled at funding_time in [start, end) (and by the clock)."""

        def request(http: Any, a: int, b: int) -> Any:
            return http.get_funding_rate_history(
                category=self.category, symbol=symbol, startTime=a, endTime=b, limit=LIMIT
            )

        times, values = self._span(FUNDING, FUNDING_SPEC, symbol, start, end, closed_by, request)
        return _frame(FUNDING_COLUMNS, symbol, times, values)

    def fetch_open_interest(
        self, symbol: str, start: dt.datetime, end: dt.datetime, *, closed_by: dt.datetime | None
    ) -> pl.DataFrame:
        """5-minute open interest readings with time in [start, end) whose interval is over."""

        def request(http: Any, a: int, b: int) -> Any:
            return http.get_open_interest(
                category=self.category, symbol=symbol, intervalTime="5min", startTime=a,
                endTime=b, limit=LIMIT,
            )  # fmt: skip

        times, values = self._span(OPEN_INTEREST, OI_SPEC, symbol, start, end, closed_by, request)
        return _frame(OI_COLUMNS, symbol, times, values)

    def _span(
        self,
        endpoint: str,
        spec: _Spec,
        symbol: str,
        start: dt.datetime,
        end: dt.datetime,
        closed_by: dt.datetime | None,
        request: Callable[[Any, int, int], Any],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every row in [start, end), oldest first, from pages of inclusive bounds [a, b]."""
        import numpy as np

        lo, hi = -(-ms(start) // spec.grid_ms) * spec.grid_ms, ms(end) - 1
        times: list[np.ndarray] = []
        values: list[np.ndarray] = []
        a = lo
        while a <= hi:
            top = b = min(a + spec.window_ms - 1, hi)
            while True:
                what = f"{symbol} {spec.name} [{iso(a)}, {iso(top)}] from {self.rest_url}"
                t, v, server_ms = self._call(
                    what,
                    endpoint,
                    lambda http, a=a, top=top: request(http, a, top),
                    lambda p, a=a, top=top, what=what: parse(
                        p, spec, symbol, self.category, a, top, what
                    ),
                )
                clock = server_ms if closed_by is None else min(server_ms, ms(closed_by))
                keep = t + spec.lag_ms <= clock
                times.append(t[keep])
                values.append(v[keep])
                if len(t) < LIMIT or int(t.min()) <= a:
                    break
                top = int(t.min()) - 1  # a full page: older rows may remain below it
            a = b + 1
            if server_ms < a:  # nothing can exist after the exchange clock yet
                break
        t_all = np.concatenate(times) if times else np.empty(0, np.int64)
        v_all = np.concatenate(values) if values else np.empty(0)
        order = np.argsort(t_all, kind="stable")
        t_all, v_all = t_all[order], v_all[order]
        if len(t_all) > 1 and (np.diff(t_all) == 0).any():
            dup = int(t_all[np.flatnonzero(np.diff(t_all) == 0)[0]])
            raise MalformedResponse(f"{symbol} {spec.name}: time {iso(dup)} came in two pages")
        return t_all, v_all


@dataclass(frozen=True)
class _Spec:
    """One endpoint's row format: its time and value keys, the grid its times keep, how long
    after its time a row is known (`lag_ms`), whether it is open interest, and the span of a
    page no answer can overflow (`window_ms`)."""

    name: str
    time_key: str
    value_key: str
    grid_ms: int
    lag_ms: int
    oi: bool
    window_ms: int


def parse(
    payload: Any, spec: _Spec, symbol: str, category: str, lo: int, hi: int, what: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate one page; returns (times ms, values, server clock ms), oldest row last as
    sent. Raises `MalformedResponse` naming the row and field at fault."""
    import numpy as np

    def bad(msg: str) -> MalformedResponse:
        return MalformedResponse(f"malformed response for {what}: {msg}")

    result, rows, server_ms = envelope(payload, bad, category, LIMIT)
    if spec.oi and result.get("symbol") != symbol:
        raise bad(f"result.symbol is {result.get('symbol')!r}, expected {symbol!r}")
    keys = (spec.time_key, spec.value_key)
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or any(k not in row for k in keys):
            raise bad(f"row {i} is not an object with {' and '.join(keys)}: {row!r:.120}")
        if not spec.oi and row.get("symbol") != symbol:
            raise bad(f"row {i} symbol is {row.get('symbol')!r}, expected {symbol!r}")
    if not rows:
        return np.empty(0, np.int64), np.empty(0), server_ms
    raw_t = tuple(r[spec.time_key] for r in rows)
    raw_v = tuple(r[spec.value_key] for r in rows)
    times = np.array(parse_column(raw_t, int, bad, spec.time_key, "an integer (epoch ms)"))
    values = np.array(parse_column(raw_v, float, bad, spec.value_key, "a number"), np.float64)
    times = times.astype(np.int64)

    def row_bad(i: int, msg: str) -> MalformedResponse:
        return bad(f"row {i} (time {iso(int(times[i]))}) {msg}")

    checks = (
        (~np.isfinite(values), lambda i: f"{spec.value_key} {raw_v[i]!r} is not finite"),
        (times % spec.grid_ms != 0, lambda i: f"is not on the {spec.grid_ms // 1000} s grid"),
        (np.r_[False, np.diff(times) == 0], lambda i: "repeats the row before it (duplicate)"),
        (np.r_[False, np.diff(times) > 0], lambda i: "is newer than the row before it"),
        ((times < lo) | (times > hi), lambda i: f"is outside [{iso(lo)}, {iso(hi)}]"),
        (times > server_ms, lambda i: f"is after the server clock {iso(server_ms)}"),
        ((values < 0) if spec.oi else np.zeros(len(values), bool), lambda i: "is negative"),
    )
    for wrong, say in checks:
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            raise row_bad(i, say(i))
    return times, values, server_ms


FUNDING_SPEC = _Spec(
    "funding", "fundingRateTimestamp", "fundingRate", MINUTE_MS, 0, False, LIMIT * HOUR_MS
)
OI_SPEC = _Spec(
    "open interest", "timestamp", "openInterest", OI_STEP_MS, OI_STEP_MS, True,
    LIMIT * OI_STEP_MS,
)  # fmt: skip


def _frame(
    columns: tuple[str, str, str], symbol: str, times: np.ndarray, values: np.ndarray
) -> pl.DataFrame:
    """(symbol, time as UTC Datetime(us), value), oldest first."""
    import numpy as np
    import polars as pl

    return pl.DataFrame(
        {
            columns[0]: pl.Series([symbol] * len(times), dtype=pl.String),
            columns[1]: pl.Series(times.astype(np.int64) * 1000).cast(pl.Datetime("us", "UTC")),
            columns[2]: pl.Series(values, dtype=pl.Float64),
        }
    )


def connect(settings: Settings, endpoint: Endpoint) -> BybitContext:
    """The context client at the home's source (as `bybit.connect` for candles)."""
    b = settings.bybit
    return BybitContext(
        endpoint.rest_url,
        category=b.category,
        spot_legs={k: (v.symbol, v.multiplier) for k, v in b.spot_legs.items()},
        ws_url=endpoint.ws_url,
        **b.client_options(),
    )

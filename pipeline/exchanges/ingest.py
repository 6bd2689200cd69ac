"""Ingest closed 1m candles from each configured venue into `klines_1m`.

Plain Python (no Dagster): the asset, the benchmark and the tests call the same function.
A range is fetched in ~1000-minute windows by a few threads (every symbol's windows in one
pool, paced by the exchange's rate limit: `ratelimit.Pacer`), then written in chunks; each
chunk replaces exactly its time range of one venue's symbols in one transaction, so a retry
or a re-run rewrites the same rows, another venue's rows are never touched, and a crash
leaves every chunk either old or new. Progress is reported as windows arrive, with each
market's minutes fetched so far (`markets`) for the structured progress records.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.config import Settings
from pipeline.exchanges.protocol import Endpoint
from pipeline.exchanges.sources import verify, warehouse_for
from pipeline.markets import Market, by_venue
from warehouse import Replacement

if TYPE_CHECKING:
    import polars as pl

    from pipeline.exchanges.protocol import Exchange

MINUTE = dt.timedelta(minutes=1)
WINDOW = 1000 * MINUTE  # one exchange page
Progress = Callable[..., None]  # (done, total, note, markets={market: minutes fetched})
PROGRESS_EVERY_S = 1.0  # at most one report a second while windows arrive (plus chunk ends)
OnWindow = Callable[[str, dt.datetime, dt.datetime], None]
# One venue's rows of a time range: what every replacement of `klines_1m`/`kline_gaps` scopes.
VENUE_WHERE = "exchange = ? AND symbol IN ({marks}) AND open_time >= ? AND open_time < ?"


@dataclass
class IngestSummary:
    """What an ingest wrote, for the asset's metadata and the command line; keyed by market."""

    start: dt.datetime
    end: dt.datetime
    rows: int = 0
    gaps: int = 0
    source: str = ""
    first: dict[Market, str] = field(default_factory=dict)
    last: dict[Market, str] = field(default_factory=dict)
    rows_by_market: dict[Market, int] = field(default_factory=dict)


def windows(start: dt.datetime, end: dt.datetime, size: dt.timedelta = WINDOW):
    """Consecutive [a, b) windows covering [start, end)."""
    a = start
    while a < end:
        b = min(a + size, end)
        yield a, b
        a = b


def fetch(
    client: Exchange,
    symbols: list[str],
    start: dt.datetime,
    end: dt.datetime,
    closed_by: dt.datetime | None = None,
    workers: int = 4,
    on_window: OnWindow | None = None,
    *,
    get: Callable[..., pl.DataFrame] | None = None,
    size: dt.timedelta = WINDOW,
) -> pl.DataFrame:
    """All closed candles in [start, end) for `symbols`, fetched page-sized windows in
    parallel; `on_window(symbol, a, b)` (in the calling thread) as each window arrives.

    `get(symbol, a, b, closed_by=...)` fetches another series the same way (default
    `client.fetch_klines`; the market context's funding and open interest), `size` its page's
    span; the frame is sorted by its first two columns (symbol, time)."""
    import polars as pl

    get = get or client.fetch_klines
    jobs = [(s, a, b) for s in symbols for a, b in windows(start, end, size)]
    parts: list[pl.DataFrame] = []
    if len(jobs) == 1:
        parts = [get(*jobs[0], closed_by=closed_by)]
        if on_window:
            on_window(*jobs[0])
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(get, *j, closed_by=closed_by): j for j in jobs}
            for future in as_completed(futures):
                parts.append(future.result())
                if on_window:
                    on_window(*futures[future])
    parts = [p for p in parts if p.height]
    if not parts:
        return get(symbols[0], start, start, closed_by=closed_by)  # empty, typed
    return pl.concat(parts).sort(parts[0].columns[:2])


def ingest(
    settings: Settings,
    endpoint: Endpoint,
    start: dt.datetime,
    end: dt.datetime,
    *,
    markets: list[Market] | None = None,
    closed_by: dt.datetime | None = None,
    chunk: dt.timedelta = dt.timedelta(days=30),
    progress: Progress | None = None,
    write_guard: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> IngestSummary:
    """Fetch [start, end) for every configured market (or `markets`) and replace that range of
    each venue's symbols in the warehouse.

    Minutes the exchange has no candle for are recorded in `kline_gaps` in the same
    transaction, so checks can tell an exchange outage from a minute the pipeline lost.
    `write_guard` wraps only the writes (the Dagster layer holds its DuckDB pool slot there).
    The exchange is asked who it is first: candles of another source are never written.
    """
    from pipeline.exchanges import client

    verify(endpoint)
    wh = warehouse_for(settings, endpoint)
    venues = by_venue(settings.markets if markets is None else markets)
    summary = IngestSummary(start, end, source=endpoint.label)
    total = int((end - start) / MINUTE) * sum(len(v) for v in venues.values())
    tracker = _Tracker(progress, total, int((end - start) / MINUTE))
    for venue, symbols in venues.items():
        exchange = client(venue, settings, endpoint)
        try:
            for a, b in windows(start, end, chunk):
                note = f"{venue} {a:%Y-%m-%d %H:%M} → {b:%Y-%m-%d %H:%M}"
                summary.rows += _ingest_chunk(
                    wh, exchange, venue, symbols, a, b, closed_by, endpoint, summary, write_guard,
                    lambda s, wa, wb, v=venue: tracker.window(v, s, wa, wb),
                    lambda note=note: tracker.report(f"{note} fetched, writing"),
                )  # fmt: skip
                tracker.report(f"{note} written")
        finally:
            exchange.close()
    return summary


class _Tracker:
    """Minutes fetched per market, reported through `progress` at most once a second while
    windows arrive, and at every chunk written."""

    def __init__(self, progress: Progress | None, total: int, per_market: int) -> None:
        self.progress, self.total, self.per_market = progress, total, per_market
        self.markets: dict[str, int] = {}
        self.done = 0
        self._last = time.monotonic()

    def window(self, venue: str, symbol: str, a: dt.datetime, b: dt.datetime) -> None:
        n = int((b - a) / MINUTE)
        key = f"{venue}:{symbol}"
        self.markets[key] = self.markets.get(key, 0) + n
        self.done += n
        if time.monotonic() - self._last >= PROGRESS_EVERY_S:
            self.report(f"{key} → {b:%Y-%m-%d %H:%M}")

    def report(self, note: str) -> None:
        if self.progress is None:
            return
        self._last = time.monotonic()
        complete = sum(1 for n in self.markets.values() if n >= self.per_market)
        note = f"{complete}/{len(self.markets)} markets complete; {note}"
        self.progress(self.done, self.total, note, markets=dict(self.markets))


def _ingest_chunk(
    wh: Any,
    exchange: Exchange,
    venue: str,
    symbols: list[str],
    a: dt.datetime,
    b: dt.datetime,
    closed_by: dt.datetime | None,
    endpoint: Endpoint,
    summary: IngestSummary,
    write_guard: Callable[[], AbstractContextManager[Any]],
    on_window: OnWindow | None = None,
    on_fetched: Callable[[], None] | None = None,
) -> int:
    """One venue's [a, b): fetched (`on_fetched()` then), then its candles and confirmed gaps
    replaced together."""
    import polars as pl

    from pipeline.quality.checks import missing_minutes

    ts = pl.Datetime("us", "UTC")
    frame = fetch(exchange, symbols, a, b, closed_by=closed_by, on_window=on_window)
    if on_fetched:
        on_fetched()
    now = dt.datetime.now(dt.UTC)
    frame = frame.with_columns(
        exchange=pl.lit(venue), source=pl.lit(endpoint.label), ingested_at=pl.lit(now, dtype=ts)
    )
    gaps = [(s, t) for s, ts_ in missing_minutes(frame, symbols, a, b).items() for t in ts_]
    gap_frame = pl.DataFrame(
        {"symbol": [g[0] for g in gaps], "open_time": [g[1] for g in gaps]},
        schema={"symbol": pl.String, "open_time": ts},
    ).with_columns(exchange=pl.lit(venue), checked_at=pl.lit(now, dtype=ts))
    where = VENUE_WHERE.format(marks=", ".join("?" * len(symbols)))
    params = (venue, *symbols, a, b)
    with write_guard():
        wh.replace_many(
            [
                Replacement("klines_1m", frame, where, params),
                Replacement("kline_gaps", gap_frame, where, params),
            ]
        )
    summary.gaps += len(gaps)
    for sym, sub in frame.group_by("symbol"):
        m = Market(venue, str(sym[0]))
        summary.rows_by_market[m] = summary.rows_by_market.get(m, 0) + sub.height
        summary.first.setdefault(m, sub["open_time"].min().isoformat())
        summary.last[m] = sub["open_time"].max().isoformat()
    return frame.height

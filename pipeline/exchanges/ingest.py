"""Ingest closed 1m candles from each configured venue into `klines_1m`.

Plain Python (no Dagster): the asset, the benchmark and the tests call the same function.
A range is fetched in ~1000-minute windows by a few threads, then written in chunks; each
chunk replaces exactly its time range of one venue's symbols in one transaction, so a retry
or a re-run rewrites the same rows, another venue's rows are never touched, and a crash
leaves every chunk either old or new.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
Progress = Callable[[int, int, str], None]
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
) -> pl.DataFrame:
    """All closed candles in [start, end) for `symbols`, fetched page-sized windows in parallel."""
    import polars as pl

    jobs = [(s, a, b) for s in symbols for a, b in windows(start, end)]
    if len(jobs) == 1:
        parts = [client.fetch_klines(*jobs[0], closed_by=closed_by)]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(lambda j: client.fetch_klines(*j, closed_by=closed_by), jobs))
    parts = [p for p in parts if p.height]
    if not parts:
        return client.fetch_klines(symbols[0], start, start, closed_by=closed_by)  # empty, typed
    return pl.concat(parts).sort("symbol", "open_time")


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
    done = 0
    for venue, symbols in venues.items():
        exchange = client(venue, settings, endpoint)
        try:
            for a, b in windows(start, end, chunk):
                summary.rows += _ingest_chunk(
                    wh, exchange, venue, symbols, a, b, closed_by, endpoint, summary, write_guard
                )
                done += int((b - a) / MINUTE) * len(symbols)
                if progress:
                    note = f"{venue} {a:%Y-%m-%d %H:%M} → {b:%Y-%m-%d %H:%M}"
                    progress(done, total, note)
        finally:
            exchange.close()
    return summary


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
) -> int:
    """One venue's [a, b): fetched, then its candles and confirmed gaps replaced together."""
    import polars as pl

    from pipeline.quality.checks import missing_minutes

    ts = pl.Datetime("us", "UTC")
    frame = fetch(exchange, symbols, a, b, closed_by=closed_by)
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

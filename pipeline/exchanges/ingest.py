"""Ingest closed 1m candles from the exchange into `bybit_klines_1m`.

Plain Python (no Dagster): the asset, the benchmark and the tests call the same function.
A range is fetched in ~1000-minute windows by a few threads, then written in chunks; each
chunk replaces exactly its time range in one transaction, so a retry or a re-run rewrites
the same rows and a crash leaves every chunk either old or new.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.config import Settings
from pipeline.exchanges.sources import Endpoint, verify, warehouse_for
from warehouse import Replacement

if TYPE_CHECKING:
    import polars as pl

    from pipeline.exchanges.bybit import BybitClient

MINUTE = dt.timedelta(minutes=1)
WINDOW = 1000 * MINUTE  # one exchange page
Progress = Callable[[int, int, str], None]


@dataclass
class IngestSummary:
    """What an ingest wrote, for asset metadata and the command line."""

    start: dt.datetime
    end: dt.datetime
    rows: int = 0
    gaps: int = 0
    source: str = ""
    first: dict[str, str] = field(default_factory=dict)
    last: dict[str, str] = field(default_factory=dict)
    rows_by_symbol: dict[str, int] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        return {
            "rows_written": self.rows,
            "exchange_gaps_found": self.gaps,
            "range": f"[{self.start.isoformat()}, {self.end.isoformat()})",
            "source": self.source,
            "first_open_time": self.first,
            "last_open_time": self.last,
            "rows_by_symbol": self.rows_by_symbol,
        }


def client_for(settings: Settings, endpoint: Endpoint) -> BybitClient:
    from pipeline.exchanges import client

    return client("bybit", settings, endpoint)


def windows(start: dt.datetime, end: dt.datetime, size: dt.timedelta = WINDOW):
    """Consecutive [a, b) windows covering [start, end)."""
    a = start
    while a < end:
        b = min(a + size, end)
        yield a, b
        a = b


def fetch(
    client: BybitClient,
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
    closed_by: dt.datetime | None = None,
    chunk: dt.timedelta = dt.timedelta(days=30),
    progress: Progress | None = None,
    write_guard: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> IngestSummary:
    """Fetch [start, end) for every configured symbol and replace that range in the warehouse.

    Minutes the exchange has no candle for are recorded in `kline_gaps` in the same
    transaction, so checks can tell an exchange outage from a minute the pipeline lost.
    `write_guard` wraps only the writes (the Dagster layer holds its DuckDB pool slot there).
    The exchange is asked who it is first: candles of another source are never written.
    """
    import polars as pl

    from pipeline.quality.checks import missing_minutes

    verify(endpoint)
    client = client_for(settings, endpoint)
    wh = warehouse_for(settings, endpoint)
    symbols = settings.symbols
    summary = IngestSummary(start, end, source=endpoint.label)
    total = int((end - start) / MINUTE) * len(symbols)
    done = 0
    marks = ", ".join("?" * len(symbols))
    where = f"symbol IN ({marks}) AND open_time >= ? AND open_time < ?"
    for a, b in windows(start, end, chunk):
        frame = fetch(client, symbols, a, b, closed_by=closed_by)
        now = dt.datetime.now(dt.UTC)
        frame = frame.with_columns(
            source=pl.lit(endpoint.label), ingested_at=pl.lit(now, dtype=pl.Datetime("us", "UTC"))
        )
        gaps = [(s, t) for s, ts in missing_minutes(frame, symbols, a, b).items() for t in ts]
        gap_frame = pl.DataFrame(
            {"symbol": [g[0] for g in gaps], "open_time": [g[1] for g in gaps]},
            schema={"symbol": pl.String, "open_time": pl.Datetime("us", "UTC")},
        ).with_columns(checked_at=pl.lit(now, dtype=pl.Datetime("us", "UTC")))
        with write_guard():
            summary.rows += (
                wh.replace_many(
                    [
                        Replacement("bybit_klines_1m", frame, where, (*symbols, a, b)),
                        Replacement("kline_gaps", gap_frame, where, (*symbols, a, b)),
                    ]
                )
                - gap_frame.height
            )
        summary.gaps += len(gaps)
        for sym, sub in frame.group_by("symbol"):
            s = str(sym[0])
            summary.rows_by_symbol[s] = summary.rows_by_symbol.get(s, 0) + sub.height
            summary.first.setdefault(s, sub["open_time"].min().isoformat())
            summary.last[s] = sub["open_time"].max().isoformat()
        done += int((b - a) / MINUTE) * len(symbols)
        if progress:
            progress(done, total, f"{a:%Y-%m-%d %H:%M} → {b:%Y-%m-%d %H:%M}: {frame.height} rows")
    return summary

"""Fetch the market context of a range and replace exactly that range in the warehouse.

Backfills (and every run that is not the live sensor's) fetch [start, end) of every table
with the 1m candles' paging (`pipeline.exchanges.ingest.fetch`: page-sized windows, a few
threads, the exchange's rate limit) and replace that range of each venue's symbols in ONE
transaction (`warehouse.Replacement`: a re-run rewrites the same rows).

A live-sensor run (`follow=True`) keeps the tables current cheaply: each starts after the
newest row the day already holds (so a minute missed by a failed run is fetched by the next;
the previous run's read-back says where that is, so no warehouse read is needed before),
and funding and open interest are asked only when a value is due (a grid time newer than the
newest stored one is known by the clock): funding when one of the venue's markets has a
settlement due on its own interval (as its instruments state it, `DUE`), open interest every
5 minutes, not every minute. The spot
candles are fetched every run, from the same clock as the perpetual's.

Before spot or funding, each venue's perpetuals are described once (`legs`: their spot pair,
multiplier and funding interval, pipeline/context/legs.py; two instrument listings, or what
the day's previous run found, `legs=`). A perpetual without a spot pair is named in the
summary with how to configure one, and its spot candles are not fetched (basis_bps NULL).

A venue that cannot supply a table says so (`Unsupported`): recorded in the summary, never
skipped silently. In a live-sensor run an exchange failure is recorded too (the next run asks
again from the newest stored row); anywhere else it raises. Like the candles' ingest, the
exchange is asked who it is first: rows of another source are never written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.context.tables import FUNDING, SPOT, TABLES, Table
from pipeline.exchanges.protocol import ExchangeError, Unsupported
from pipeline.markets import Market, by_venue
from warehouse import Replacement

if TYPE_CHECKING:
    import polars as pl

    from pipeline.config import Settings
    from pipeline.context.legs import Leg
    from pipeline.exchanges.protocol import Endpoint, MarketContext
    from warehouse import Warehouse

WHERE = "exchange = ? AND symbol IN ({marks}) AND {time} >= ? AND {time} < ?"


@dataclass
class ContextSummary:
    """What a run fetched and wrote, per table; what a venue could not supply, and (live
    runs only) what failed, each keyed `venue:table`; the legs of each venue's perpetuals
    (when spot or funding was asked)."""

    rows: dict[str, int] = field(default_factory=dict)
    fetched: dict[str, str] = field(default_factory=dict)  # table -> "[a, b)" or "not due"
    unsupported: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    legs: dict[str, dict[str, Leg]] = field(default_factory=dict)  # venue -> symbol -> leg

    def intervals(self) -> dict[str, dt.timedelta | None]:
        """Each described market's funding interval (`venue:symbol`), None if not stated."""
        return {f"{v}:{s}": g.funding_interval for v, d in self.legs.items() for s, g in d.items()}


Newest = dict[str, dict[str, "dt.datetime | None"]]  # venue -> table (or DUE) -> time
DUE = "funding_due"  # the next settlement any market of the venue has due


def newest_in(
    frames: dict[str, pl.DataFrame],
    venue: str,
    symbols: list[str],
    legs: dict[str, Leg] | None = None,
) -> dict[str, dt.datetime | None]:
    """Per table, the newest time in `frames` (a day's rows) that EVERY symbol of the venue
    has, None when one has none: where a live run goes on from. With the symbols' `legs`,
    also `DUE`: the earliest of each symbol's newest funding + its own interval (a venue of
    8- and 4-hour markets is asked for funding when one is due, not every minute between)."""
    import polars as pl

    out: dict[str, dt.datetime | None] = {}
    for t in TABLES:
        mine = frames[t.name].filter(
            (pl.col("exchange") == venue) & pl.col("symbol").is_in(symbols)
        )
        per = mine.group_by("symbol").agg(pl.col(t.time).max())
        out[t.name] = per[t.time].min() if per.height == len(symbols) else None
        if t is FUNDING and legs and out[t.name] is not None:
            steps = [g.funding_interval for g in legs.values() if g.funding_interval]
            newest = dict(per.iter_rows())
            out[DUE] = min(
                newest[s] + ((g.funding_interval if (g := legs.get(s)) else None) or min(steps))
                for s in symbols
            ) if steps else None  # fmt: skip
    return out


def newest_stored(
    wh: Warehouse,
    venue: str,
    symbols: list[str],
    day: dt.datetime,
    end: dt.datetime,
    legs: dict[str, Leg] | None = None,
) -> dict[str, dt.datetime | None]:
    """`newest_in` the warehouse's rows of [day, end)."""
    frames = {
        t.name: wh.query(
            f"SELECT exchange, symbol, max({t.time}) AS {t.time} FROM {t.name} WHERE"
            f" exchange = ? AND {t.time} >= ? AND {t.time} < ? GROUP BY ALL",
            [venue, day, end],
        )
        for t in TABLES
    }
    return newest_in(frames, venue, symbols, legs)


def plan(
    table: Table,
    start: dt.datetime,
    end: dt.datetime,
    closed_by: dt.datetime,
    day: dt.datetime,
    newest: dt.datetime | None,
    step: dt.timedelta | None = None,
    due: dt.datetime | None = None,
) -> dt.datetime | None:
    """Where a live-sensor run fetches `table` from (to `end`), or None when nothing is due;
    `step` is the grid (default the table's: funding passes the venue's shortest interval),
    `due` the next time a row is due when known (funding: `newest_in`'s `DUE`)."""
    step = step or table.step
    after = day if newest is None else due or newest + step
    if table is SPOT:
        return min(start, after)  # the run's own minutes always, and any the day missed
    return after if after <= table.last_due(end, closed_by, step) else None


def fetch_context(
    wh: Warehouse,
    settings: Settings,
    endpoint: Endpoint,
    start: dt.datetime,
    end: dt.datetime,
    *,
    closed_by: dt.datetime,
    day: dt.datetime,
    follow: bool = False,
    markets: list[Market] | None = None,
    newest: Newest | None = None,
    read_guard: Callable[[], AbstractContextManager[Any]] = nullcontext,
    tables: tuple[Table, ...] = TABLES,
    legs: dict[str, dict[str, Leg]] | None = None,
) -> tuple[ContextSummary, list[Replacement]]:
    """Fetch [start, end) of every table for every configured market (module doc): what was
    fetched and the replacements that write it (for the caller to write in one transaction).
    `day` is the partition's first instant (a live run's tables start no earlier). A live
    run goes on from `newest` (what the previous run found stored: no warehouse read) or,
    for a venue it lacks, from the warehouse's newest rows, read under `read_guard`; `legs`
    are the perpetuals' legs a previous run found (asked again for any it lacks)."""
    from pipeline.exchanges import market_context
    from pipeline.exchanges.sources import verify

    verify(endpoint)  # the home's source, or nothing is written (as for the candles)
    summary = ContextSummary()
    items: list[Replacement] = []
    for venue, symbols in by_venue(settings.markets if markets is None else markets).items():
        ctx = market_context(venue, settings, endpoint)
        try:
            mine = _legs(ctx, venue, symbols, tables, (legs or {}).get(venue), follow, summary)
            last = (newest or {}).get(venue)
            if follow and last is None:
                with read_guard():
                    last = newest_stored(wh, venue, symbols, day, end, mine)
            for table in tables:
                a, step, key = start, None, f"{venue}:{table.name}"
                if table is FUNDING:
                    step = min(
                        filter(None, (g.funding_interval for g in mine.values())), default=None
                    )
                if follow and last is not None:
                    due = last.get(DUE) if table is FUNDING else None
                    a = plan(table, start, end, closed_by, day, last[table.name], step, due)
                if a is None or a >= end:
                    summary.fetched.setdefault(table.name, "not due")
                    continue
                asked = symbols
                if table is SPOT:  # a perpetual without a spot pair: named, not fetched
                    refused = [g.how for s, g in mine.items() if g.spot is None]
                    if refused:
                        summary.unsupported[key] = "; ".join(refused)
                    asked = [s for s in symbols if s not in mine or mine[s].spot is not None]
                    if not asked:
                        continue
                try:
                    frame = _fetch(ctx, table, asked, a, end, closed_by)
                except Unsupported as err:
                    summary.unsupported[key] = err.why
                    continue
                except ExchangeError as err:
                    if not follow:
                        raise
                    summary.failed[key] = str(err)
                    continue
                frame = _stamp(frame, table, venue, endpoint.label)
                where = WHERE.format(marks=", ".join("?" * len(asked)), time=table.time)
                items.append(Replacement(table.name, frame, where, (venue, *asked, a, end)))
                summary.fetched[table.name] = f"[{a:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M})"
                summary.rows[table.name] = summary.rows.get(table.name, 0) + frame.height
        finally:
            ctx.close()
    return summary, items


def _legs(
    ctx: MarketContext,
    venue: str,
    symbols: list[str],
    tables: tuple[Table, ...],
    known: dict[str, Leg] | None,
    follow: bool,
    summary: ContextSummary,
) -> dict[str, Leg]:
    """The venue's legs when spot or funding is asked ({} otherwise, or when a live run could
    not list the instruments: recorded, the next run asks again); kept in the summary."""
    if SPOT not in tables and FUNDING not in tables:
        return {}
    try:
        got = ctx.legs(symbols, known)
    except ExchangeError as err:
        if not follow:
            raise
        summary.failed[f"{venue}:instruments"] = str(err)
        return {}
    if got:
        summary.legs[venue] = got
    return got


def ingest_context(
    wh: Warehouse,
    settings: Settings,
    endpoint: Endpoint,
    start: dt.datetime,
    end: dt.datetime,
    **kw: Any,
) -> ContextSummary:
    """`fetch_context`, then its replacements written in ONE transaction."""
    summary, items = fetch_context(wh, settings, endpoint, start, end, **kw)
    if items:
        wh.replace_many(items)
    return summary


def _fetch(
    ctx: MarketContext,
    table: Table,
    symbols: list[str],
    a: dt.datetime,
    b: dt.datetime,
    closed_by: dt.datetime,
) -> pl.DataFrame:
    """One table's rows of [a, b) for `symbols`, paged like the 1m candles."""
    from pipeline.exchanges.bybit_context import FUNDING_WINDOW, OI_WINDOW
    from pipeline.exchanges.ingest import fetch

    if table is SPOT:
        return fetch(ctx, symbols, a, b, closed_by=closed_by, get=ctx.fetch_spot)  # type: ignore[arg-type]
    if table is FUNDING:
        get, size = ctx.fetch_funding, FUNDING_WINDOW
    else:
        get, size = ctx.fetch_open_interest, OI_WINDOW
    return fetch(ctx, symbols, a, b, closed_by=closed_by, get=get, size=size)  # type: ignore[arg-type]


def _stamp(frame: pl.DataFrame, table: Table, venue: str, source: str) -> pl.DataFrame:
    """The table's own columns: exchange, known_at (not for spot: its close_time is), source
    (spot), ingested_at."""
    import polars as pl

    now = pl.lit(dt.datetime.now(dt.UTC), dtype=pl.Datetime("us", "UTC"))
    frame = frame.with_columns(exchange=pl.lit(venue), ingested_at=now)
    if table is SPOT:
        return frame.with_columns(source=pl.lit(source))
    return frame.with_columns(known_at=pl.col(table.time) + table.known_after)

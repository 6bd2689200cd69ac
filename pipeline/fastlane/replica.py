"""The fast lane's starting point, read from the warehouse REPLICA in one short read-only
connection (a handful of set-based queries, nothing computed while it is open), so the
pipeline's replica sync is never held up for long.

Per symbol the lane starts at the minute after the newest one the pipeline has answered for
(a stored candle or a minute the venue confirmed absent, as `candles.build.as_of`). The day
that minute belongs to is recomputed from the 1m candles; the bars of earlier days come from
the `candles` and `indicators` tables as the pipeline stored them, once the replica holds that
day's final rows (the newest bar of the finest configured timeframe has its indicators row).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.candles.timeframes import (
    MINUTE_MS,
    bucket_end,
    bucket_start,
    day_bounds_ms,
    from_ms,
    to_ms,
)
from warehouse.identifiers import ident

if TYPE_CHECKING:
    import polars as pl

    from pipeline.fastlane.plan import Plan

ALL_TIME = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)


@dataclass
class Snapshot:
    """What the replica holds for some symbols of one venue."""

    first: dict[str, dt.datetime]  # first stored minute (pipeline.indicators.history)
    next_ms: dict[str, int]  # open time (ms) of the minute each symbol needs next
    day: dict[str, dt.date]  # the day that minute belongs to
    unready: dict[str, str]  # symbols whose earlier days are not final in the replica yet
    klines: pl.DataFrame  # 1m candles each symbol's day and forming buckets need
    gap_runs: pl.DataFrame  # runs of confirmed-absent minutes: symbol, start, minutes
    stored: dict[str, pl.DataFrame]  # per timeframe read: bars of earlier days, with values

    def unknown_minutes(self, sym: str, lo: int, hi: int) -> int:
        """Minutes in [lo, hi) (ms), from the symbol's first stored one on, that are neither
        stored nor confirmed absent: the pipeline may still fill them."""
        import numpy as np
        import polars as pl

        lo = max(lo, to_ms(self.first[sym]))
        if hi <= lo:
            return 0
        t = self.klines.filter(pl.col("symbol") == sym)["open_time"].dt.epoch("ms").to_numpy()
        stored = int(np.count_nonzero((t >= lo) & (t < hi)))
        runs = self.gap_runs.filter(pl.col("symbol") == sym)
        start = runs["start"].dt.epoch("ms").to_numpy()
        end = start + runs["minutes"].to_numpy() * MINUTE_MS
        confirmed = int(np.clip(np.minimum(end, hi) - np.maximum(start, lo), 0, None).sum())
        return (hi - lo) // MINUTE_MS - stored - confirmed // MINUTE_MS


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def read_snapshot(wh: Any, exchange: str, symbols: list[str], plan: Plan) -> Snapshot:
    """Everything `bootstrap` needs for `symbols`, in one replica connection."""
    import duckdb
    import polars as pl

    from pipeline.indicators.build import _GAP_RUNS

    marks = _marks(len(symbols))
    with wh.reader() as con:

        def q(sql: str, params: list[Any]) -> pl.DataFrame:
            return con.sql(sql, params=params).pl()

        ends = q(
            "SELECT symbol, min(open_time) AS first, max(open_time) AS last FROM klines_1m"
            f" WHERE exchange = ? AND symbol IN ({marks}) GROUP BY symbol",
            [exchange, *symbols],
        )
        gaps_last = q(
            "SELECT symbol, max(open_time) AS last FROM kline_gaps"
            f" WHERE exchange = ? AND symbol IN ({marks}) GROUP BY symbol",
            [exchange, *symbols],
        )
        first = {s: t for s, t, _ in ends.iter_rows()}
        newest = {s: to_ms(t) + MINUTE_MS for s, _, t in ends.iter_rows()}
        for s, t in gaps_last.iter_rows():
            if s in newest:
                newest[s] = max(newest[s], to_ms(t) + MINUTE_MS)
        day = {s: from_ms(ms).date() for s, ms in newest.items()}
        empty_rest = (pl.DataFrame(), pl.DataFrame(), {})
        if not newest:
            return Snapshot(first, newest, day, {}, *empty_rest)
        since = min(plan.forming_start_ms(day[s], ms) for s, ms in newest.items())
        klines = q(
            "SELECT symbol, open_time, close_time, open, high, low, close, volume, turnover"
            f" FROM klines_1m WHERE exchange = ? AND symbol IN ({marks}) AND open_time >= ?"
            " ORDER BY symbol, open_time",
            [exchange, *symbols, from_ms(since)],
        )
        keep = {
            t.name: min(plan.keep_from_ms(t.name, d) for d in day.values()) for t in plan.timeframes
        }
        gap_runs = q(_GAP_RUNS, [exchange, from_ms(min(keep.values())), ALL_TIME])
        last_day_start = from_ms(max(day_bounds_ms(d)[0] for d in day.values()))
        try:
            stored = {
                tf: q(
                    _stored_sql(plan, tf, len(symbols)),
                    [exchange, tf, *symbols, from_ms(lo), last_day_start],
                )
                for tf, lo in keep.items()
            }
        except duckdb.BinderException:  # no indicators written yet: the columns are missing
            why = "the replica's indicators table lacks columns the personalities read (yet)"
            return Snapshot(first, newest, day, dict.fromkeys(newest, why), *empty_rest)
        unready = _unready(q, exchange, plan, day)
    return Snapshot(first, newest, day, unready, klines, gap_runs, stored)


def _stored_sql(plan: Plan, tf: str, n: int) -> str:
    """Candles LEFT JOIN indicators of one timeframe (`read_frames`), the columns kept only."""
    cols = [f"c.{ident(c)}" for c in ("n_1m", "complete", *plan.candles[tf])]
    cols += [f"i.{ident(c)}" for c in plan.indicators[tf]]
    return (
        f"SELECT c.symbol, c.open_time, c.close_time, {', '.join(cols)} FROM candles c"
        " LEFT JOIN indicators i USING (exchange, symbol, timeframe, open_time)"
        f" WHERE c.exchange = ? AND c.timeframe = ? AND c.symbol IN ({_marks(n)})"
        " AND c.open_time >= ? AND c.close_time <= ? ORDER BY c.symbol, c.open_time"
    )


def _unready(q: Any, exchange: str, plan: Plan, day: dict[str, dt.date]) -> dict[str, str]:
    """Symbols whose day before is not final in the replica: the bar of the finest configured
    timeframe holding the newest minute before the day has no indicators row yet (the
    pipeline writes a run's candles, then its indicators)."""
    finest = min(plan.configured, key=lambda t: (t.kind == "month", t.months, t.minutes))
    pairs = [(s, from_ms(day_bounds_ms(d)[0])) for s, d in day.items()]
    values = ", ".join("(?, ?)" for _ in pairs)
    flat = [v for p in pairs for v in p]
    before = q(
        f"SELECT k.symbol, max(k.open_time) AS last FROM klines_1m k JOIN (VALUES {values})"
        " w(symbol, d0) ON k.symbol = w.symbol AND k.open_time < w.d0"
        " WHERE k.exchange = ? GROUP BY k.symbol",
        [*flat, exchange],
    )
    done = q(
        f"SELECT x.symbol, max(x.close_time) AS last FROM indicators x JOIN (VALUES {values})"
        " w(symbol, d0) ON x.symbol = w.symbol AND x.close_time <= w.d0"
        " WHERE x.exchange = ? AND x.timeframe = ? GROUP BY x.symbol",
        [*flat, exchange, finest.name],
    )
    have = {s: to_ms(t) for s, t in done.iter_rows()}
    out = {}
    for s, last in before.iter_rows():
        close = bucket_end(finest, bucket_start(finest, to_ms(last)))
        if close <= day_bounds_ms(day[s])[0] and have.get(s, -1) < close:
            out[s] = (
                f"the replica has no {finest.name} indicators for {from_ms(close):%Y-%m-%d %H:%M}"
                " yet (the pipeline has not finished that day)"
            )
    return out

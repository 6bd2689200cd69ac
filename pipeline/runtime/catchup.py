"""What a restarted home is missing, and the runs that fill it in before going live.

`signalbox up` keeps the last `live.history_days` days. On a warm home most of them are
stored already: only days never stored (or stored with minutes missing, or whose signals were
never computed) and the tail from the last stored candle to now need work. A short tail is the
live sensor's (it resumes from the last stored candle, sensors/live.py); anything longer is
one run of the `backfill` job from the tail's day on, ingesting only the missing minutes.

Plain Python: the warehouse is read here, Dagster's materialized partitions are passed in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.exchanges.live import DAY, LIVE_LAG, MINUTE, behind, describe
from pipeline.markets import Market

SENSOR_REACH = DAY  # a tail up to this long is left to the live sensor


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def markets_in(markets: Sequence[Market]) -> tuple[str, list[str]]:
    """A WHERE term selecting rows of `markets` (by exchange and symbol), and its parameters."""
    rows = ", ".join("(?, ?)" for _ in markets)
    return f"(exchange, symbol) IN (SELECT * FROM (VALUES {rows}))", [
        v for m in markets for v in (m.exchange, m.symbol)
    ]


def missing_minutes_by_day(
    con: Any, markets: Sequence[Market], start: dt.datetime, end: dt.datetime
) -> dict[dt.date, int]:
    """Per UTC day in [start, end), the minutes of `markets` neither stored in `klines_1m`
    nor confirmed absent by the exchange (`kline_gaps`); days with none missing are left
    out. `con`: a DuckDB connection on the warehouse or its replica."""
    if end <= start or not markets:
        return {}
    term, params = markets_in(markets)
    rows = con.execute(
        "SELECT CAST(open_time AS DATE) AS day, count(*) FROM ("
        f" SELECT exchange, symbol, open_time FROM klines_1m WHERE {term}"
        " AND open_time >= ? AND open_time < ?"
        " UNION"
        f" SELECT exchange, symbol, open_time FROM kline_gaps WHERE {term}"
        " AND open_time >= ? AND open_time < ?)"
        " GROUP BY ALL",
        [*params, start, end, *params, start, end],
    ).fetchall()
    have = dict(rows)
    out = {}
    day = start.date()
    while _midnight(day) < end:
        lo, hi = max(start, _midnight(day)), min(end, _midnight(day) + DAY)
        missing = int((hi - lo) / MINUTE) * len(markets) - have.get(day, 0)
        if missing > 0:
            out[day] = missing
        day += dt.timedelta(days=1)
    return out


def computed_days(
    con: Any, markets: Sequence[Market], start: dt.datetime, end: dt.datetime
) -> set[dt.date]:
    """UTC days in [start, end) with stored 1m candles whose 1m indicators are all stored too:
    the warehouse's evidence that the day's run got past its candles and indicators."""
    term, params = markets_in(markets)
    rows = con.execute(
        "SELECT k.day FROM ("
        " SELECT CAST(open_time AS DATE) AS day, count(*) AS n FROM klines_1m"
        f" WHERE {term} AND open_time >= ? AND open_time < ? GROUP BY 1) k"
        " JOIN ("
        " SELECT CAST(open_time AS DATE) AS day, count(*) AS n FROM indicators"
        f" WHERE timeframe = '1m' AND {term} AND open_time >= ? AND open_time < ?"
        " GROUP BY 1) i USING (day) WHERE i.n >= k.n",
        [*params, start, end, *params, start, end],
    ).fetchall()
    return {r[0] for r in rows}


def last_candles(con: Any, markets: Sequence[Market]) -> dict[Market, dt.datetime]:
    """Per market, the open_time of its newest stored 1m candle (markets with none left out)."""
    term, params = markets_in(markets)
    rows = con.execute(
        f"SELECT exchange, symbol, max(open_time) FROM klines_1m WHERE {term} GROUP BY 1, 2",
        params,
    ).fetchall()
    return {Market(e, s): t.astimezone(dt.UTC) for e, s, t in rows if t is not None}


@dataclass(frozen=True)
class Run:
    """One `backfill` run over the days [first, last]; its 1m ingest starts at `ingest_from`
    (None: the whole days)."""

    first: dt.date
    last: dt.date
    ingest_from: dt.datetime | None
    why: str

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def run_config(self) -> dict | None:
        if self.ingest_from is None:
            return None
        start = {"start": self.ingest_from.isoformat()}
        return {"ops": {"klines_1m": {"config": start}}}

    def describe(self) -> str:
        since = f"{self.ingest_from:%Y-%m-%d %H:%M}" if self.ingest_from else f"{self.first}"
        span = since if since == f"{self.last}" else f"{since} → {self.last}"
        return f"backfilling {span}: {self.why}"


@dataclass
class CatchUp:
    """What `up` does before going live, and why."""

    now: dt.datetime  # the exchange's clock
    last: dt.datetime | None  # the oldest of the markets' newest stored candles
    tail_from: dt.datetime  # the first minute not stored after it (within the window)
    runs: list[Run] = field(default_factory=list)

    @property
    def tail(self) -> dt.timedelta:
        """How far the stored candles are behind the exchange's newest closed one."""
        return behind(self.now.replace(second=0, microsecond=0) - MINUTE, self.tail_from)

    @property
    def sensor_tail(self) -> bool:
        """Whether the tail is left to the live sensor (no run here covers it)."""
        return not any(r.last == self.now.date() for r in self.runs)

    def describe(self) -> str:
        if self.last is None:
            head = "cold home"
        else:
            fmt = "%H:%M" if self.last.date() == self.now.date() else "%Y-%m-%d %H:%M"
            head = f"warm home: last candle {self.last:{fmt}} UTC"
        if not self.runs and self.tail <= LIVE_LAG:
            return f"{head}, everything current: going live"
        parts = [r.describe() for r in self.runs]
        if self.sensor_tail and self.tail > LIVE_LAG:
            parts.append(f"catching up {_minutes(self.tail)} (the live sensor)")
        return f"{head}{':' if self.last is None else ';'} " + "; ".join(parts)


def _minutes(delta: dt.timedelta) -> str:
    mins = int(delta / MINUTE)
    return _n(mins, "minute") if mins < 120 else describe(delta)


def _n(n: int, unit: str) -> str:
    return f"{n} {unit}{'s' * (n != 1)}"


def plan_catchup(
    con: Any,
    markets: Sequence[Market],
    first_day: dt.date,
    now: dt.datetime,
    signals_done: Collection[str],
) -> CatchUp:
    """The runs that bring the days [first_day, today] up to `now` (the exchange's clock).

    `con`: a DuckDB connection on the warehouse; `signals_done`: the daily partitions
    (YYYY-MM-DD) of `signals` Dagster has materialized. A day whose candles are stored but
    whose run failed before its signals is done again; a day whose Dagster record is gone
    (purged with its live runs) counts as done when its indicators are all stored. The tail's
    own day needs no such check: whoever ingests the tail recomputes that day's candles,
    indicators and signals.
    """
    today = now.date()
    first_day = min(first_day, today)
    lasts = last_candles(con, markets)
    last = min(lasts.values()) if len(lasts) == len(markets) else None
    window_start = _midnight(first_day)
    tail_from = max(window_start, last + MINUTE) if last else window_start
    tail_day = tail_from.date()
    missing = missing_minutes_by_day(con, markets, window_start, tail_from)
    redo = {d: f"{_n(n, 'minute')} missing" for d, n in missing.items()}
    computed = computed_days(con, markets, window_start, _midnight(tail_day))
    day = first_day
    while day < tail_day:
        if day not in redo and day.isoformat() not in signals_done and day not in computed:
            redo[day] = "signals never computed"
        day += DAY
    runs = _ranges(redo)
    cu = CatchUp(now=now, last=last, tail_from=tail_from, runs=runs)
    if cu.tail > SENSOR_REACH:
        days = (today - tail_day).days + 1
        if last is None:
            why = f"{_n(days, 'day')} never stored"
        else:
            why = f"{_minutes(cu.tail)} since the last candle, {_n(days - 1, 'day')} never stored"
        start = tail_from if tail_from > _midnight(tail_day) else None
        if runs and runs[-1].last >= tail_day - DAY:  # contiguous: one run of whole days
            prev = runs.pop()
            start, why = None, f"{prev.why}, then {why}"
            tail_day = prev.first
        runs.append(Run(tail_day, today, start, why))
    return cu


def _ranges(why: dict[dt.date, str]) -> list[Run]:
    """Consecutive days as one run each."""
    out: list[Run] = []
    for d in sorted(why):
        if out and out[-1].last == d - DAY:
            prev = out.pop()
            out.append(Run(prev.first, d, None, f"{prev.days + 1} days incomplete"))
        else:
            out.append(Run(d, d, None, f"1 day incomplete ({why[d]})"))
    return out

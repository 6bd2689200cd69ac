"""Before a backtest runs: does the warehouse hold what the period needs?

Read from the read replica (never blocking the pipeline), per market (exchange, symbol): the
stored 1m candles and
the personality's stored signals in the period. A personality cannot signal until every
indicator its rules read has its derived warm-up (`pipeline.indicators.spec`) on its timeframe,
counted from the first stored candle: `swing` reads the 1h SMA 200, so it needs ~8 days of
history before its first signal. A period with nothing to trade is refused; one that is partly
uncovered is run with a warning. Either way the message names the backfill that fixes it.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.candles.timeframes import parse_timeframe
from pipeline.markets import Market, format_markets

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.indicators.spec import IndicatorSpec
    from pipeline.strategy.personality import Personality

DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Warmup:
    """History a personality needs before its first signal, and the column needing most."""

    span: dt.timedelta
    column: str  # e.g. "1h sma_200"
    bars: int

    @property
    def days(self) -> int:
        return math.ceil(self.span / DAY)


def configured_personality(settings: Settings, name: str) -> Personality:
    """The configured personality called `name` (its file's stem: entries may be paths)."""
    from pipeline.strategy.personality import load_personality, personality_path

    entry = next((p for p in settings.personalities if personality_path(p).stem == name), name)
    return load_personality(personality_path(entry), settings.timeframes)


def warmup_needed(p: Personality, spec: IndicatorSpec | None = None) -> Warmup:
    """The longest derived warm-up among the columns `p` reads, on their timeframes, plus
    the rules' own look-back on the signal timeframe (and a bar for a partial first bucket)."""
    from pipeline.indicators import load_spec

    spec = spec or load_spec()
    signal_minutes = parse_timeframe(p.signal_tf).minutes
    best = Warmup(dt.timedelta(0), "close", 0)
    for tf, col in p.refs:
        name = tf or p.signal_tf
        bars = spec.warmup.get(col, 0) + 1  # the first value needs `warmup` bars before it
        minutes = (bars + 1) * parse_timeframe(name).minutes + p.lookback * signal_minutes
        if dt.timedelta(minutes=minutes) > best.span:
            best = Warmup(dt.timedelta(minutes=minutes), f"{name} {col}", bars)
    return best


@dataclass(frozen=True)
class Coverage:
    """One market's stored data: all its 1m candles, and those / the signals in the period."""

    market: Market
    first: dt.datetime | None
    last: dt.datetime | None
    candles: int
    signals: int


class NoData(Exception):
    """The home has no warehouse (or no source) yet."""


def read_coverage(
    settings: Settings, personality: str, markets: list[Market], start: dt.date, end: dt.date
) -> dict[Market, Coverage]:
    """Per market, from the read replica. Raises NoData without a warehouse."""
    from pipeline.exchanges.sources import SourceError, warehouse_for
    from warehouse import NoWarehouse

    lo = dt.datetime.combine(start, dt.time(), dt.UTC)
    hi = dt.datetime.combine(end, dt.time(), dt.UTC) + DAY
    venues = sorted({m.exchange for m in markets})
    symbols = sorted({m.symbol for m in markets})  # a superset: rows are picked by market below
    try:
        wh = warehouse_for(settings)
        with wh.reader() as con:
            candles = con.execute(
                "SELECT exchange, symbol, min(open_time), max(open_time), "
                "count(*) FILTER (WHERE open_time >= ? AND open_time < ?) FROM candles "
                "WHERE timeframe = '1m' AND list_contains(?, exchange) "
                "AND list_contains(?, symbol) GROUP BY exchange, symbol",
                [lo, hi, venues, symbols],
            ).fetchall()
            signals = {
                Market(e, s): n
                for e, s, n in con.execute(
                    "SELECT exchange, symbol, count(*) FROM signals WHERE personality = ? "
                    "AND close_time >= ? AND close_time < ? AND list_contains(?, exchange) "
                    "AND list_contains(?, symbol) GROUP BY exchange, symbol",
                    [personality, lo, hi, venues, symbols],
                ).fetchall()
            }
    except (SourceError, NoWarehouse) as err:
        raise NoData(str(err)) from None
    found = {Market(e, s): (_utc(a), _utc(b), n) for e, s, a, b, n in candles}
    out = {}
    for m in markets:
        first, last, n = found.get(m, (None, None, 0))
        out[m] = Coverage(m, first, last, n, int(signals.get(m, 0)))
    return out


def _utc(t: dt.datetime | None) -> dt.datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def backfill_hint(settings: Settings, markets: list[Market], start: dt.date, end: dt.date) -> str:
    """The backfill command that stores `markets` for the days; a market the configuration
    does not list is named (`--symbols venue:SYMBOL`, which backfills just those)."""
    more = ""
    if not set(markets) <= set(settings.markets):
        more = f" --symbols {format_markets(markets)}"
    return f"`signalbox backfill --start {start} --end {end}{more}`"


def assess(
    settings: Settings,
    p: Personality,
    cov: dict[Market, Coverage],
    start: dt.date,
    end: dt.date,
    warm: Warmup | None = None,
) -> tuple[dict[Market, str], list[str]]:
    """(refusals by market, warnings), one line each, naming the market. A market is refused
    when the period holds no candles or lies wholly in the indicators' warm-up; the run goes
    ahead (with the warnings) for the markets left."""
    warm = warm or warmup_needed(p)
    lo = dt.datetime.combine(start, dt.time(), dt.UTC)
    hi = lo + (end - start + DAY)
    fill_from = start - dt.timedelta(days=warm.days)  # history that warms up the whole period
    need = (
        f"{p.name} needs {warm.days} day(s) of history before its first signal "
        f"({warm.column}: {warm.bars} bars)"
    )
    refusals: dict[Market, str] = {}
    warnings: list[str] = []
    for m, c in cov.items():
        fix = backfill_hint(settings, [m], fill_from, end)
        if c.first is None or c.last is None:
            refusals[m] = f"{m}: no candles stored; {need}: backfill {fix}"
            continue
        if c.candles == 0:
            stored = f"{c.first:%Y-%m-%d %H:%M} to {c.last:%Y-%m-%d %H:%M}"
            refusals[m] = f"{m}: no candles in {start} → {end} (stored: {stored}); backfill {fix}"
            continue
        ready = c.first + warm.span
        if ready >= hi:
            refusals[m] = (
                f"{m}: the whole period is indicator warm-up: {need}, and the candles start "
                f"{c.first:%Y-%m-%d %H:%M}, so no signal before {ready:%Y-%m-%d %H:%M}; "
                f"backfill {warm.days} more day(s): {fix}"
            )
            continue
        if ready > lo:
            warnings.append(
                f"{m}: the candles start {c.first:%Y-%m-%d %H:%M} and {need}: no signal before "
                f"{ready:%Y-%m-%d %H:%M}; to cover the whole period, backfill {fix}"
            )
        if c.last < hi - DAY:
            warnings.append(
                f"{m}: no candles after {c.last:%Y-%m-%d %H:%M}; the period ends {end}: "
                f"backfill {backfill_hint(settings, [m], c.last.date(), end)}"
            )
        if c.signals == 0 and ready <= lo:
            warnings.append(
                f"{m}: no {p.name} signals stored in {start} → {end}, so no trades; signals are "
                f"computed by {backfill_hint(settings, [m], fill_from, end)}"
            )
    return refusals, warnings


def first_stored_day(settings: Settings, markets: list[Market]) -> dt.date | None:
    """The first day any of `markets` has a stored 1m candle (an open --timerange start)."""
    today = dt.datetime.now(dt.UTC).date()
    try:
        cov = read_coverage(settings, "", markets, today, today)
    except NoData:
        return None
    firsts = [c.first for c in cov.values() if c.first is not None]
    return min(firsts).date() if firsts else None

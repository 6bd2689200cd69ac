"""One venue's signals for a span of daily partitions: read its candles and indicators, run
every personality, and the replacement that writes them.

Plain Python: the `signals` asset calls it once per venue, the tests too. Reads and the
replacement are scoped by `exchange`, so one venue's signals never see or touch another's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.candles.build import with_exchange
from pipeline.candles.timeframes import OWNED
from warehouse import Replacement

if TYPE_CHECKING:
    import polars as pl

    from pipeline.candles.tail import Ranges
    from pipeline.strategy.context import Context
    from pipeline.strategy.personality import Personality

Windows = dict[str, tuple[dt.datetime, dt.datetime]]


def read_frames(wh: Any, exchange: str, windows: Windows) -> dict[str, pl.DataFrame]:
    """The venue's candles LEFT JOIN indicators for each timeframe's window, in one query
    (without `exchange`: the signal engine works per symbol)."""
    values = ", ".join("(?, ?, ?)" for _ in windows)
    params = [v for tf, (lo, hi) in windows.items() for v in (tf, lo, hi)]
    joined = wh.query(
        "SELECT c.* EXCLUDE (exchange), i.* EXCLUDE (exchange, symbol, timeframe, open_time,"
        f" close_time) FROM candles c JOIN (VALUES {values}) w(tf, lo, hi)"
        " ON c.timeframe = w.tf AND c.open_time >= w.lo AND c.close_time <= w.hi"
        " LEFT JOIN indicators i USING (exchange, symbol, timeframe, open_time)"
        " WHERE c.exchange = ? ORDER BY c.timeframe, c.symbol, c.open_time",
        [*params, exchange],
    )
    by_tf = joined.partition_by("timeframe", as_dict=True)
    return {tf: by_tf.get((tf,), joined.clear()) for tf in windows}


def read_inputs(
    wh: Any, exchange: str, windows: Windows, personalities: Sequence[Personality]
) -> tuple[dict[str, pl.DataFrame], Context | None]:
    """`read_frames` with the market context the personalities read joined as of each bar's
    close, and the context rows it came from (None: none of them reads any, none is read)."""
    from pipeline.strategy.context import context_needs, join_context, read_context

    frames = read_frames(wh, exchange, windows)
    need = {tf: cols for tf, cols in context_needs(personalities).items() if tf in windows}
    if not need:
        return frames, None
    ctx = read_context(wh, exchange, windows, need)
    return join_context(frames, ctx, need), ctx


def merge_windows(windows: Sequence[Windows]) -> Windows:
    """One window per timeframe covering all of `windows`."""
    out: Windows = {}
    for w in windows:
        for tf, (lo, hi) in w.items():
            a, b = out.get(tf, (lo, hi))
            out[tf] = (min(a, lo), max(b, hi))
    return out


# A multi-day build reads and computes over runs of days holding up to this many candle rows
# (of the timeframes the personalities read; their warm-up comes on top): memory is bounded by
# the run, not the span. Each run's rows are exact (`signal_input_window`), so the runs only
# change how much is held at once, never a row.
SIGNAL_ROWS = 500_000


@dataclass(frozen=True)
class VenueSignals:
    """What one venue's signal build read and made."""

    exchange: str
    frames: dict[str, pl.DataFrame]  # per timeframe, for the lookahead check: the last run's
    by_personality: dict[str, pl.DataFrame]  # the signals, `exchange` first
    ranges: Ranges | None = None  # a live run's tail: personality -> close_time range (lo, hi]
    context: Context | None = None  # the last run's market context rows (None: none read)
    # per timeframe, each symbol's newest bar (symbol, close_time) among all the runs read
    # (the fast lane's parity asks how far the build got); None: the frames' own
    latest: dict[str, pl.DataFrame] | None = None

    def rows(self) -> pl.DataFrame:
        import polars as pl

        parts = list(self.by_personality.values())
        return pl.concat(parts, how="vertical_relaxed") if parts else pl.DataFrame()

    def reached(self) -> dict[str, pl.DataFrame]:
        """Per timeframe, frames whose newest bar per symbol is the newest the build read."""
        return self.frames if self.latest is None else self.latest


def build_signals(
    wh: Any,
    exchange: str,
    first: dt.date,
    last: dt.date,
    personalities: Sequence[Personality],
    progress: Callable[[str, int], None] | None = None,
    ranges: Ranges | None = None,
) -> VenueSignals:
    """Every personality's signals the days `first`..`last` own, for the venue; `progress`
    hears each personality's name and signal count. With `ranges` (a live run's tail per
    timeframe, pipeline.candles.tail): only the rows of the personalities' signal timeframe
    bars in them (`tail_signals`).

    Over runs of days of up to SIGNAL_ROWS candle rows, each read from its own
    `signal_input_window` (exact by the cooldown grid: pipeline.strategy.signals): the same
    rows, in the same order, as one pass over the whole span, in the memory of one run."""
    import polars as pl

    from pipeline.indicators.build import candle_rows_per_day, runs_of
    from pipeline.strategy.signals import signal_input_window, signals_for_partition

    if ranges is not None:
        return tail_signals(wh, exchange, personalities, ranges, progress)
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    tfs = sorted({t for p in personalities for t in p.timeframes})
    sizes = candle_rows_per_day(wh, exchange, days, tfs) if len(days) > 1 else [0] * len(days)
    runs = runs_of(sizes, SIGNAL_ROWS)
    parts: dict[str, list[pl.DataFrame]] = {p.name: [] for p in personalities}
    newest: dict[str, list[pl.DataFrame]] = {}
    frames: dict[str, pl.DataFrame] = {}
    ctx = None
    for a, b in runs:
        lo, hi = days[a], days[b - 1]
        windows = [signal_input_window(lo, p, hi) for p in personalities]
        frames, ctx = {}, None  # the last run's go before the next run's come
        frames, ctx = read_inputs(wh, exchange, merge_windows(windows), personalities)
        for p in personalities:
            parts[p.name].append(signals_for_partition(frames, lo, p, hi))
        if len(runs) > 1:
            for tf, f in frames.items():
                newest.setdefault(tf, []).append(_newest(f))
    found = {}
    for p in personalities:
        found[p.name] = with_exchange(_in_order(parts[p.name]), exchange)
        if progress:
            progress(p.name, found[p.name].height)
    latest = {tf: _newest(pl.concat(f)) for tf, f in newest.items()} if newest else None
    return VenueSignals(exchange, frames, found, latest=latest, context=ctx)


def _newest(frame: pl.DataFrame) -> pl.DataFrame:
    """Each symbol's newest close_time in `frame` (symbol, close_time)."""
    import polars as pl

    return frame.group_by("symbol").agg(pl.col("close_time").max())


def _in_order(parts: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """One personality's runs' signals as one pass gives them: by symbol, then close_time."""
    import polars as pl

    if len(parts) == 1:
        return parts[0]
    rows = [p for p in parts if p.height] or list(parts[:1])
    return pl.concat(rows, how="vertical").sort("symbol", "close_time", maintain_order=True)


def tail_signals(
    wh: Any,
    exchange: str,
    personalities: Sequence[Personality],
    ranges: Ranges,
    progress: Callable[[str, int], None] | None = None,
) -> VenueSignals:
    """The signals of the signal timeframe's bars in `ranges`, per personality: read from the
    `bar_input_window` of the first such bar (its cooldown window, lookback and the bar before;
    each later bar's window starts no earlier) to the range's end, computed by
    `compute_signals` as over the whole partition. Personalities whose signal timeframe has no
    bar in `ranges` are left out."""
    from pipeline.candles.tail import first_close, in_ranges
    from pipeline.strategy.signal_inputs import cut_frames
    from pipeline.strategy.signals import bar_input_window, compute_signals

    windows, mine = {}, {}
    for p in personalities:
        if p.signal_tf in ranges:
            lo, hi = ranges[p.signal_tf]
            found = bar_input_window(p, first_close(p.signal_tf, lo))
            windows[p.name] = {tf: (start, hi) for tf, (start, _) in found.items()}
            mine[p.name] = (lo, hi)
    frames, ctx = (
        read_inputs(wh, exchange, merge_windows(list(windows.values())), personalities)
        if windows
        else ({}, None)
    )
    found = {}
    for p in personalities:
        if p.name not in windows:
            continue
        rows = compute_signals(cut_frames(frames, windows[p.name]), p)
        found[p.name] = with_exchange(
            in_ranges(rows, {p.name: mine[p.name]}, "personality"), exchange
        )
        if progress:
            progress(p.name, found[p.name].height)
    return VenueSignals(exchange, frames, found, mine, context=ctx)


def signals_replacement(
    built: VenueSignals, start: dt.datetime, end: dt.datetime, names: Sequence[str]
) -> Replacement:
    """Replace the venue's signals of `names` in (start, end] with the built ones."""
    marks = ", ".join("?" * len(names))
    where = f"{OWNED} AND personality IN ({marks})"
    return Replacement("signals", built.rows(), where, (built.exchange, start, end, *names))


def write_signals(
    wh: Any,
    built: Sequence[VenueSignals],
    start: dt.datetime,
    end: dt.datetime,
    names: Sequence[str],
) -> int:
    """Replace each built venue's signals of `names` in (start, end], in one transaction (a
    tail's: those in its ranges only)."""
    from pipeline.candles.tail import tail_replacements

    items = []
    for b in built:
        if b.ranges is None:
            items.append(signals_replacement(b, start, end, names))
        else:
            items += tail_replacements("signals", b.rows(), b.exchange, b.ranges, "personality")
    return wh.replace_many(items)

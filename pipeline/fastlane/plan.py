"""What the fast lane must keep to answer like the `signals` asset: the timeframes the
personalities read, the columns they read on each, the part of the indicator spec that computes
those columns, and how far back each timeframe's window reaches on a given day.

A personality whose rules read market context (order flow, funding, open interest, the
basis: pipeline.strategy.context) is left out: the lane has none of those inputs, and a signal
computed without them would differ from the pipeline's. It stays silent on it, says why once
in the log (`silent`), and the pipeline's signal arrives as before.

The windows are the pipeline's own: a bar of day D gets its indicators from the candles in
`indicator_input_window(D, tf)` (whose start depends on the FULL spec's warm-up, not on the
subset computed here), and its signal from `bar_input_window`. A subset of the spec computes
its columns bit for bit as the full spec does: each entry is masked by its own warm-up and its
inputs' (pipeline.indicators.compute), which the subset keeps.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.candles.timeframes import (
    Timeframe,
    bucket_start,
    day_bounds_ms,
    parse_timeframes,
    to_ms,
)
from pipeline.indicators.spec import CANDLE_INPUTS, IndicatorSpec, indicator_input_window

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.strategy.personality import Personality

# Kept for every bar whatever is read: what `symbol_series` and the history marks need.
ALWAYS = ("n_1m", "complete")
log = logging.getLogger("signalbox.fast")
_SAID: set[tuple[str, str]] = set()  # (personality, why) already logged by this process


def subset(spec: IndicatorSpec, columns: set[str]) -> IndicatorSpec:
    """The entries of `spec` computing `columns`, with every entry they read (spec order)."""
    want, keep = set(columns), []
    for ind in reversed(spec.indicators):
        if want & set(ind.outputs):
            keep.append(ind)
            want |= set(ind.inputs)
    keep.reverse()
    outs = {c for i in keep for c in i.outputs}
    return IndicatorSpec(
        tuple(keep),
        spec.tolerance,
        {c: spec.warmup[c] for c in outs},
        {i.name: spec.own[i.name] for i in keep},
    )


@dataclass(frozen=True)
class Plan:
    """The personalities of a lane and what they read, per timeframe."""

    personalities: tuple[Personality, ...]
    configured: tuple[Timeframe, ...]  # every configured timeframe (the resample's levels)
    timeframes: tuple[Timeframe, ...]  # the ones read, finest first
    indicators: dict[str, tuple[str, ...]]  # per timeframe read: indicator columns read
    candles: dict[str, tuple[str, ...]]  # per timeframe read: candle columns read or computed on
    specs: dict[str, IndicatorSpec]  # per timeframe read: the spec subset computing its columns
    spec: IndicatorSpec  # the full spec (the windows' warm-up)
    silent: dict[str, str]  # personalities the lane never evaluates, and why

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.timeframes)

    def values(self, tf: str) -> tuple[str, ...]:
        """Every value column kept for `tf`: n_1m, complete, candle and indicator columns."""
        return ALWAYS + self.candles[tf] + self.indicators[tf]

    def levels(self, longest: Timeframe) -> list[Timeframe]:
        """The configured timeframes up to `longest`: the resample's levels that can feed it (a
        level is rolled up from finer ones only), so its buckets come out bit for bit."""
        key = (longest.kind == "month", longest.months, longest.minutes)
        return [t for t in self.configured if (t.kind == "month", t.months, t.minutes) <= key]

    def indicator_start_ms(self, tf: str, day: dt.date) -> int:
        """Open time of the first bar day `day` computes indicators from."""
        return to_ms(indicator_input_window(day, tf, self.spec)[0])

    def keep_from_ms(self, tf: str, day: dt.date) -> int:
        """Oldest bar of `tf` the lane needs on `day`: its indicator window's start, or the
        start of a signal window reaching further back (the day's first bars)."""
        from pipeline.strategy.signals import signal_input_window

        start = self.indicator_start_ms(tf, day)
        for p in self.personalities:
            window = signal_input_window(day, p).get(tf)
            if window is not None:
                start = min(start, to_ms(window[0]))
        return start

    def forming_start_ms(self, day: dt.date, next_ms: int) -> int:
        """Oldest 1m candle the lane holds: from the first bucket `day` owns of each timeframe
        read, and the start of every bucket still forming at `next_ms`."""
        from pipeline.candles.timeframes import partition_input_window

        start = to_ms(partition_input_window(day, self.timeframes)[0])
        forming = [bucket_start(t, next_ms) for t in self.timeframes]
        return min([start, *forming, day_bounds_ms(day)[0]])


def make_plan(settings: Settings) -> Plan:
    """The plan of `settings.personalities` on `settings.timeframes`."""
    from pipeline.indicators import load_spec
    from pipeline.strategy.context import reads_context
    from pipeline.strategy.personality import load_personalities

    spec = load_spec()
    ps, silent = [], {}
    for p in load_personalities(settings.personalities, settings.timeframes):
        if context := reads_context(p):
            silent[p.name] = (
                f"its rules read market context ({', '.join(context)}), which the fast lane does"
                " not have: its signals come from the pipeline only"
            )
            if (p.name, silent[p.name]) not in _SAID:
                _SAID.add((p.name, silent[p.name]))
                log.info("silent on personality %s: %s", p.name, silent[p.name])
        else:
            ps.append(p)
    read: dict[str, set[str]] = {}
    for p in ps:
        for t in p.timeframes:
            read.setdefault(t, set())
        for t, col in p.refs:
            read[t or p.signal_tf].add(col)
    tfs = sorted(parse_timeframes(read), key=lambda t: (t.kind == "month", t.months, t.minutes))
    indicators, candles, specs = {}, {}, {}
    for t in tfs:
        cols = read[t.name]
        sub = subset(spec, cols & set(spec.columns))
        inputs = {c for i in sub.indicators for c in i.inputs if c in CANDLE_INPUTS}
        candles[t.name] = tuple(c for c in CANDLE_INPUTS if c in cols | inputs | {"close"})
        indicators[t.name] = tuple(c for c in sub.columns if c in cols)
        specs[t.name] = sub
    configured = tuple(parse_timeframes(settings.timeframes))
    return Plan(tuple(ps), configured, tuple(tfs), indicators, candles, specs, spec, silent)

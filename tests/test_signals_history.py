"""Signals over history: partition == whole history, live (bar by bar) == batch, no lookahead,
byte-identical determinism. On the seeded synthetic market (pipeline.replay.synthetic, seed 7),
with seeded market context (tests/context_rows.py: order flow, funding, open interest, spot,
each with a start and holes) joined as of each bar's close; the live path joins it again from
the rows known at the bar's close."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import polars as pl
import pytest

from pipeline.candles.resample import resample
from pipeline.candles.timeframes import owned_by, owner_day, to_ms
from pipeline.config import Settings
from pipeline.indicators import compute_indicators
from pipeline.replay import synthetic
from pipeline.strategy.bars import Bars
from pipeline.strategy.checks import check_signals, check_signals_lookahead
from pipeline.strategy.context import COLUMNS, Context, join_context
from pipeline.strategy.personality import Personality, load_personality, personality_from_dict
from pipeline.strategy.signal_inputs import join_frames
from pipeline.strategy.signals import (
    compute_signals,
    live_signal,
    signal_input_window,
    signals_for_partition,
)
from pipeline.strategy.votes import SUBSIGNALS, SubSignal
from tests import context_rows
from tests.conftest import SEED

UTC = dt.UTC
TIMEFRAMES = ["1m", "5m", "15m", "37m", "1h", "148m", "1d"]
START = dt.date(2023, 11, 1)  # 1d SMA 44 (ma_trend) is due from mid-December
FIRST, DAYS = dt.date(2023, 12, 18), 33  # the days compared: 2023-12-18 .. 2024-01-19
SHIPPED = ["scalping", "swing", "ma_trend", "vote"]


LAST = FIRST + dt.timedelta(days=DAYS - 1)


@lru_cache(maxsize=2)
def klines(symbols: tuple[str, ...] = ("BTCUSDT",)) -> pl.DataFrame:
    lo = to_ms(START)
    hi = to_ms(FIRST + dt.timedelta(days=DAYS))
    return pl.concat([synthetic.frame(s, lo, hi, seed=SEED) for s in symbols])


@lru_cache(maxsize=2)
def market_context(symbols: tuple[str, ...] = ("BTCUSDT",)) -> Context:
    """The context rows, from three days before the compared ones, with holes in them."""
    return context_rows.context(klines(symbols), TIMEFRAMES, FIRST, LAST, SEED)


@lru_cache(maxsize=2)
def market(symbols: tuple[str, ...] = ("BTCUSDT",)) -> dict[str, pl.DataFrame]:
    """80 days of synthetic 1m candles -> every timeframe used -> indicators, with the market
    context joined as of each bar's close, as frames."""
    candles = resample(klines(symbols), TIMEFRAMES)
    frames = join_frames(candles, compute_indicators(candles), TIMEFRAMES)
    return join_context(frames, market_context(symbols), {tf: set(COLUMNS) for tf in TIMEFRAMES})


def shipped(name: str) -> Personality:
    return load_personality(name, Settings().timeframes)


def days() -> Iterator[dt.date]:
    for i in range(DAYS):
        yield FIRST + dt.timedelta(days=i)


def compared(frame: pl.DataFrame) -> pl.DataFrame:
    lo = dt.datetime.combine(FIRST, dt.time(), UTC)
    hi = lo + dt.timedelta(days=DAYS)
    return frame.filter((pl.col("close_time") > lo) & (pl.col("close_time") <= hi))


# A personality built to stress the partition window: it signals often, reads 30 bars back
# and its 7h cooldown windows straddle midnight.
STRESS = {
    "name": "stress",
    "timeframes": ["5m", "1h"],
    "threshold": 0.5,
    "cooldown": "7h",
    "rules": [
        {
            "name": "up",
            "when": "close > prev(close, 20) and rsi_14 > mean(rsi_14, 30)",
            "direction": "long",
            "weight": 1,
            "reason": "up {close}",
        },
        {
            "name": "down",
            "when": "close < prev(close, 20) and rsi_14 < mean(rsi_14, 30)",
            "direction": "short",
            "weight": 1,
            "reason": "down {close}",
        },
        {
            "name": "htf",
            "when": "sign(close - 1h.ema_21)",
            "direction": "both",
            "weight": 0.5,
            "reason": "1h {1h.ema_21}",
        },
    ],
}


def stress() -> Personality:
    return personality_from_dict(STRESS, "stress", timeframes=TIMEFRAMES)


# One reading every market-context column, its own timeframe's and a higher one's, with a
# filter that lets its side through where funding is unknown (and says so).
CONTEXT = {
    "name": "context",
    "timeframes": ["5m", "1h"],
    "threshold": 0.5,
    "cooldown": "3h",
    "rules": [
        {
            "name": "rich",
            "when": "basis_bps > mean(basis_bps, 12) and buy_ratio > 0.5",
            "direction": "long",
            "weight": 1,
            "reason": "basis {basis_bps:.1f} bps, buy ratio {buy_ratio:.2f}",
        },
        {
            "name": "cheap",
            "when": "basis_bps < mean(basis_bps, 12) and buy_ratio < 0.5",
            "direction": "short",
            "weight": 1,
            "reason": "basis {basis_bps:.1f} bps, buy ratio {buy_ratio:.2f}",
        },
        {
            "name": "flow",
            "when": "sign(oi_change_1h) * sign(cvd - prev(cvd, 6)) + 0 * 1h.buy_ratio",
            "direction": "both",
            "weight": 0.5,
            "reason": "OI {oi_change_1h:.4f}, CVD {cvd:,.1f}, 1h buy ratio {1h.buy_ratio:.2f}",
        },
        {
            "name": "funding",
            "when": "funding_rate < 0.0005",
            "direction": "long",
            "gate": True,
            "when_unknown": "funding filter not applied: no funding rate known",
            "reason": "funding {funding_rate:.4%}",
        },
    ],
}


def context_personality() -> Personality:
    return personality_from_dict(CONTEXT, "context", timeframes=TIMEFRAMES)


def named(name: str) -> Personality:
    return {"stress": stress, "context": context_personality}.get(name, lambda: shipped(name))()


@pytest.mark.parametrize("name", [*SHIPPED, "stress", "context"])
def test_partitions_equal_whole_history(name: str):
    p = named(name)
    frames = market()
    whole = compared(compute_signals(frames, p))
    parts = pl.concat([signals_for_partition(frames, d, p) for d in days()])
    assert whole.height >= 5, f"{name}: too few signals ({whole.height}) to compare"
    assert parts.equals(whole)
    assert check_signals(whole, p).passed
    last = FIRST + dt.timedelta(days=DAYS - 1)
    assert signals_for_partition(frames, FIRST, p, last_day=last).equals(whole)  # one pass


def test_partition_window_is_needed():
    """The test above can fail: a window that ignores the cooldown window holding the day's
    first bar (reading only the rules' lookback) gives other rows on some days."""
    p, frames = stress(), market()
    changed = 0
    for d in days():
        win = signal_input_window(d, p)
        d0 = dt.datetime.combine(d, dt.time(), UTC)
        assert win[p.signal_tf][0] <= d0 - dt.timedelta(minutes=5 * (p.lookback + 1))
        lo = d0 - dt.timedelta(minutes=5 * (p.lookback + 1))
        short = {**win, p.signal_tf: (lo, win[p.signal_tf][1])}
        cut = {
            tf: frames[tf].filter((pl.col("open_time") >= a) & (pl.col("close_time") <= b))
            for tf, (a, b) in short.items()
        }
        want = signals_for_partition(frames, d, p)
        got = compute_signals(cut, p).filter(owned_by(d))
        changed += not got.equals(want)
    assert changed > 0


@pytest.mark.parametrize("name", [*SHIPPED, "stress", "context"])
def test_live_bar_by_bar_equals_batch(name: str):
    """For a sample of bars (every signal bar up to half of it, the bar after each, random
    others): today's partition computed from the data cut at the bar's close (the market
    context joined again from the rows known then) gives exactly the batch result for it."""
    p = named(name)
    outcome = check_signals_lookahead(market(), p, sample=160, seed=1, context=market_context())
    assert outcome.passed, outcome.metadata
    assert outcome.metadata["signals_checked"] >= 5


def test_lookahead_check_on_one_day():
    """As an asset check on one partition: only the day's bars are sampled."""
    p, frames = shipped("scalping"), market()
    day = FIRST + dt.timedelta(days=5)
    window = signal_input_window(day, p)
    cut = {
        tf: f.filter((pl.col("open_time") >= a) & (pl.col("close_time") <= b))
        for tf, (a, b) in window.items()
        for f in [frames[tf]]
    }
    outcome = check_signals_lookahead(cut, p, sample=30, day=day)
    assert outcome.passed, outcome.metadata
    assert outcome.metadata["checked"] >= 30 and outcome.metadata["signals_checked"] >= 5


@pytest.mark.parametrize("name", [*SHIPPED, "context"])
def test_live_every_bar_of_a_stretch(name: str):
    """Bar by bar without gaps over a stretch: each bar's live result equals the batch."""
    p, frames, ctx = named(name), market(), market_context()
    batch = compute_signals(frames, p)
    sig = frames[p.signal_tf]
    bars = 240 if p.signal_tf == "1m" else 96
    # a stretch holding signals: ending at the newest signal of the compared days
    newest = compared(batch)["close_time"].max()
    times = sig.filter(pl.col("close_time") <= newest)["close_time"].tail(bars).to_list()
    live = [live_signal(frames, p, "BTCUSDT", t, ctx) for t in times]
    got = pl.concat(live)
    want = batch.filter(pl.col("close_time").is_between(times[0], times[-1]))
    assert want.height >= 1
    assert got.equals(want)


@pytest.fixture
def peek_next() -> Iterator[None]:
    """A sub-signal that reads the next bar (registered for this test only)."""

    def peek(b: Bars) -> np.ndarray:
        c = b.col("close")
        nxt = np.full_like(c, np.nan)
        nxt[:-1] = c[1:]
        return np.sign(nxt - c)

    SUBSIGNALS["peek_next"] = SubSignal(peek, ("close",), {}, lambda p: 0)
    yield
    del SUBSIGNALS["peek_next"]


def test_lookahead_check_catches_a_leaky_rule(peek_next: None):
    leaky = personality_from_dict(
        {
            "name": "leaky",
            "timeframes": ["15m", "1h"],
            "threshold": 0.5,
            "cooldown": "1h",
            "rules": [
                {
                    "name": "next_bar",
                    "when": "peek_next()",
                    "direction": "both",
                    "weight": 1,
                    "reason": "knows the next close",
                }
            ],
        },
        "leaky",
        timeframes=TIMEFRAMES,
    )
    outcome = check_signals_lookahead(market(), leaky, sample=40)
    assert not outcome.passed
    assert "lookahead" in outcome.description
    assert outcome.metadata["failures"] >= 10


def test_deterministic_bytes_live_and_backfill():
    """Same inputs, same bytes: two backfills, and a day computed live hour by hour."""
    p, frames = shipped("vote"), market()
    day = FIRST + dt.timedelta(days=3)
    a = signals_for_partition(frames, day, p)
    b = signals_for_partition({tf: f.clone() for tf, f in frames.items()}, day, p)
    assert a.height > 0
    assert a.write_ipc(None).getvalue() == b.write_ipc(None).getvalue()
    # live: each hour, recompute today's partition from what has closed; keep new rows
    live_rows: list[pl.DataFrame] = []
    seen: set[dt.datetime] = set()
    d0 = dt.datetime.combine(day, dt.time(), UTC)
    for h in range(1, 25):
        now = d0 + dt.timedelta(hours=h)
        known = {tf: f.filter(pl.col("close_time") <= now) for tf, f in frames.items()}
        part = signals_for_partition(known, day, p)
        new = part.filter(~pl.col("close_time").is_in(list(seen)))
        seen.update(new["close_time"].to_list())
        live_rows.append(new)
    live = pl.concat(live_rows)
    assert live.write_ipc(None).getvalue() == a.write_ipc(None).getvalue()
    assert a["snapshot"].to_list() == b["snapshot"].to_list()


def test_partition_ownership_is_close_time_day():
    p = shipped("ma_trend")  # 37m bars straddle midnight
    frames = market()
    for d in list(days())[:5]:
        out = signals_for_partition(frames, d, p)
        assert all(owner_day(t) == d for t in out["close_time"].to_list())
    # a bar closing exactly at midnight belongs to the day before
    assert owner_day(dt.datetime(2024, 1, 2, tzinfo=UTC)) == dt.date(2024, 1, 1)


def test_multi_symbol_equals_each_alone():
    frames2 = market(("BTCUSDT", "ETHUSDT"))
    p = dataclasses.replace(shipped("swing"), cooldown=None)
    both = compute_signals(frames2, p)
    for sym in ("BTCUSDT", "ETHUSDT"):
        alone = compute_signals(
            {tf: f.filter(pl.col("symbol") == sym) for tf, f in frames2.items()}, p
        )
        assert alone.height > 0
        assert both.filter(pl.col("symbol") == sym).equals(alone)

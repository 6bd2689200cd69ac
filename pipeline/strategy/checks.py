"""Checks on the `signals` rows: well-formed, and no lookahead (the live path, on data cut at
each bar's close, gives the batch's row)."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from pipeline.candles.timeframes import MINUTE_MS, as_timeframe, owned_by
from pipeline.quality.checks import FLOAT_RTOL, MAX_LISTED, CheckOutcome
from pipeline.strategy.signal_inputs import Frames, split_frames, utc
from pipeline.strategy.signal_table import KEYS, OK, SIGNAL_COLUMNS
from pipeline.strategy.signals import compute_signals, live_at

if TYPE_CHECKING:
    import polars as pl

    from pipeline.strategy.context import Context
    from pipeline.strategy.personality import Personality


def check_signals(
    signals: pl.DataFrame, personality: Personality | str | None = None
) -> CheckOutcome:
    """Rows a bot can trust: actions BUY/SELL, confidence in [0, 1] (and at least the
    threshold), positive prices, one row per key, bars on their timeframe's grid, reasons
    given, snapshots JSON objects, quality "ok" or "degraded: ..." (none when the personality
    does not emit degraded signals), at most one signal per cooldown window."""
    import polars as pl

    from pipeline.strategy.personality import load_personality

    p = load_personality(personality) if personality is not None else None
    if missing := set(SIGNAL_COLUMNS) - set(signals.columns):
        return CheckOutcome(False, f"signals lack column(s) {sorted(missing)}")
    problems: dict[str, int] = {}
    examples: list[str] = []

    def flag(label: str, bad: pl.DataFrame) -> None:
        if bad.height:
            problems[label] = bad.height
            examples.extend(
                f"{label}: {s} {n} {t.isoformat()}"
                for s, n, t in bad.head(5).select("symbol", "personality", "close_time").rows()
            )

    flag("action not BUY/SELL", signals.filter(~pl.col("action").is_in(["BUY", "SELL"])))
    conf = pl.col("confidence")
    flag("confidence outside [0, 1]", signals.filter(~conf.is_finite() | (conf < 0) | (conf > 1)))
    if p is not None:
        # confidence is the net confluence clipped to [0, 1] (exact); the sums behind the
        # net may round, so the threshold allows FLOAT_RTOL.
        flag("confidence below threshold", signals.filter(conf < p.threshold - FLOAT_RTOL))
        flag("another personality's rows", signals.filter(pl.col("personality") != p.name))
    flag(
        "price not positive", signals.filter(~pl.col("price").is_finite() | (pl.col("price") <= 0))
    )
    dup = signals.filter(pl.struct(KEYS).is_duplicated())
    flag("duplicate key", dup)
    flag("no reasons", signals.filter(pl.col("reasons").list.len().fill_null(0) == 0))
    q = pl.col("quality")
    flag("quality not ok/degraded", signals.filter(~((q == OK) | q.str.starts_with("degraded"))))
    if p is not None and not p.emit_degraded:
        flag("degraded signal emitted", signals.filter(q != OK))
    bad_json = [i for i, s in enumerate(signals["snapshot"].to_list()) if not _is_object(s)]
    flag("snapshot not a JSON object", signals[bad_json] if bad_json else signals.clear())
    for (tfname,), part in signals.partition_by("timeframe", as_dict=True).items():
        try:
            tf = as_timeframe(str(tfname))
        except ValueError:
            flag("unknown timeframe", part)
            continue
        o = part["open_time"].dt.epoch("ms")
        c = part["close_time"].dt.epoch("ms")
        off = ((o - tf.anchor_ms) % tf.ms != 0) | (c - o != tf.ms) if tf.kind == "fixed" else None
        if off is not None:
            flag("bar off the timeframe grid", part.filter(off))
    if p is not None and p.cooldown is not None and signals.height:
        cd = p.cooldown
        win = (pl.col("close_time").dt.epoch("ms") - MINUTE_MS - cd.anchor_ms) // cd.ms
        many = signals.with_columns(_w=win).filter(
            pl.struct("symbol", "personality", "_w").is_duplicated()
        )
        flag(f"more than one signal per {cd.name} cooldown window", many)
    if not problems:
        return CheckOutcome(
            True, f"{signals.height} signal(s) well-formed", {"rows": signals.height}
        )
    return CheckOutcome(
        False,
        f"{sum(problems.values())} problem(s) in {signals.height} signal(s): {problems}",
        {"problems": problems, "examples": examples[:MAX_LISTED]},
    )


def _is_object(s: Any) -> bool:
    try:
        return isinstance(json.loads(s), dict)
    except (TypeError, ValueError):
        return False


def check_signals_lookahead(
    frames: Frames | pl.DataFrame,
    personality: Personality | str,
    sample: int = 200,
    seed: int = 0,
    day: dt.date | None = None,
    context: Context | None = None,
) -> CheckOutcome:
    """No lookahead: for a sample of bars (signal bars up to half the sample, the bar after
    each, the newest bar and a seeded random spread; only bars `day` owns if given), the live
    path's result for the bar (its day's partition on data cut at the bar's close) equals
    the batch result over all of `frames`, column for column. A rule that reads a later bar
    fails this; so would a window too short for the rules. With `context` (the rows the
    frames' market context was joined from), the live path joins it again from the rows
    known at the bar's close: a context value from the future fails too."""
    import numpy as np
    import polars as pl

    from pipeline.strategy.personality import load_personality

    p = load_personality(personality)
    split = split_frames(frames)
    batch = compute_signals(split, p)
    sig = split[p.signal_tf]
    bars = sig.select(pl.col("symbol").cast(pl.String), utc(sig, "close_time"))
    if day is not None:
        bars, batch = bars.filter(owned_by(day)), batch.filter(owned_by(day))
    bars = bars.sort("symbol", "close_time")
    if bars.is_empty():
        return CheckOutcome(True, "no bars to check", {"checked": 0, "signals_checked": 0})
    picks: set[tuple[str, dt.datetime]] = set()
    sig_keys = batch.select("symbol", "close_time").rows()
    if sig_keys:
        step = max(1, len(sig_keys) // max(1, sample // 2))
        picks.update(sig_keys[::step][: sample // 2])
    all_keys = bars.rows()
    index = {k: i for i, k in enumerate(all_keys)}
    for k in list(picks):  # the bar after a signal (a transition must not repeat)
        i = index.get(k)
        if i is not None and i + 1 < len(all_keys) and all_keys[i + 1][0] == k[0]:
            picks.add(all_keys[i + 1])
    picks.add(all_keys[-1])
    extra = min(max(0, sample - len(picks)), len(all_keys))
    rng = np.random.default_rng(seed)
    picks.update(all_keys[i] for i in rng.choice(len(all_keys), size=extra, replace=False))
    by_key = {(r[0], r[3]): r for r in batch.rows()}
    per_symbol: dict[str, dict[str, pl.DataFrame]] = {}
    contexts: dict[str, Context] = {}
    failures = []
    for sym, t in sorted(picks):
        if sym not in per_symbol:
            per_symbol[sym] = {tf: f.filter(pl.col("symbol") == sym) for tf, f in split.items()}
            if context is not None:
                contexts[sym] = context.of_symbol(sym)
        live = live_at(per_symbol[sym], p, t, contexts.get(sym)).rows()
        want = by_key.get((sym, t))
        got = live[0] if live else None
        if got != want:
            what = (
                "batch signals, live does not"
                if got is None
                else "live signals, batch does not"
                if want is None
                else "rows differ"
            )
            failures.append(f"{sym} {t.isoformat()}: {what}")
    checked = {"checked": len(picks), "signals_checked": len(set(sig_keys) & picks)}
    if not failures:
        return CheckOutcome(
            True,
            f"{len(picks)} sampled {p.signal_tf} bars: live (data cut at the bar) == batch",
            checked,
        )
    return CheckOutcome(
        False,
        f"{len(failures)} of {len(picks)} sampled bars differ when the future is cut off"
        f" (lookahead in {p.name})",
        {"failures": len(failures), **checked, "examples": failures[:MAX_LISTED]},
    )

"""The checks on candles (blocking asset checks): sane OHLC, unique keys, buckets on their
timeframe's grid, n_1m and complete consistent, and bucket counts matching the 1m data."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from pipeline.candles.resample import KEYS
from pipeline.candles.rollup import Minutes
from pipeline.candles.timeframes import (
    MINUTE_MS,
    Timeframe,
    as_timeframe,
    bucket_end,
    bucket_start,
    day_bounds_ms,
    expected_minutes,
    first_owned_start_ms,
    from_ms,
    on_grid,
    owned_by,
    parse_timeframes,
    to_ms,
)
from pipeline.quality.checks import MAX_LISTED, CheckOutcome, no_duplicates, ohlc_sane

if TYPE_CHECKING:
    import polars as pl


def check_ohlc(candles: pl.DataFrame) -> CheckOutcome:
    return ohlc_sane(candles, KEYS)


def check_unique(candles: pl.DataFrame) -> CheckOutcome:
    return no_duplicates(candles, KEYS)


def _examples(frame: pl.DataFrame) -> list[str]:
    return [
        f"{s} {tf} {t.isoformat()}" for s, tf, t in frame.head(MAX_LISTED).select(KEYS).iter_rows()
    ]


def _per_timeframe(candles: pl.DataFrame) -> Iterable[tuple[Timeframe | None, str, pl.DataFrame]]:
    for (name,), part in candles.partition_by("timeframe", as_dict=True).items():
        try:
            yield as_timeframe(str(name)), str(name), part
        except ValueError:
            yield None, str(name), part


def check_grid(candles: pl.DataFrame) -> CheckOutcome:
    """open_time is a bucket start of its timeframe and close_time that bucket's end."""
    import polars as pl

    bad_parts = []
    unknown = []
    for tf, name, part in _per_timeframe(candles):
        if tf is None:
            unknown.append(name)
            continue
        start = part["open_time"].dt.epoch("ms").to_numpy()
        end = part["close_time"].dt.epoch("ms").to_numpy()
        ok = on_grid(tf, start) & (bucket_end(tf, start) == end)
        if not ok.all():
            bad_parts.append(part.filter(pl.Series(~ok)))
    bad = pl.concat(bad_parts) if bad_parts else candles.clear()
    if bad.is_empty() and not unknown:
        return CheckOutcome(True, f"all {candles.height} buckets on the grid")
    return CheckOutcome(
        False,
        f"{bad.height} bucket(s) off the grid"
        + (f"; unknown timeframes {unknown}" if unknown else ""),
        {"off_grid": bad.height, "unknown_timeframes": unknown, "examples": _examples(bad)},
    )


def check_complete(candles: pl.DataFrame) -> CheckOutcome:
    """1 <= n_1m <= the bucket's minutes, and complete == (n_1m == the bucket's minutes)."""
    import polars as pl

    bad_parts = []
    for tf, _name, part in _per_timeframe(candles):
        if tf is None:
            continue  # check_grid reports it
        exp = expected_minutes(tf, part["open_time"].dt.epoch("ms").to_numpy())
        n1 = part["n_1m"].to_numpy()
        ok = (n1 >= 1) & (n1 <= exp) & (part["complete"].to_numpy() == (n1 == exp))
        if not ok.all():
            bad_parts.append(part.filter(pl.Series(~ok)))
    bad = pl.concat(bad_parts) if bad_parts else candles.clear()
    if bad.is_empty():
        return CheckOutcome(True, f"n_1m and complete consistent on {candles.height} buckets")
    return CheckOutcome(
        False,
        f"{bad.height} bucket(s) with n_1m/complete inconsistent",
        {"bad_rows": bad.height, "examples": _examples(bad)},
    )


def check_counts(
    candles: pl.DataFrame,
    klines: pl.DataFrame | Minutes,
    day: dt.date,
    timeframes: Sequence[str | Timeframe],
    as_of: dt.datetime | None = None,
) -> CheckOutcome:
    """Each owned bucket's n_1m equals the 1m rows inside it, and per symbol and timeframe the
    buckets account for every 1m row in the span the partition owns (no bucket missing).

    `klines` covers `partition_input_window(day, timeframes)` (or more), as a frame or as
    `Minutes` built once for several days; `as_of` as in `resample`.
    """
    import numpy as np
    import polars as pl

    tfs = parse_timeframes(timeframes)
    m = klines if isinstance(klines, Minutes) else Minutes(klines)
    d0, d1 = day_bounds_ms(day)
    cutoff = min(d1, to_ms(as_of) if as_of is not None else int(m.t.max(initial=d0)) + MINUTE_MS)
    owned = candles.filter(owned_by(day)).sort("symbol", "timeframe", "open_time")
    symbols = sorted(set(m.names.to_list()) | set(owned["symbol"].unique().to_list()))
    problems: list[str] = []
    # Every series' rows as one slice of numpy columns taken out of polars once.
    opens = owned["open_time"].dt.epoch("ms").to_numpy()
    closes = owned["close_time"].dt.epoch("ms").to_numpy()
    counts = owned["n_1m"].to_numpy()
    spans = (
        owned.with_row_index("_i")
        .group_by("symbol", "timeframe")
        .agg(pl.col("_i").min().alias("lo"), pl.len().alias("n"))
    )
    series = {(sym, tf): (lo, lo + n) for sym, tf, lo, n in spans.iter_rows()}
    names = m.names.to_numpy()
    for sym in symbols:
        idx = np.flatnonzero(names == sym)
        a, b = np.searchsorted(m.sid, [idx[0], idx[0] + 1]) if idx.size else (0, 0)
        t = m.t[a:b]  # the symbol's minutes (Minutes sorts by symbol, then time)
        for tf in tfs:
            lo, hi = series.get((sym, tf.name), (0, 0))
            o, c, n_1m = opens[lo:hi], closes[lo:hi], counts[lo:hi]
            inside = np.searchsorted(t, c) - np.searchsorted(t, o)
            wrong = np.flatnonzero(inside != n_1m)
            for i in wrong[:MAX_LISTED]:
                problems.append(
                    f"{sym} {tf.name} {from_ms(o[i]).isoformat()}: n_1m={n_1m[int(i)]}"
                    f" but {inside[i]} 1m rows"
                )
            first = first_owned_start_ms(tf, day)
            last = bucket_start(tf, cutoff)
            if first is None or last <= first:
                continue
            have = int(np.searchsorted(t, last) - np.searchsorted(t, first))
            total = int(n_1m.sum())
            if have != total:
                problems.append(
                    f"{sym} {tf.name}: buckets hold {total} 1m candles, the 1m data has {have}"
                    f" in [{from_ms(first).isoformat()}, {from_ms(last).isoformat()})"
                )
    if not problems:
        return CheckOutcome(True, f"bucket counts match the 1m data for {len(tfs)} timeframes")
    return CheckOutcome(
        False,
        f"{len(problems)} count mismatch(es) against the 1m data",
        {"mismatches": len(problems), "examples": problems[:MAX_LISTED]},
    )


def check_candles(
    candles: pl.DataFrame,
    klines: pl.DataFrame | Minutes | None = None,
    day: dt.date | None = None,
    timeframes: Sequence[str | Timeframe] | None = None,
    as_of: dt.datetime | None = None,
) -> dict[str, CheckOutcome]:
    """Every candle check by name (counts only when the 1m data and the day are given)."""
    out = {
        "ohlc_sane": check_ohlc(candles),
        "no_duplicates": check_unique(candles),
        "on_grid": check_grid(candles),
        "complete_consistent": check_complete(candles),
    }
    if klines is not None and day is not None:
        tfs = timeframes or candles["timeframe"].unique(maintain_order=True).to_list()
        out["counts_match_1m"] = check_counts(candles, klines, day, tfs, as_of)
    return out

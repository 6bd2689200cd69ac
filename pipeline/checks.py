"""Data-quality checks as plain functions over polars frames.

Each returns a `CheckOutcome`; the Dagster layer turns it into an `AssetCheckResult`, and the
signals layer records it as the quality of the window it computed from. Keeping the logic here
means a benchmark, a test or the sidecar can run the very same checks without Dagster.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

MAX_LISTED = 50  # problems listed in metadata; the count is always exact

FLOAT_RTOL = 1e-9
"""Rounding noise a check allows when it compares computed floats, relative to the scale of
what is compared (a bound's magnitude, or the compared values' own size).

float64 carries ~16 significant digits (eps 2.2e-16). TA-Lib's running sums (SMA, STOCH's
smoothing) and ratios lose a few of them per step, so a value that is exactly on a bound in
exact arithmetic lands within ~1e-12 of its scale: on the real Bybit BTCUSDT month, stoch_k
reached 100 + 4.7e-13 and -3.1e-13. 1e-9 leaves three orders of magnitude for longer series
and is still far below any real violation (a 0.1 tick at a price of 100,000 is 1e-6; the
indicators' own warm-up tolerance is 1e-6). Comparisons of values that no arithmetic
produced (OHLC of a candle: a maximum, a minimum, a first and a last of stored values;
integer counts) are exact and stay exact.
"""


@dataclass(frozen=True)
class CheckOutcome:
    """Whether a check passed, a sentence saying what it found, and details for the UI."""

    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _iso(v: Any) -> str:
    return v.isoformat() if isinstance(v, dt.datetime) else str(v)


def _listed(rows: list[Any]) -> list[str]:
    return [_iso(r) for r in rows[:MAX_LISTED]]


def no_duplicates(frame: pl.DataFrame, keys: list[str]) -> CheckOutcome:
    import polars as pl

    dups = frame.group_by(keys).len().filter(pl.col("len") > 1)
    if dups.is_empty():
        return CheckOutcome(True, f"no duplicate {tuple(keys)} among {frame.height} rows")
    sample = [", ".join(_iso(v) for v in r) for r in dups.head(MAX_LISTED).select(keys).rows()]
    return CheckOutcome(
        False,
        f"{dups.height} duplicated {tuple(keys)} keys",
        {"duplicates": dups.height, "examples": sample},
    )


def ohlc_sane(frame: pl.DataFrame, keys: list[str]) -> CheckOutcome:
    """low <= open, close <= high; volume >= 0; all prices positive and finite."""
    import polars as pl

    bad = frame.filter(
        ~(
            (pl.col("low") <= pl.min_horizontal("open", "close"))
            & (pl.max_horizontal("open", "close") <= pl.col("high"))
            & (pl.col("volume") >= 0)
            & (pl.col("low") > 0)
            & pl.all_horizontal(pl.col("open", "high", "low", "close").is_finite())
        )
        | pl.any_horizontal(pl.col("open", "high", "low", "close", "volume").is_null())
    )
    if bad.is_empty():
        return CheckOutcome(True, f"OHLC and volume sane on {frame.height} rows")
    sample = [", ".join(_iso(v) for v in r) for r in bad.head(MAX_LISTED).select(keys).rows()]
    return CheckOutcome(
        False,
        f"{bad.height} rows with inconsistent OHLC/volume",
        {"bad_rows": bad.height, "examples": sample},
    )


def missing_minutes(
    frame: pl.DataFrame, symbols: list[str], start: dt.datetime, end: dt.datetime
) -> dict[str, list[dt.datetime]]:
    """Per symbol, the 1m open times in [start, end) with no row."""
    import polars as pl

    if end <= start:
        return {s: [] for s in symbols}
    grid = pl.datetime_range(
        start, end - dt.timedelta(minutes=1), "1m", eager=True, time_unit="us", time_zone="UTC"
    ).alias("open_time")
    out: dict[str, list[dt.datetime]] = {}
    for sym in symbols:
        have = frame.filter(pl.col("symbol") == sym).select(
            pl.col("open_time").cast(pl.Datetime("us", "UTC"))
        )
        out[sym] = grid.to_frame().join(have, on="open_time", how="anti")["open_time"].to_list()
    return out


def complete_minutes(
    frame: pl.DataFrame, symbols: list[str], start: dt.datetime, end: dt.datetime
) -> CheckOutcome:
    """Every minute in [start, end) is present for every symbol; missing ones are listed."""
    gaps = missing_minutes(frame, symbols, start, end)
    total = sum(len(v) for v in gaps.values())
    expected = int((end - start).total_seconds() // 60) if end > start else 0
    meta: dict[str, Any] = {"expected_per_symbol": expected, "missing": total}
    for sym, miss in gaps.items():
        if miss:
            meta[f"missing_{sym}"] = _listed(miss)
    if total == 0:
        return CheckOutcome(
            True, f"all {expected} minutes present for {len(symbols)} symbol(s)", meta
        )
    return CheckOutcome(False, f"{total} minute(s) missing in [{_iso(start)}, {_iso(end)})", meta)


def nothing_from_future(frame: pl.DataFrame, now: dt.datetime) -> CheckOutcome:
    """No candle that had not closed by `now` (a forming or future candle) is stored."""
    import polars as pl

    bad = frame.filter(pl.col("close_time") > now)
    if bad.is_empty():
        return CheckOutcome(True, f"no candle closes after {_iso(now)}")
    return CheckOutcome(
        False,
        f"{bad.height} candle(s) close after {_iso(now)}",
        {
            "future_rows": bad.height,
            "examples": _listed(bad["open_time"].to_list()),
        },
    )


def kline_checks(
    frame: pl.DataFrame,
    symbols: list[str],
    start: dt.datetime,
    end: dt.datetime,
    now: dt.datetime,
    exchange_gaps: pl.DataFrame | None = None,
) -> dict[str, CheckOutcome]:
    """The blocking checks on `bybit_klines_1m` over [start, end).

    Minutes missing because the exchange itself has no candle for them (`exchange_gaps`)
    are listed but do not fail the completeness check; minutes the pipeline lost do.
    """
    keys = ["symbol", "open_time"]
    completeness = complete_minutes(frame, symbols, start, end)
    if not completeness.passed and exchange_gaps is not None and exchange_gaps.height:
        known = {(s, t) for s, t in exchange_gaps.select(keys).iter_rows()}
        gaps = missing_minutes(frame, symbols, start, end)
        lost = {s: [t for t in ts if (s, t) not in known] for s, ts in gaps.items()}
        n_lost = sum(len(v) for v in lost.values())
        n_known = sum(len(v) for v in gaps.values()) - n_lost
        meta = {**completeness.metadata, "exchange_gaps": n_known, "lost": n_lost}
        if n_lost == 0:
            completeness = CheckOutcome(
                True,
                f"{n_known} minute(s) missing, all confirmed absent at the exchange "
                "(signals on these windows are marked degraded)",
                meta,
            )
        else:
            completeness = CheckOutcome(False, completeness.description, meta)
    return {
        "no_duplicates": no_duplicates(frame, keys),
        "ohlc_sane": ohlc_sane(frame, keys),
        "complete_minutes": completeness,
        "nothing_from_future": nothing_from_future(frame, now),
    }

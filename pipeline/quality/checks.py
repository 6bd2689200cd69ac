"""Data-quality checks as plain functions over polars frames.

Each returns a `CheckOutcome`; the Dagster layer turns it into an `AssetCheckResult`, and the
signals layer records it as the quality of the window it computed from. Keeping the logic here
means a benchmark, a test or the sidecar can run the very same checks without Dagster.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

    from pipeline.markets import Market

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


def _failed(rows: pl.DataFrame, keys: list[str], message: str, count: str) -> CheckOutcome:
    """A failed check: its message, how many `rows` failed (metadata `count`) and the keys of
    the first MAX_LISTED of them."""
    sample = [", ".join(_iso(v) for v in r) for r in rows.head(MAX_LISTED).select(keys).rows()]
    return CheckOutcome(False, message, {count: rows.height, "examples": sample})


def no_duplicates(frame: pl.DataFrame, keys: list[str]) -> CheckOutcome:
    import polars as pl

    dups = frame.group_by(keys).len().filter(pl.col("len") > 1)
    if dups.is_empty():
        return CheckOutcome(True, f"no duplicate {tuple(keys)} among {frame.height} rows")
    return _failed(dups, keys, f"{dups.height} duplicated {tuple(keys)} keys", "duplicates")


def ohlc_sane(frame: pl.DataFrame, keys: list[str]) -> CheckOutcome:
    """low <= open, close <= high; volume >= 0; all prices positive and finite.

    Exact comparisons (tolerance 0, see FLOAT_RTOL): a stored candle's numbers are the
    exchange's, and a bucket's high, low, open and close are a maximum, a minimum, a first
    and a last of them, so no rounding can move one past another; summed volumes of
    non-negative minutes stay non-negative.
    """
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
    return _failed(bad, keys, f"{bad.height} rows with inconsistent OHLC/volume", "bad_rows")


DISPLAY_DIGITS = 6


def for_display(value: Any) -> Any:
    """`value` with every float (also inside dicts, lists and tuples) rounded to DISPLAY_DIGITS
    significant digits, so the UI shows 0.3, not 0.30000000000000004. For display only: never
    for values that are compared or stored."""
    if isinstance(value, float):
        return float(f"{value:.{DISPLAY_DIGITS}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: for_display(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [for_display(v) for v in value]
    return value


class Markdown(str):
    """Metadata text the Dagster layer shows as markdown (a table in the UI)."""


def md_table(frame: pl.DataFrame | None) -> Markdown:
    """A polars frame as a markdown table for the UI (floats rounded by `for_display`)."""
    if frame is None or frame.height == 0:
        return Markdown("(none)")
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.width]
    for row in frame.iter_rows():
        cells = [str(for_display(v)) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return Markdown("\n".join(lines))


def missing_frame(
    frame: pl.DataFrame, symbols: list[str], start: dt.datetime, end: dt.datetime
) -> pl.DataFrame:
    """symbol, open_time of every 1m open time in [start, end) with no row, per symbol."""
    import polars as pl

    ts = pl.Datetime("us", "UTC")
    if end <= start or not symbols:
        return pl.DataFrame(schema={"symbol": pl.String, "open_time": ts})
    grid = pl.datetime_range(
        start, end - dt.timedelta(minutes=1), "1m", eager=True, time_unit="us", time_zone="UTC"
    ).alias("open_time")
    want = pl.DataFrame({"symbol": symbols}).join(grid.to_frame(), how="cross")
    have = frame.select(pl.col("symbol").cast(pl.String), pl.col("open_time").cast(ts))
    return want.join(have, on=["symbol", "open_time"], how="anti").sort("symbol", "open_time")


def missing_minutes(
    frame: pl.DataFrame, symbols: list[str], start: dt.datetime, end: dt.datetime
) -> dict[str, list[dt.datetime]]:
    """Per symbol, the 1m open times in [start, end) with no row."""
    miss = missing_frame(frame, symbols, start, end)
    out: dict[str, list[dt.datetime]] = {s: [] for s in symbols}
    for (sym,), part in miss.partition_by("symbol", as_dict=True).items():
        out[str(sym)] = part["open_time"].to_list()
    return out


def gap_days(missing: pl.DataFrame) -> pl.DataFrame:
    """Missing minutes summed per symbol over runs of consecutive UTC days that hold any (and
    are of one kind: all confirmed absent at the exchange, all lost, or both): symbol, days
    ("2021-04-25" or "2021-04-27..2021-04-28"), n_days, missing, confirmed, lost, first and
    last missing minute. Every affected day is inside one run, and a run is one row, so a year
    of days without data stays one row.

    `missing`: symbol, open_time and optionally a boolean `confirmed`.
    """
    import polars as pl

    conf = pl.col("confirmed") if "confirmed" in missing.columns else pl.lit(False)
    per_day = (
        missing.with_columns(conf.alias("confirmed"), pl.col("open_time").dt.date().alias("day"))
        .group_by("symbol", "day")
        .agg(
            pl.len().alias("missing"),
            pl.col("confirmed").sum().alias("confirmed"),
            pl.col("open_time").min().alias("first"),
            pl.col("open_time").max().alias("last"),
        )
        .sort("symbol", "day")
        .with_columns(  # all confirmed, all lost, or both: days of one kind merge
            pl.when(pl.col("confirmed") == pl.col("missing"))
            .then(1)
            .when(pl.col("confirmed") == 0)
            .then(2)
            .otherwise(3)
            .alias("kind")
        )
        .with_columns(
            (
                (pl.col("day").diff().over("symbol") != pl.duration(days=1))
                | (pl.col("kind").diff().over("symbol") != 0)
            )
            .fill_null(True)
            .cum_sum()
            .alias("run")
        )
    )
    day = pl.col("day").dt.to_string("%Y-%m-%d")
    return (
        per_day.group_by("symbol", "run", maintain_order=True)
        .agg(
            day.first().alias("from"),
            day.last().alias("to"),
            pl.len().alias("n_days"),
            pl.col("missing").sum(),
            pl.col("confirmed").sum(),
            pl.col("first").min().dt.strftime("%Y-%m-%d %H:%M").alias("first_missing"),
            pl.col("last").max().dt.strftime("%Y-%m-%d %H:%M").alias("last_missing"),
        )
        .select(
            "symbol",
            pl.when(pl.col("n_days") == 1)
            .then(pl.col("from"))
            .otherwise(pl.concat_str("from", pl.lit(".."), "to"))
            .alias("days"),
            "n_days",
            pl.col("missing").cast(pl.Int64),
            pl.col("confirmed").cast(pl.Int64),
            (pl.col("missing") - pl.col("confirmed")).cast(pl.Int64).alias("lost"),
            "first_missing",
            "last_missing",
        )
    )


MAX_DAY_RUNS = 12  # day runs named in a check's one-line description; metadata has them all


def describe_days(runs: pl.DataFrame, split: bool = False) -> str:
    """The runs of `gap_days` in words, e.g. BTCUSDT 2021-04-20 (150 min), 2021-04-25..2021-04-26
    (1,724 min); with `split`, the lost share per run; beyond MAX_DAY_RUNS runs, how many more
    days the metadata table names."""
    parts: list[str] = []
    shown = runs.head(MAX_DAY_RUNS)
    for (sym,), part in shown.partition_by("symbol", as_dict=True, maintain_order=True).items():
        items = []
        for r in part.iter_rows(named=True):
            lost = r["lost"]
            what = f"{r['missing']:,} min"
            if split:
                what += (
                    ", exchange gap"
                    if not lost
                    else ", all lost"
                    if lost == r["missing"]
                    else f", {lost:,} lost"
                )
            items.append(f"{r['days']} ({what})")
        parts.append(f"{sym} " + ", ".join(items))
    text = "; ".join(parts)
    if runs.height > shown.height:
        rest = runs.slice(MAX_DAY_RUNS)
        text += (
            f"; and {rest['n_days'].sum():,} more day(s) in {rest.height} run(s),"
            " listed in the metadata table missing_days"
        )
    return text


def complete_minutes(
    frame: pl.DataFrame,
    symbols: list[str],
    start: dt.datetime,
    end: dt.datetime,
    exchange_gaps: pl.DataFrame | None = None,
) -> CheckOutcome:
    """Every minute in [start, end) is present for every symbol, or confirmed absent at the
    exchange (`exchange_gaps`: symbol, open_time): those are reported but do not fail the
    check; minutes the pipeline lost do. Every affected UTC day is named, per symbol, in the
    description and in the metadata table `missing_days` (runs of consecutive days merged)."""
    import polars as pl

    miss = missing_frame(frame, symbols, start, end)
    expected = int((end - start).total_seconds() // 60) if end > start else 0
    if exchange_gaps is not None and exchange_gaps.height and miss.height:
        known = exchange_gaps.select(
            pl.col("symbol").cast(pl.String),
            pl.col("open_time").cast(pl.Datetime("us", "UTC")),
            pl.lit(True).alias("confirmed"),
        ).unique()
        miss = miss.join(known, on=["symbol", "open_time"], how="left").with_columns(
            pl.col("confirmed").fill_null(False)
        )
    runs = gap_days(miss)
    total = miss.height
    n_known = int(runs["confirmed"].sum()) if runs.height else 0
    n_lost = total - n_known
    meta: dict[str, Any] = {
        "expected_per_symbol": expected,
        "missing": total,
        "exchange_gaps": n_known,
        "lost": n_lost,
        "days_with_missing": int(runs["n_days"].sum()) if runs.height else 0,
        "missing_days": md_table(runs),
    }
    if total == 0:
        return CheckOutcome(
            True, f"all {expected} minutes present for each of {len(symbols)} market(s)", meta
        )
    days = describe_days(runs, split=n_known > 0 and n_lost > 0)
    if n_lost == 0:
        return CheckOutcome(
            True,
            f"{total:,} minute(s) missing, all confirmed absent at the exchange"
            f" (signals on these windows are marked degraded): {days}",
            meta,
        )
    lost = f"{n_lost:,} of {total:,}" if n_known else f"{total:,}"
    return CheckOutcome(
        False,
        f"{lost} minute(s) missing in [{_iso(start)}, {_iso(end)}) and not confirmed absent"
        f" at the exchange: {days}",
        meta,
    )


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


def by_market(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with `symbol` naming the market (`bybit:BTCUSDT`) and no `exchange` column, so
    per-symbol checks tell two venues' same-named symbols apart and name the venue."""
    import polars as pl

    if "exchange" not in frame.columns:
        return frame
    market = pl.concat_str(pl.col("exchange"), pl.lit(":"), pl.col("symbol"))
    return frame.with_columns(symbol=market).drop("exchange")


def kline_checks(
    frame: pl.DataFrame,
    markets: list[Market],
    start: dt.datetime,
    end: dt.datetime,
    now: dt.datetime,
    exchange_gaps: pl.DataFrame | None = None,
) -> dict[str, CheckOutcome]:
    """The blocking checks on `klines_1m` over [start, end) (frames with `exchange`).

    Minutes missing because the exchange itself has no candle for them (`exchange_gaps`)
    are listed but do not fail the completeness check; minutes the pipeline lost do. Every
    market is named `exchange:symbol` in what the checks report.
    """
    frame = by_market(frame)
    gaps = by_market(exchange_gaps) if exchange_gaps is not None else None
    keys = ["symbol", "open_time"]
    names = [str(m) for m in markets]
    return {
        "no_duplicates": no_duplicates(frame, keys),
        "ohlc_sane": ohlc_sane(frame, keys),
        "complete_minutes": complete_minutes(frame, names, start, end, gaps),
        "nothing_from_future": nothing_from_future(frame, now),
    }

"""What the market-context assets prove about a day, as plain functions over polars frames.

Every table: no duplicate key; the `known_at` rule (funding: known_at = funding_time; open
interest: known_at = time + 5 min; spot: close_time = open_time + 1 min, its known_at); no
row known after the exchange's clock at ingest time. Funding: timestamps on each market's own
funding grid (the interval its exchange states, pipeline/context/legs.py: 8 hours for most
Bybit perpetuals, 1, 2 or 4 for some), flagged (stored as sent and named here), never fixed.
Open interest: readings on the 5-minute grid, finite and >= 0. Spot: OHLC sane, exactly
(`quality.checks.ohlc_sane`: the exchange's own numbers, times the leg's multiplier, which
keeps their order, so the tolerance is 0 per FLOAT_RTOL's rule). `coverage` states how
much of the day the spot candles cover: it is a warning only (`WARN_ONLY`), since a quiet spot
minute may have no candle, and a rule reads a missing value as NULL, never zero.
`spot_price_matches` holds the spot leg near the perpetual's price (median |basis| under
`BASIS_LIMIT`), so a leg at another scale fails the run instead of skewing basis_bps; it is
part of `ohlc_sane`, as the rules of keys and time are one check per table
(`keys_and_known_at`, naming which rule failed): every
check result is two events in Dagster's log, a live run's biggest cost.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from pipeline.context.tables import FUNDING, OPEN_INTEREST, SPOT, Table
from pipeline.quality.checks import (
    CheckOutcome,
    _failed,
    no_duplicates,
    nothing_from_future,
    ohlc_sane,
)

if TYPE_CHECKING:
    import polars as pl

KEYS = {t.name: ["exchange", "symbol", t.time] for t in (FUNDING, OPEN_INTEREST, SPOT)}
_KEYED = "At most one row per (exchange, symbol, {time}); {rule} on every row; no row known "
_KEYED += "after the exchange's clock at ingest time."
CHECKS = {
    FUNDING.name: {
        "on_funding_grid": "Every funding_time is on its market's funding grid from 00:00 UTC: "
        "the interval the exchange states (Bybit instruments-info fundingInterval: 8 h for "
        "most perpetuals, 1, 2 or 4 h for some), named per market in the metadata; a row off "
        "it is stored as the exchange sent it and named here (flagged, never fixed).",
        "keys_and_known_at": _KEYED.format(
            time="funding_time", rule="known_at = funding_time (public once settled)"
        ),
    },
    OPEN_INTEREST.name: {
        "on_5min_grid": "Every reading's time is on the 5-minute grid and its open interest "
        "is finite and >= 0.",
        "keys_and_known_at": _KEYED.format(
            time="time", rule="known_at = time + 5 min (the end of the reading's interval)"
        ),
    },
    SPOT.name: {
        "ohlc_sane": "low <= open, close <= high; volume >= 0; prices positive and finite "
        "(exact: the exchange's own numbers); and at the perpetual's price: per market, the "
        "median |perpetual close / spot close - 1| over the minutes both have is under 10 % "
        "(real basis is a fraction of that), so a spot leg at another scale (a wrong "
        "bybit.spot_legs multiplier) or of another asset fails here, never as a silently "
        "wrong basis_bps.",
        "keys_and_known_at": _KEYED.format(
            time="open_time", rule="close_time = open_time + 1 min (close_time is its known_at)"
        ),
        "coverage": "States how many of the day's closed minutes have a spot candle, and "
        "which perpetual minutes lack one (a warning only: a quiet spot minute may have none).",
    },
}
BASIS_LIMIT = 0.10  # a spot-perp spread no real leg keeps for a median minute of a day
WARN_ONLY = {"coverage"}


def _together(outcomes: dict[str, CheckOutcome]) -> CheckOutcome:
    """Several rules as one check: passed if all did; says what each found."""
    failed = {k: o for k, o in outcomes.items() if not o.passed}
    shown = failed or outcomes
    meta = {f"{k}: {m}": v for k, o in failed.items() for m, v in o.metadata.items()}
    return CheckOutcome(not failed, "; ".join(o.description for o in shown.values()), meta)


def _known_at(frame: pl.DataFrame, table: Table) -> CheckOutcome:
    import polars as pl

    known = "close_time" if table is SPOT else "known_at"
    bad = frame.filter(pl.col(known) != pl.col(table.time) + table.known_after)
    if bad.is_empty():
        return CheckOutcome(True, f"{known} = {table.time} + {table.known_after} on all rows")
    return _failed(bad, KEYS[table.name], f"{bad.height} rows break the {known} rule", "bad_rows")


def _future(frame: pl.DataFrame, table: Table, now: dt.datetime) -> CheckOutcome:
    import polars as pl

    if table is SPOT:
        return nothing_from_future(frame, now)
    bad = frame.filter(pl.col("known_at") > now)
    if bad.is_empty():
        return CheckOutcome(True, f"no row known after {now.isoformat()}")
    return _failed(bad, KEYS[table.name], f"{bad.height} rows known after {now}", "future_rows")


def _on_grid(frame: pl.DataFrame, table: Table) -> CheckOutcome:
    import polars as pl

    t = pl.col(table.time)
    v = pl.col("open_interest")
    bad = frame.filter(
        (t.dt.truncate(f"{int(table.step.total_seconds())}s") != t) | ~v.is_finite() | (v < 0)
    )
    if bad.is_empty():
        return CheckOutcome(True, f"all {frame.height} rows on the {table.step} grid")
    what = f"{bad.height} rows off the {table.step} grid or with a negative/non-finite reading"
    return _failed(bad, KEYS[table.name], what, "flagged_rows")


def _span(step: dt.timedelta | None) -> str:
    """`8h`, `4h`, `30min`; `not stated`."""
    if step is None:
        return "not stated"
    minutes = int(step.total_seconds() // 60)
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}min"


def on_funding_grid(frame: pl.DataFrame, intervals: dict[str, dt.timedelta | None]) -> CheckOutcome:
    """Each funding row on its market's (`exchange:symbol`) stated interval; rows of a market
    whose interval is not stated are named as not checked (never held to a guessed one)."""
    import polars as pl

    market = pl.concat_str("exchange", pl.lit(":"), "symbol")
    seen = sorted(set(frame.select(market.alias("m"))["m"].to_list()) | set(intervals))
    stated = {m: intervals.get(m) for m in seen}
    meta: dict[str, object] = {"funding_interval": {m: _span(t) for m, t in stated.items()}}
    step_s = {m: int(t.total_seconds()) for m, t in stated.items() if t is not None}
    rows = frame.with_columns(
        _step=market.replace_strict(step_s, default=None, return_dtype=pl.Int64),
        _s=pl.col("funding_time").dt.epoch("s"),
    )
    unchecked = sorted(m for m, t in stated.items() if t is None)
    bad = rows.filter(pl.col("_step").is_not_null() & (pl.col("_s") % pl.col("_step") != 0))
    grids = ", ".join(f"{m} {_span(t)}" for m, t in stated.items()) or "no markets"
    note = f"; not checked (no interval stated): {', '.join(unchecked)}" if unchecked else ""
    if bad.is_empty():
        return CheckOutcome(True, f"all {frame.height} rows on their grid ({grids}){note}", meta)
    out = _failed(bad, KEYS[FUNDING.name], f"{bad.height} rows off their market's funding "
                  f"grid ({grids}) (flagged){note}", "flagged_rows")  # fmt: skip
    return CheckOutcome(False, out.description, {**out.metadata, **meta})


def coverage(
    frame: pl.DataFrame,
    table: Table,
    markets: list[str],
    day: dt.datetime,
    until: dt.datetime,
    perp_minutes: pl.DataFrame | None = None,
) -> CheckOutcome:
    """How many grid times of [day, until) whose rows are known by `until` each market has;
    for spot also the perpetual minutes (`perp_minutes`: exchange, symbol, open_time) without
    a spot candle. Fails (a warning) when any is missing."""
    import polars as pl

    last = table.last_due(until, until)
    expected = max(int((last - day) / table.step) + 1, 0)
    have = frame.group_by(pl.concat_str("exchange", pl.lit(":"), "symbol").alias("m")).len()
    counts = dict(zip(have["m"].to_list(), have["len"].to_list(), strict=True))
    per = {m: f"{counts.get(m, 0)}/{expected}" for m in markets}
    short = [m for m in markets if counts.get(m, 0) < expected]
    meta: dict[str, object] = {"stored": per, "expected": expected}
    unmatched = 0
    if perp_minutes is not None and perp_minutes.height:
        lacking = perp_minutes.join(frame, on=KEYS[table.name], how="anti")
        unmatched = lacking.height
        meta["perp_minutes_without_spot"] = unmatched
    text = ", ".join(f"{m} {v}" for m, v in per.items()) or "no markets"
    if not short and not unmatched:
        return CheckOutcome(True, f"{table.name} covers the day so far: {text}", meta)
    extra = f"; {unmatched} perpetual minute(s) have no spot candle" if unmatched else ""
    return CheckOutcome(False, f"{table.name} incomplete: {text}{extra}", meta)


def spot_price_matches(frame: pl.DataFrame, perp: pl.DataFrame | None) -> CheckOutcome:
    """The spot rows at the perpetual's price (`CHECKS[SPOT]["ohlc_sane"]`'s second rule),
    against its candles (`perp`: exchange, symbol, open_time, close) of the same minutes."""
    import polars as pl

    if perp is None or "close" not in perp.columns:
        return CheckOutcome(True, "no perpetual closes given: nothing compared", {})
    keys = KEYS[SPOT.name]
    both = perp.select(*keys, pl.col("close").alias("_perp")).join(
        frame.select(*keys, "close"), on=keys
    )
    per = (
        both.group_by(pl.concat_str("exchange", pl.lit(":"), "symbol").alias("m"))
        .agg(((pl.col("_perp") / pl.col("close") - 1).abs().median() * 1e4).alias("bps"))
        .sort("m")
    )
    median = {m: round(b, 1) for m, b in per.iter_rows()}
    meta: dict[str, object] = {"median_abs_basis_bps": median}
    bad = ", ".join(f"{m} {b:,} bp" for m, b in median.items() if b >= BASIS_LIMIT * 1e4)
    if bad:
        what = f"spot leg not at the perpetual's price: {bad} (median |basis|); check its pair"
        return CheckOutcome(False, f"{what} and multiplier (bybit.spot_legs)", meta)
    good = f"median |basis| under {BASIS_LIMIT:.0%} for {per.height} market(s)"
    return CheckOutcome(True, good, meta)


def context_checks(
    frame: pl.DataFrame,
    table: Table,
    now: dt.datetime,
    markets: list[str],
    day: dt.datetime,
    perp_minutes: pl.DataFrame | None = None,
    end: dt.datetime | None = None,
    intervals: dict[str, dt.timedelta | None] | None = None,
) -> dict[str, CheckOutcome]:
    """Every check of `table` over its stored rows of the days [day, end) (`frame`; `end`
    defaults to the next day), by name (`CHECKS`); `intervals` are the markets' funding
    intervals (`exchange:symbol`, `ContextSummary.intervals`)."""
    out = {
        "keys_and_known_at": _together(
            {
                "no_duplicates": no_duplicates(frame, KEYS[table.name]),
                "known_at_rule": _known_at(frame, table),
                "nothing_from_future": _future(frame, table, now),
            }
        )
    }
    if table is SPOT:
        out["ohlc_sane"] = _together(
            {
                "ohlc_sane": ohlc_sane(frame, KEYS[table.name]),
                "spot_price_matches": spot_price_matches(frame, perp_minutes),
            }
        )
        until = min(now, end or day + dt.timedelta(days=1))
        out["coverage"] = coverage(frame, table, markets, day, until, perp_minutes)
    elif table is FUNDING:
        out["on_funding_grid"] = on_funding_grid(frame, intervals or {})
    else:
        out["on_5min_grid"] = _on_grid(frame, table)
    return {name: out[name] for name in CHECKS[table.name]}

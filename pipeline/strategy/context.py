"""Market context a personality may read besides candles and indicators: order flow
(`order_flow_bars`), funding, open interest and the spot-perp basis (warehouse migration 0009),
joined onto each timeframe's bars as of the bar's close.

Each value is what was public when the bar closed, and none depends on history beyond a fixed
reach back, so a partition, the whole history and the live path (data cut at the bar's close)
give the same bits:

- `buy_ratio`, `delta`, `cvd` (the rolling 24h CVD, `cvd_24h`), `cvd_day`: the bar's own
  `order_flow_bars` row (same timeframe and open_time), NULL where that bar is not covered;
- `funding_rate`: the newest funding row with known_at <= close, NULL if none is, or if the
  newest is older than one funding interval (8 h, Bybit's longest): a hole in the history is
  unknown, never the rate of days ago;
- `oi_change_1h`: OI(newest known_at <= close) / OI(newest known_at <= close - 1 h) - 1, NULL
  if either reading is missing or more than one 5-minute step old;
- `basis_bps`: (close - spot close) / spot close x 1e4, the spot 1m candle closing at the
  bar's close_time; NULL if there is none.

Reading them costs queries of five more tables, so only personalities that name them read
them (`context_needs`); a frame without the columns a personality needs is an error naming
them (pipeline.strategy.signal_inputs).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pipeline.strategy.personality import CONTEXT_VALUES as COLUMNS

if TYPE_CHECKING:
    import polars as pl

    from pipeline.strategy.personality import Personality

# rule column -> order_flow_bars column (the others: funding_rates, open_interest_5m, spot)
FLOW = {"buy_ratio": "buy_ratio", "delta": "delta", "cvd": "cvd_24h", "cvd_day": "cvd_day"}
FUNDING_STALE = dt.timedelta(hours=8)
OI_STEP = dt.timedelta(minutes=5)
OI_SPAN = dt.timedelta(hours=1)
Windows = Mapping[str, tuple[dt.datetime, dt.datetime]]


@dataclass(frozen=True)
class Context:
    """One venue's context rows as their tables hold them (without `exchange`), each with the
    instant it became known: `flow` (order_flow_bars: symbol, timeframe, open_time, close_time
    and the FLOW columns), `funding` (funding_rates: symbol, known_at, funding_rate), `oi`
    (open_interest_5m: symbol, known_at, open_interest), `spot` (spot_klines_1m: symbol,
    close_time, close). None: not read (not needed)."""

    flow: pl.DataFrame | None = None
    funding: pl.DataFrame | None = None
    oi: pl.DataFrame | None = None
    spot: pl.DataFrame | None = None

    def known_by(self, t: dt.datetime) -> Context:
        """Only the rows public at `t` (the live path's view at a bar's close)."""
        import polars as pl

        def cut(f: pl.DataFrame | None, col: str) -> pl.DataFrame | None:
            return None if f is None else f.filter(pl.col(col) <= t)

        return replace(
            self,
            flow=cut(self.flow, "close_time"),
            funding=cut(self.funding, "known_at"),
            oi=cut(self.oi, "known_at"),
            spot=cut(self.spot, "close_time"),
        )

    def of_symbol(self, symbol: str) -> Context:
        import polars as pl

        def mine(f: pl.DataFrame | None) -> pl.DataFrame | None:
            return None if f is None else f.filter(pl.col("symbol") == symbol)

        return Context(mine(self.flow), mine(self.funding), mine(self.oi), mine(self.spot))


def no_context() -> Context:
    """Every table read and empty: what a warehouse holding no market context gives (each
    context column NULL), e.g. for candles from a file."""
    import polars as pl

    ts = pl.Datetime("us", "UTC")
    key = {"symbol": pl.String}
    return Context(
        flow=pl.DataFrame(
            schema={**key, "timeframe": pl.String, "open_time": ts, "close_time": ts}
            | dict.fromkeys(FLOW.values(), pl.Float64)
        ),
        funding=pl.DataFrame(schema={**key, "known_at": ts, "funding_rate": pl.Float64}),
        oi=pl.DataFrame(schema={**key, "known_at": ts, "open_interest": pl.Float64}),
        spot=pl.DataFrame(schema={**key, "close_time": ts, "close": pl.Float64}),
    )


def context_needs(personalities: Iterable[Personality]) -> dict[str, set[str]]:
    """Per timeframe, the context columns the personalities read (empty: read none)."""
    need: dict[str, set[str]] = {}
    for p in personalities:
        for tf, col in p.refs:
            if col in COLUMNS:
                need.setdefault(tf or p.signal_tf, set()).add(col)
    return need


def reads_context(p: Personality) -> list[str]:
    """The context columns `p` reads (as `1h.funding_rate` for another timeframe), sorted."""
    return sorted(c if tf is None else f"{tf}.{c}" for tf, c in p.refs if c in COLUMNS)


def read_context(wh: Any, exchange: str, windows: Windows, need: Mapping[str, set[str]]) -> Context:
    """The venue's context rows the bars of `windows` (per timeframe: open_time >= lo,
    close_time <= hi) can be joined to, from the tables `need` names only."""
    tfs = [tf for tf in need if tf in windows]
    if not tfs:
        return Context()
    cols = set().union(*(need[tf] for tf in tfs))
    lo = min(windows[tf][0] for tf in tfs)
    hi = max(windows[tf][1] for tf in tfs)
    out = Context()
    flow_tfs = [tf for tf in tfs if need[tf] & set(FLOW)]
    if flow_tfs:
        values = ", ".join("(?, ?, ?)" for _ in flow_tfs)
        params = [v for tf in flow_tfs for v in (tf, *windows[tf])]
        picked = ", ".join(f"f.{src}" for src in FLOW.values())
        out = replace(
            out,
            flow=wh.query(
                f"SELECT f.symbol, f.timeframe, f.open_time, f.close_time, {picked}"
                f" FROM order_flow_bars f JOIN (VALUES {values}) w(tf, lo, hi)"
                " ON f.timeframe = w.tf AND f.open_time >= w.lo AND f.close_time <= w.hi"
                " WHERE f.exchange = ?",
                [*params, exchange],
            ),
        )
    if "funding_rate" in cols:
        out = replace(
            out,
            funding=wh.query(
                "SELECT symbol, known_at, funding_rate FROM funding_rates"
                " WHERE exchange = ? AND known_at >= ? AND known_at <= ?",
                [exchange, lo - FUNDING_STALE, hi],
            ),
        )
    if "oi_change_1h" in cols:
        out = replace(
            out,
            oi=wh.query(
                "SELECT symbol, known_at, open_interest FROM open_interest_5m"
                " WHERE exchange = ? AND known_at >= ? AND known_at <= ?",
                [exchange, lo - OI_SPAN - OI_STEP, hi],
            ),
        )
    if "basis_bps" in cols:
        out = replace(
            out,
            spot=wh.query(
                "SELECT symbol, close_time, close FROM spot_klines_1m"
                " WHERE exchange = ? AND close_time >= ? AND close_time <= ?",
                [exchange, lo, hi],
            ),
        )
    return out


def join_context(
    frames: Mapping[str, pl.DataFrame], ctx: Context, need: Mapping[str, set[str]]
) -> dict[str, pl.DataFrame]:
    """`frames` (per timeframe: symbol, open_time, close_time, close, ...) with the context
    columns `need` names for that timeframe, as of each bar's close (rows in their order; a
    column already there is replaced). A table `need` calls for that `ctx` lacks is an error."""
    out = dict(frames)
    for tf, cols in need.items():
        if tf in frames and cols:
            out[tf] = _join(frames[tf], ctx, cols, tf)
    return out


def _rows(f: pl.DataFrame | None, what: str) -> pl.DataFrame:
    if f is None:
        raise ValueError(f"context rows of {what} were not read: read_context with its columns")
    return f


def _key(f: pl.DataFrame, name: str) -> pl.Expr:
    from pipeline.strategy.signal_inputs import utc

    return utc(f, name)


def _join(frame: pl.DataFrame, ctx: Context, cols: set[str], tf: str) -> pl.DataFrame:
    import polars as pl

    f = frame.drop([c for c in COLUMNS if c in frame.columns]).with_columns(
        pl.int_range(pl.len()).alias("_row"),
        pl.col("symbol").cast(pl.String).alias("_sym"),
        _key(frame, "open_time").alias("_open"),
        _key(frame, "close_time").alias("_close"),
    )
    if flow := [c for c in FLOW if c in cols]:
        rows = _rows(ctx.flow, "order_flow_bars")
        rows = rows.filter(pl.col("timeframe") == tf).select(
            pl.col("symbol").cast(pl.String).alias("_sym"),
            _key(rows, "open_time").alias("_open"),
            *[pl.col(FLOW[c]).cast(pl.Float64).alias(c) for c in flow],
        )
        f = f.join(rows, on=["_sym", "_open"], how="left")
    f = f.sort("_close")
    if "funding_rate" in cols:
        rows = _asof_rows(_rows(ctx.funding, "funding_rates"), "funding_rate")
        f = _asof(f, rows, "_close", FUNDING_STALE)
    if "oi_change_1h" in cols:
        rows = _asof_rows(_rows(ctx.oi, "open_interest_5m"), "open_interest")
        now = _asof(f, rows, "_close", OI_STEP)
        then = f.select("_row", "_sym", (pl.col("_close") - OI_SPAN).alias("_then"))
        then = _asof(then.sort("_then"), rows, "_then", OI_STEP)
        change = now.select("_row", "open_interest").join(
            then.select("_row", pl.col("open_interest").alias("_oi_then")), on="_row"
        )
        f = f.join(
            change.select(
                "_row", (pl.col("open_interest") / pl.col("_oi_then") - 1.0).alias("oi_change_1h")
            ),
            on="_row",
        )
    if "basis_bps" in cols:
        rows = _rows(ctx.spot, "spot_klines_1m")
        rows = rows.select(
            pl.col("symbol").cast(pl.String).alias("_sym"),
            _key(rows, "close_time").alias("_close"),
            pl.col("close").cast(pl.Float64).alias("spot_close"),
        )
        spot = pl.col("spot_close")
        f = f.join(rows, on=["_sym", "_close"], how="left").with_columns(
            ((pl.col("close") - spot) / spot * 1e4).alias("basis_bps")
        )
    f = f.sort("_row")
    return f.select(*frame.drop([c for c in COLUMNS if c in frame.columns]).columns, *sorted(cols))


def _asof(left: pl.DataFrame, rows: pl.DataFrame, on: str, reach: dt.timedelta) -> pl.DataFrame:
    """Each left row with the newest of `rows` (same symbol) known at `on` and at most `reach`
    before it; both sides sorted by their time (the callers sort them)."""
    return left.join_asof(
        rows, left_on=on, right_on="_at", by="_sym", tolerance=reach, check_sortedness=False
    ).drop("_at")


def _asof_rows(rows: pl.DataFrame, value: str) -> pl.DataFrame:
    """Rows keyed for an as-of join on when they became known, sorted by it."""
    import polars as pl

    return rows.select(
        pl.col("symbol").cast(pl.String).alias("_sym"),
        _key(rows, "known_at").alias("_at"),
        pl.col(value).cast(pl.Float64),
    ).sort("_at")

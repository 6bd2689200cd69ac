"""The signal engine's inputs: candles joined with indicators, one frame per timeframe, cut to
a window and turned into one symbol's bars as numpy columns (pipeline.strategy.signals)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from pipeline.strategy.personality import Personality

Frames = Mapping[str, "pl.DataFrame"]


def join_frames(
    candles: pl.DataFrame, indicators: pl.DataFrame, timeframes: Sequence[str] | None = None
) -> dict[str, pl.DataFrame]:
    """Candles joined with their indicators, one frame per timeframe (the `frames` argument)."""
    import polars as pl

    ind = indicators.drop([c for c in ("close_time",) if c in indicators.columns])
    tfs = timeframes or candles["timeframe"].unique(maintain_order=True).to_list()
    out = {}
    for tf in tfs:
        c = candles.filter(pl.col("timeframe") == tf)
        i = ind.filter(pl.col("timeframe") == tf)
        out[tf] = c.join(i, on=["symbol", "timeframe", "open_time"], how="left").sort(
            "symbol", "open_time"
        )
    return out


def split_frames(frames: Frames | pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Accept {timeframe: frame} or one frame with a timeframe column."""
    import polars as pl

    if isinstance(frames, pl.DataFrame):
        return {str(k[0]): v for k, v in frames.partition_by("timeframe", as_dict=True).items()}
    return dict(frames)


def utc(frame: pl.DataFrame, name: str) -> pl.Expr:
    import polars as pl

    tz = getattr(frame.schema[name], "time_zone", None)
    e = pl.col(name)
    e = e.dt.replace_time_zone("UTC") if tz is None else e.dt.convert_time_zone("UTC")
    return e.dt.cast_time_unit("us")


def _needed(p: Personality) -> dict[str, list[str]]:
    """Value columns per timeframe the personality reads (the signal timeframe: also close)."""
    need: dict[str, list[str]] = {tf: [] for tf in p.timeframes}
    for tf, col in p.refs:
        key = tf or p.signal_tf
        if col not in need[key]:
            need[key].append(col)
    return need


@dataclass
class Series:
    """One symbol's bars of one timeframe as numpy: open times (ms), complete, values."""

    open_ms: np.ndarray
    complete: np.ndarray
    values: dict[str, np.ndarray]


def symbol_series(frames: Frames, p: Personality) -> dict[str, dict[str, Series]]:
    """Per symbol and timeframe, the columns the personality needs (sorted, Float64, NaN for
    NULL)."""
    import numpy as np
    import polars as pl

    need = _needed(p)
    out: dict[str, dict[str, Series]] = {}
    for tf in p.timeframes:
        if tf not in frames:
            raise ValueError(f"{p.name}: frames lack timeframe {tf} (have {sorted(frames)})")
        f = frames[tf]
        missing = {"symbol", "open_time", *need[tf]} - set(f.columns)
        if missing:
            from pipeline.strategy.personality import CONTEXT_VALUES

            hint = (
                " (market context: join it with pipeline.strategy.context.join_context)"
                if missing & set(CONTEXT_VALUES)
                else ""
            )
            raise ValueError(f"{p.name}: the {tf} frame lacks column(s) {sorted(missing)}{hint}")
        sel = f.select(
            pl.col("symbol").cast(pl.String),
            utc(f, "open_time").dt.epoch("ms").alias("_t"),
            (pl.col("complete") if "complete" in f.columns else pl.lit(True))
            .cast(pl.Boolean)
            .fill_null(False)
            .alias("_complete"),
            *[pl.col(c).cast(pl.Float64).alias(c) for c in need[tf]],
        ).sort("symbol", "_t")
        for (sym,), part in sel.partition_by("symbol", as_dict=True, maintain_order=True).items():
            t = part["_t"].to_numpy().astype(np.int64)
            if len(t) > 1 and not (np.diff(t) > 0).all():
                raise ValueError(f"{p.name}: duplicate {tf} bars for {sym}")
            out.setdefault(str(sym), {})[tf] = Series(
                t,
                part["_complete"].to_numpy().astype(bool),
                {c: part[c].to_numpy().astype(np.float64) for c in need[tf]},
            )
    return out


def cut_frames(frames: Frames, windows: Mapping[str, tuple[dt.datetime, dt.datetime]]) -> dict:
    """Per timeframe, the bars inside its window: open_time >= start, close_time <= end."""
    out = {}
    for tf, (lo, hi) in windows.items():
        f = frames[tf]
        out[tf] = f.filter((utc(f, "open_time") >= lo) & (utc(f, "close_time") <= hi))
    return out

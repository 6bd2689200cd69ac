"""The `signals` table's layout, and the fired bars of an evaluation made into its rows: action,
confidence, price, reasons in words and the snapshot JSON (pipeline.strategy.signals)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline.candles.timeframes import as_timeframe

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from pipeline.strategy.evaluation import Eval
    from pipeline.strategy.personality import Personality

SIGNAL_COLUMNS = [
    "symbol",
    "personality",
    "timeframe",
    "close_time",
    "open_time",
    "action",
    "confidence",
    "price",
    "reasons",
    "snapshot",
    "quality",
]
KEYS = ["symbol", "personality", "timeframe", "close_time"]
OK = "ok"


def signals_schema() -> dict[str, Any]:
    import polars as pl

    ts = pl.Datetime("us", "UTC")
    return {
        "symbol": pl.String,
        "personality": pl.String,
        "timeframe": pl.String,
        "close_time": ts,
        "open_time": ts,
        "action": pl.String,
        "confidence": pl.Float64,
        "price": pl.Float64,
        "reasons": pl.List(pl.String),
        "snapshot": pl.String,
        "quality": pl.String,
    }


def append_rows(p: Personality, symbol: str, ev: Eval, fired: np.ndarray, out: dict) -> None:
    """Append the fired bars to the column lists in `out`: numbers as arrays (the snapshot
    is built from them in one vectorized pass, `to_frame`), reasons as text in rule order."""
    import numpy as np

    k = len(fired)
    if k == 0:
        return
    tf = as_timeframe(p.signal_tf)
    values = {ref: ev.bars.col(ref[1], ref[0])[fired] for ref in p.refs}
    text_vals = {ref: v.tolist() for ref, v in values.items()}
    buy = ev.cand_long[fired]
    reasons: list[list[str]] = [[] for _ in range(k)]
    for n, r in enumerate(p.rules):
        v = np.where(buy, ev.long[n][fired], ev.short[n][fired])
        hold = v > 0
        unknown = ev.unknown[n]
        side = (buy & (r.direction != "short")) | (~buy & (r.direction != "long"))
        said = unknown[fired] & side if unknown is not None else np.zeros(k, dtype=bool)
        for j in np.flatnonzero(hold | said).tolist():
            text = r.unknown if said[j] and r.unknown is not None else r.reason
            reasons[j].append(text.render(text_vals, j))
        if not r.gate:
            out[f"rule:{r.name}"].append(np.where(hold, ev.weight[n][fired] * v, np.nan))
    regime = ev.regime[fired]
    if p.regimes:
        labels = [g.name for g in p.regimes] + ["none"]
        for j, g in enumerate(regime.tolist()):
            reasons[j].append("market regime: " + labels[g])
    close_ms = ev.close_ms[fired]
    out["symbol"] += [symbol] * k
    out["close_time"].append(close_ms)
    out["open_time"].append(close_ms - tf.ms)
    out["action"].append(buy)
    out["net"].append(np.where(buy, ev.net_long[fired], ev.net_short[fired]))
    out["regime"].append(regime)
    for ref, v in values.items():
        out[ref].append(v)
    out["reasons"] += reasons
    out["quality"] += [ev.quality[i] or OK for i in fired.tolist()]


def _booleans() -> frozenset[str]:
    from pipeline.indicators import load_spec
    from pipeline.strategy.personality import CANDLE_FLAGS

    spec = load_spec()
    return frozenset([*CANDLE_FLAGS, *(c for i in spec.indicators if i.boolean for c in i.outputs)])


def new_columns(p: Personality) -> dict[Any, list]:
    keys: list[Any] = ["symbol", "close_time", "open_time", "action", "net", "regime"]
    keys += [f"rule:{r.name}" for r in p.scored] + list(p.refs) + ["reasons", "quality"]
    return {k: [] for k in keys}


def _snapshot(p: Personality, cols: Mapping[str, str]) -> pl.Expr:
    """The snapshot JSON, vectorized: {"net", "threshold", "regime", "rules": {rule:
    weight x vote of each rule that held}, "values": {column: value}} with a fixed key order
    and shortest round-trip floats, so the same inputs give the same bytes."""
    import polars as pl

    from pipeline.strategy.rules import ref_name

    def key(name: str) -> str:
        return json.dumps(name) + ":"

    def num(c: str) -> pl.Expr:
        e = pl.col(c)
        return pl.when(e.is_finite()).then(e.cast(pl.String)).otherwise(pl.lit("null"))

    booleans = _booleans()
    vals = []
    for ref in p.refs:
        c = cols[ref]  # type: ignore[index]
        e = pl.col(c)
        text = (
            pl.when(e.is_nan()).then(pl.lit("null")).when(e == 1.0).then(pl.lit("true"))
            if ref[1] in booleans
            else None
        )
        v = text.otherwise(pl.lit("false")) if text is not None else num(c)
        vals.append(pl.concat_str(pl.lit(key(ref_name(ref))), v))
    rules = [
        pl.when(pl.col(cols[f"rule:{r.name}"]).is_not_nan()).then(
            pl.concat_str(pl.lit(key(r.name)), pl.col(cols[f"rule:{r.name}"]).cast(pl.String))
        )
        for r in p.scored
    ]
    regime: pl.Expr = pl.lit("null")
    for i, g in reversed(list(enumerate(p.regimes))):
        regime = pl.when(pl.col("regime") == i).then(pl.lit(json.dumps(g.name))).otherwise(regime)
    return pl.concat_str(
        pl.lit('{"net":'),
        num("net"),
        pl.lit(f',"threshold":{json.dumps(p.threshold)},"regime":'),
        regime,
        pl.lit(',"rules":{'),
        pl.concat_str(rules, separator=",", ignore_nulls=True),
        pl.lit('},"values":{'),
        pl.concat_str(vals, separator=","),
        pl.lit("}}"),
    ).alias("snapshot")


def to_frame(p: Personality, cols: dict[Any, list]) -> pl.DataFrame:
    import numpy as np
    import polars as pl
    import pyarrow as pa

    schema = signals_schema()
    n = len(cols["symbol"])
    if n == 0:
        return pl.DataFrame(schema=schema)
    names = {k: (k if isinstance(k, str) else f"ref{i}") for i, k in enumerate(cols)}
    numeric = {
        names[k]: np.concatenate(v)
        for k, v in cols.items()
        if k not in ("symbol", "reasons", "quality")
    }
    lengths = np.fromiter((len(r) for r in cols["reasons"]), dtype=np.int32, count=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = pa.array(list(itertools.chain.from_iterable(cols["reasons"])), pa.string())
    reasons = pl.Series("reasons", pa.ListArray.from_arrays(pa.array(offsets), flat))
    ts = schema["close_time"]
    df = pl.DataFrame(numeric).with_columns(
        pl.Series("symbol", cols["symbol"], dtype=pl.String),
        reasons.cast(schema["reasons"]),
        pl.Series("quality", cols["quality"], dtype=pl.String),
    )
    return df.select(
        "symbol",
        pl.lit(p.name, pl.String).alias("personality"),
        pl.lit(p.signal_tf, pl.String).alias("timeframe"),
        (pl.col("close_time") * 1000).cast(ts),
        (pl.col("open_time") * 1000).cast(ts),
        pl.when("action").then(pl.lit("BUY")).otherwise(pl.lit("SELL")).alias("action"),
        pl.col("net").clip(0.0, 1.0).alias("confidence"),
        pl.col(names[(None, "close")]).alias("price"),
        "reasons",
        _snapshot(p, names),
        "quality",
    )

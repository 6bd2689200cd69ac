"""Closed minutes of order flow as the trade collector saw them, per venue and UTC day, for
the `order_flow_1m` asset to ingest (only Dagster runs write DuckDB).

`<home>/orderflow/<exchange>/<YYYY-MM-DD>.jsonl`, the day of the minute's open time; one JSON
object per line: symbol, open_time (ISO 8601 UTC), the aggregates of
`pipeline.orderflow.aggregate.FLOW_COLUMNS`, qty_step (the venue's, or null) and
collected_at. A line is written only for a minute the collector watched whole (its coverage),
so a covered minute without trades is a line with zero volumes. Append-only: a minute written
again (a restarted collector) keeps its last line; a torn last line is not a record.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import jsonfile
from pipeline.orderflow.aggregate import FLOW_COLUMNS

if TYPE_CHECKING:
    import polars as pl

FIELDS = ("symbol", "open_time", *FLOW_COLUMNS, "qty_step", "collected_at")


def path(home: Path, exchange: str, day: dt.date) -> Path:
    return home / "orderflow" / exchange / f"{day.isoformat()}.jsonl"


def _iso(v: Any) -> Any:
    return v.astimezone(dt.UTC).isoformat() if isinstance(v, dt.datetime) else v


def append(home: Path, exchange: str, rows: list[dict[str, Any]]) -> int:
    """Append minutes (dicts with `FIELDS`), each to its day's file, one write per file."""
    by_file: dict[Path, list[bytes]] = {}
    for row in rows:
        rec = {k: _iso(row.get(k)) for k in FIELDS}
        day = dt.datetime.fromisoformat(rec["open_time"]).date()
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        by_file.setdefault(path(home, exchange, day), []).append(line.encode())
    jsonfile.append_lines(by_file)
    return len(rows)


def read(home: Path, exchange: str, day: dt.date) -> pl.DataFrame:
    """The day's journaled minutes of one venue (the last line per minute), with `exchange`,
    `open_time`/`collected_at` as UTC datetimes, sorted by (symbol, open_time)."""
    return read_from(home, exchange, day, 0)[0]


def read_from(home: Path, exchange: str, day: dt.date, offset: int) -> tuple[pl.DataFrame, int]:
    """The minutes journaled after byte `offset` (as `read`), and the offset after the last
    whole line read: a live ingest reads only what the collector appended since the last one.
    A file shorter than `offset` (the home's journal was removed and started over) is read
    from its start."""
    try:
        with path(home, exchange, day).open("rb") as f:
            f.seek(0, 2)
            if f.tell() < offset:
                offset = 0
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        data = b""
    whole = data[: data.rfind(b"\n") + 1]  # a torn last line is not a record yet
    recs = {}
    for line in whole.decode().split("\n")[:-1]:
        if line:
            rec = json.loads(line)
            recs[(rec["symbol"], rec["open_time"])] = rec
    return _frame(exchange, list(recs.values())), offset + len(whole)


def empty(exchange: str) -> pl.DataFrame:
    """No minutes, as `read` types them."""
    return _frame(exchange, [])


def _frame(exchange: str, recs: list[dict[str, Any]]) -> pl.DataFrame:
    import polars as pl

    schema = {c: pl.Float64 for c in FIELDS} | {
        "symbol": pl.String,
        "open_time": pl.String,
        "collected_at": pl.String,
        "trade_count": pl.Int64,
    }
    frame = pl.DataFrame(recs, schema=schema, orient="row")
    ts = pl.Datetime("us", "UTC")
    return (
        frame.select(
            pl.lit(exchange).alias("exchange"),
            *[pl.col(c) for c in FIELDS],
        )
        .with_columns(
            pl.col("open_time").str.to_datetime(time_unit="us", time_zone="UTC").cast(ts),
            pl.col("collected_at").str.to_datetime(time_unit="us", time_zone="UTC").cast(ts),
        )
        .sort("symbol", "open_time")
    )

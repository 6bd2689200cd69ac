"""The bots' journals as warehouse rows: what the `paper_trades` asset writes.

Per bot, everything committed after the ingested cursor (`paper_ingest`: bytes and entries)
becomes rows of `paper_trades` and `paper_equity`; the rows and the new cursor are written in
one transaction by the caller, so a failed or repeated ingest loses nothing and doubles
nothing. A journal shorter than its cursor (the bot's folder was deleted and it started over)
is ingested again from the start, replacing that bot's rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import jsonfile
from pipeline.bots.store import STATE_KEYS, BotStore, committed_entries

if TYPE_CHECKING:
    import polars as pl

TRADE_COLS = (
    "seq",
    "action",
    "side",
    "price",
    "size",
    "fees",
    "pnl",
    "reason",
    "entry_time",
    "entry_price",
    "confidence",
    "timeframe",
    "received_at",
)


@dataclass(frozen=True)
class Batch:
    """One bot's journal from `start` (bytes, entries) to `end`: the rows to write."""

    bot: str
    start: tuple[int, int]
    end: tuple[int, int]
    trades: pl.DataFrame
    equity: pl.DataFrame

    @property
    def restart(self) -> bool:
        """The journal restarted: replace every row of this bot."""
        return self.start == (0, 0)


def committed_bytes(home: Path, name: str) -> int:
    """How long the bot's committed journal is (0 before its first event)."""
    rec = jsonfile.read(BotStore(home, name).state_path, STATE_KEYS)
    return 0 if rec is None else int(rec["journal_bytes"])


def batch(home: Path, bot: str, cursor: tuple[int, int]) -> Batch | None:
    """What the bot journaled after `cursor` (bytes, entries), or None when nothing did."""
    import polars as pl

    end_bytes = committed_bytes(home, bot)
    if end_bytes < cursor[0]:
        cursor = (0, 0)  # the journal started over
    if end_bytes == cursor[0]:
        return None
    trades: list[dict[str, Any]] = []
    equity: list[dict[str, Any]] = []
    end = cursor
    for pos, e in committed_entries(home, bot, cursor[0]):
        end = (pos, e["n"] + 1)
        exchange, _, symbol = e["market"].partition(":")
        base = {"bot": bot, "n": e["n"], "time": _ts(e["time"])}
        if e["kind"] == "equity":
            equity.append({**base, "equity": float(e["equity"]), "cash": float(e["cash"])})
            continue
        row = {**base, "kind": e["kind"], "exchange": exchange, "symbol": symbol}
        for c in TRADE_COLS:
            row[c] = e.get(c)
        row["entry_time"] = _ts(row["entry_time"])
        if row["received_at"] is not None:
            row["received_at"] = dt.datetime.fromtimestamp(row["received_at"], dt.UTC)
        trades.append(row)
    return Batch(
        bot,
        cursor,
        end,
        pl.DataFrame(trades, schema=_trades_schema()),
        pl.DataFrame(equity, schema=_equity_schema()),
    )


def _ts(v: str | None) -> dt.datetime | None:
    return None if v is None else dt.datetime.fromisoformat(v.replace("Z", "+00:00"))


def _trades_schema() -> dict[str, Any]:
    import polars as pl

    ts = pl.Datetime("us", "UTC")
    f, s, i = pl.Float64, pl.String, pl.Int64
    return {
        "bot": s,
        "n": i,
        "time": ts,
        "kind": s,
        "exchange": s,
        "symbol": s,
        "seq": i,
        "action": s,
        "side": s,
        "price": f,
        "size": f,
        "fees": f,
        "pnl": f,
        "reason": s,
        "entry_time": ts,
        "entry_price": f,
        "confidence": f,
        "timeframe": s,
        "received_at": ts,
    }


def _equity_schema() -> dict[str, Any]:
    import polars as pl

    ts = pl.Datetime("us", "UTC")
    return {"bot": pl.String, "n": pl.Int64, "time": ts, "equity": pl.Float64, "cash": pl.Float64}

"""A paper bot's state: its account, and per market the backtest kernel's position vector, the
open trade's record, the orders waiting for their fill bar, and the last bar it processed.

Plain dataclasses that round-trip through JSON exactly (floats keep every bit; NaN travels as
null), so a restarted bot carries on with the very numbers it stopped with.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pending:
    """An order recorded when its signal arrived, filled at the first bar opening at or after
    its close_time (the backtest's rule)."""

    seq: int
    close_us: int
    dir: int  # +1 BUY, -1 SELL
    conf: float
    timeframe: str


@dataclass
class Slot:
    """One market of a bot."""

    st: list[float]  # pipeline.backtest.kernel's state vector (S_*)
    counters: list[int]  # the kernel's counters (C_*)
    open_row: list[float] | None = None  # the open trade's kernel record (T_*)
    entry_us: int | None = None  # the open trade's fill bar
    entry_seq: int | None = None  # and the signal it came from
    last_bar_us: int | None = None  # open_time of the newest bar processed
    last_close: float | None = None
    pending: list[Pending] = field(default_factory=list)
    dca_size: float = 0.0  # accumulation mode: what has been bought
    dca_cost: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Field by field (dataclasses.asdict costs ~10x: this runs after every event)."""
        return {
            "st": _floats(self.st),
            "counters": list(self.counters),
            "open_row": None if self.open_row is None else _floats(self.open_row),
            "entry_us": self.entry_us,
            "entry_seq": self.entry_seq,
            "last_bar_us": self.last_bar_us,
            "last_close": self.last_close,
            "pending": [p.__dict__ for p in self.pending],  # frozen: shared, not copied
            "dca_size": self.dca_size,
            "dca_cost": self.dca_cost,
        }

    @property
    def pos(self) -> int:
        from pipeline.backtest import kernel as k

        return int(self.st[k.S_POS])

    def mark(self) -> float:
        """What the slot adds to the account's equity at the last close: the open position's
        P&L (the kernel's mark), or what accumulated holdings are worth."""
        from pipeline.backtest import kernel as k

        if self.last_close is None:
            return 0.0
        if self.dca_size:
            return self.dca_size * self.last_close
        if self.pos == 0:
            return 0.0
        return self.pos * self.st[k.S_SIZE] * (self.last_close - self.st[k.S_ENTRY])


@dataclass
class BotState:
    name: str
    cash: float
    peak: float
    equity: float
    slots: dict[str, Slot]  # by market, "bybit:BTCUSDT"
    last_seq: int | None = None  # the newest signal seq handled (subscribe with since_seq)
    halted: bool = False
    why: str | None = None  # why it halted
    n: int = 0  # journal entries written
    journal_bytes: int = 0  # the journal's committed length
    updated_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Every field (the names listed once: `dataclasses.fields` per call was most of the
        cost of the snapshot the group commit takes of every touched bot)."""
        rec = {name: getattr(self, name) for name in _STATE_FIELDS}
        rec["slots"] = {m: s.to_json() for m, s in self.slots.items()}
        return rec

    @classmethod
    def from_json(cls, rec: dict[str, Any]) -> BotState:
        slots = {}
        for market, s in rec["slots"].items():
            s = dict(s)
            s["st"] = [math.nan if v is None else float(v) for v in s["st"]]
            if s.get("open_row") is not None:
                s["open_row"] = [math.nan if v is None else float(v) for v in s["open_row"]]
            s["pending"] = [Pending(**p) for p in s.get("pending", [])]
            slots[market] = Slot(**s)
        return cls(**{**rec, "slots": slots})

    def positions(self) -> dict[str, dict[str, float]]:
        """Open positions by market: side, size, entry price, unrealised P&L."""
        from pipeline.backtest import kernel as k

        out = {}
        for market, s in self.slots.items():
            if s.dca_size:
                out[market] = {"side": "LONG", "size": s.dca_size, "entry": s.dca_cost / s.dca_size}
            elif s.pos:
                out[market] = {"side": "LONG" if s.pos > 0 else "SHORT", "size": s.st[k.S_SIZE]}
                out[market]["entry"] = s.st[k.S_ENTRY]
            else:
                continue
            out[market]["unrealised"] = s.mark() - (s.dca_cost if s.dca_size else 0.0)
        return out


_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(BotState) if f.name != "slots")


def _floats(xs: list[float]) -> list[float | None]:
    return [None if x != x else x for x in xs]  # NaN travels as null

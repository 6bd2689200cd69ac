"""What a paper bot does with one signal and with one live 1m bar: the journal entries it
writes and the state it moves to. Plain functions of their inputs (no clock read, no I/O), so a
restarted bot that is handed the same events again writes the same entries.

A signal only records an order: its fill needs the open of the first bar opening at or after
the signal's close_time, which is not known yet. Each closed bar then runs the backtest
kernel (`kernel.run`) over that one bar with the due order as the bar's signal: the fill at
the open plus slippage, the taker fee, sizing, stops, targets, trailing stops and liquidation
are the backtest's own code. Which order is due, expired or superseded follows the backtest's
signal rules (pipeline/backtest/market.py).

Accumulation (DCA) bots buy a fixed amount at the next open on every BUY, priced and charged
by the kernel's `fill_price` and `taker_fee`, and never sell.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any

from pipeline.backtest.params import BacktestParams
from pipeline.backtest.result import EXIT_REASONS
from pipeline.bots.config import BotConfig
from pipeline.bots.state import BotState, Pending, Slot
from pipeline.candles.timeframes import MINUTE_US, from_us, to_us

# What the kernel's counters say happened to a signal that opened nothing.
_SKIPS = (
    ("C_SAME_DIR", "ignored_same_direction"),
    ("C_NOT_ALLOWED", "ignored_side_not_allowed"),
    ("C_IGNORED_OPP", "ignored_opposite"),
    ("C_NO_SIZE", "skipped_no_size"),
    ("C_NO_ATR", "skipped_no_atr"),
)


@dataclass(frozen=True)
class Bar:
    """A closed 1m candle of one market."""

    market: str  # "bybit:BTCUSDT"
    open_us: int
    open: float
    high: float
    low: float
    close: float


def iso(us: int) -> str:
    return from_us(us).isoformat().replace("+00:00", "Z")


def market_of(msg: dict[str, Any]) -> str:
    return f"{msg.get('exchange', 'bybit')}:{msg['symbol']}"


class Trader:
    """One bot's rules: its configuration, the backtest parameters and the kernel's arrays."""

    def __init__(self, cfg: BotConfig, params: BacktestParams, markets: list[str]) -> None:
        from pipeline.backtest.engine import param_arrays

        self.cfg, self.params, self.markets = cfg, params, list(markets)
        self.fp, self.ip = param_arrays(params)

    # -- state -------------------------------------------------------------------------
    def new_state(self) -> BotState:
        from pipeline.backtest import kernel as k

        cash = self.params.starting_equity
        st = [float(v) for v in k.new_state(cash)]
        slots = {m: Slot(st=list(st), counters=[0] * k.N_C) for m in self.markets}
        return BotState(name=self.cfg.name, cash=cash, peak=cash, equity=cash, slots=slots)

    def wants(self, msg: dict[str, Any]) -> bool:
        """Is the signal this bot's (personality, market, timeframe)?"""
        tfs = self.cfg.timeframes
        return (
            msg.get("personality") == self.cfg.personality
            and market_of(msg) in self.markets
            and (tfs is None or msg.get("timeframe") in tfs)
        )

    # -- events ------------------------------------------------------------------------
    def on_signal(self, state: BotState, msg: dict[str, Any]) -> list[dict[str, Any]]:
        """Record the order for one signal line (or why there is none); moves last_seq."""
        seq = int(msg["seq"])
        state.last_seq = seq
        if not self.wants(msg):
            return []
        market = market_of(msg)
        close_us = _us(msg["close_time"])
        base = {
            "kind": "order",
            "market": market,
            "seq": seq,
            "time": msg["close_time"],
            "action": msg["action"],
            "price": float(msg.get("price") or 0.0),
            "confidence": float(msg["confidence"]),
            "timeframe": msg["timeframe"],
            "origin": msg.get("origin", "pipeline"),
            "replayed": bool(msg.get("replayed")),
        }
        why = None
        if state.halted:
            why = "halted"
        elif float(msg["confidence"]) < self.params.min_confidence:
            why = "below_min_confidence"
        elif self.params.skip_degraded and msg.get("quality") != "ok":
            why = "skipped_degraded"
        elif self.cfg.dca is not None and msg["action"] != "BUY":
            why = "dca_buys_only"
        if why is not None:
            return [{**base, "kind": "skip", "reason": why}]
        d = 1 if msg["action"] == "BUY" else -1
        pend = Pending(seq, close_us, d, float(msg["confidence"]), str(msg["timeframe"]))
        state.slots[market].pending.append(pend)
        return [base]

    def on_bar(self, state: BotState, bar: Bar) -> list[dict[str, Any]]:
        """Fill what is due at this bar's open, check exits inside it, mark at its close."""
        slot = state.slots.get(bar.market)
        if slot is None or (slot.last_bar_us is not None and bar.open_us <= slot.last_bar_us):
            return []
        out: list[dict[str, Any]] = []
        order = self._due(slot, bar, out)
        if not state.halted:
            if self.cfg.dca is not None:
                self._dca(state, slot, bar, order, out)
            else:
                self._kernel(state, slot, bar, order, out)
        slot.last_bar_us, slot.last_close = bar.open_us, bar.close
        state.equity = state.cash + sum(s.mark() for s in state.slots.values())
        state.peak = max(state.peak, state.equity)
        out.append(
            {
                "kind": "equity",
                "market": bar.market,
                "time": iso(bar.open_us + MINUTE_US),
                "equity": state.equity,
                "cash": state.cash,
            }
        )
        stop = self.cfg.emergency_stop
        if not state.halted and stop is not None and state.equity <= state.peak * (1 - stop):
            out.extend(self.halt(state, bar))
        return out

    def halt(self, state: BotState, bar: Bar) -> list[dict[str, Any]]:
        """The emergency stop: close every position at its last close (the kernel's market
        exit), stop trading, and say why."""
        from pipeline.backtest import kernel as k

        why = (
            f"emergency stop: equity {state.equity:.2f} fell {1 - state.equity / state.peak:.1%} "
            f"below its peak {state.peak:.2f} (emergency_stop {self.cfg.emergency_stop:g})"
        )
        out: list[dict[str, Any]] = []
        for market, slot in state.slots.items():
            slot.pending.clear()
            if slot.pos == 0 or slot.last_close is None or slot.last_bar_us is None:
                continue
            st, trades, counters = self._arrays(state, slot)
            state.cash = float(k.close_end(st, 0, slot.last_close, self.fp, trades))
            self._closed(slot, market, trades[0], slot.last_bar_us, "emergency_stop", out)
            _store(slot, st, counters, None)
        if self.cfg.dca is not None:
            why += "; accumulated holdings are kept"
        state.halted, state.why = True, why
        state.equity = state.cash + sum(s.mark() for s in state.slots.values())
        out.append({"kind": "halt", "market": bar.market, "time": iso(bar.open_us), "reason": why})
        return out

    # -- internals ---------------------------------------------------------------------
    def _due(self, slot: Slot, bar: Bar, out: list[dict[str, Any]]) -> Pending | None:
        """The order this bar fills: of those due, the latest close_time, then the highest
        confidence (market.signal_bars); the rest are superseded, late ones expired."""
        due = [p for p in slot.pending if p.close_us <= bar.open_us]
        slot.pending = [p for p in slot.pending if p.close_us > bar.open_us]
        expiry = self.params.signal_expiry_minutes * MINUTE_US
        live = []
        for p in due:
            if bar.open_us - p.close_us > expiry:
                out.append(_dropped(bar, p, "expired"))
            else:
                live.append(p)
        live.sort(key=lambda p: (p.close_us, p.conf))
        for p in live[:-1]:
            out.append(_dropped(bar, p, "superseded"))
        return live[-1] if live else None

    def _arrays(self, state: BotState, slot: Slot) -> tuple[Any, Any, Any]:
        import numpy as np

        from pipeline.backtest import kernel as k

        st = np.asarray(slot.st, dtype=np.float64)
        st[k.S_CASH], st[k.S_NT] = state.cash, 0
        trades = np.zeros((4, k.N_T))
        if slot.open_row is not None:
            trades[0] = slot.open_row
        return st, trades, np.asarray(slot.counters, dtype=np.int64)

    def _kernel(
        self, state: BotState, slot: Slot, bar: Bar, order: Pending | None, out: list
    ) -> None:
        import numpy as np

        from pipeline.backtest import kernel as k

        st, trades, counters = self._arrays(state, slot)
        before = counters.copy()
        had = slot.pos != 0
        one = np.array
        k.run(
            st,
            one([bar.open]),
            one([bar.high]),
            one([bar.low]),
            one([bar.close]),
            one([order.dir if order else 0], dtype=np.int8),
            one([order.conf if order else 0.0]),
            one([np.nan]),
            one([order.seq if order else -1], dtype=np.int64),
            self.fp,
            self.ip,
            trades,
            counters,
            np.empty(1),
        )
        state.cash = float(st[k.S_CASH])
        nt = int(st[k.S_NT])
        opened = counters[k.C_OPENED] > before[k.C_OPENED]
        rows = list(range(nt))
        if had and rows:  # the position held before this bar closed first
            self._closed(slot, bar.market, trades[rows.pop(0)], bar.open_us, None, out)
        if opened:
            assert order is not None
            row = trades[nt] if int(st[k.S_POS]) != 0 else trades[rows[0]]
            slot.entry_us, slot.entry_seq = bar.open_us, order.seq
            out.append(_fill(bar, order.seq, row, self.fp[k.F_TAKER]))
            if rows:  # opened and closed inside the same bar
                self._closed(slot, bar.market, trades[rows.pop(0)], bar.open_us, None, out)
        elif order is not None:
            why = next(
                (n for c, n in _SKIPS if counters[getattr(k, c)] > before[getattr(k, c)]),
                "bankrupt" if st[k.S_BANKRUPT] else "ignored",
            )
            out.append(_dropped(bar, order, why))
        _store(slot, st, counters, trades[nt] if int(st[k.S_POS]) != 0 else None)

    def _closed(
        self, slot: Slot, market: str, row: Any, exit_us: int, why: str | None, out: list
    ) -> None:
        from pipeline.backtest import kernel as k

        out.append(
            {
                "kind": "exit",
                "market": market,
                "seq": slot.entry_seq,
                "time": iso(exit_us),
                "side": "LONG" if row[k.T_SIDE] > 0 else "SHORT",
                "entry_time": iso(slot.entry_us) if slot.entry_us is not None else None,
                "entry_price": float(row[k.T_ENTRY_PX]),
                "price": float(row[k.T_EXIT_PX]),
                "size": float(row[k.T_SIZE]),
                "fees": float(row[k.T_FEES]),
                "pnl": float(row[k.T_PNL]),
                "reason": why or EXIT_REASONS[int(row[k.T_REASON])],
            }
        )
        slot.entry_us = slot.entry_seq = None

    def _dca(self, state: BotState, slot: Slot, bar: Bar, order: Pending | None, out: list) -> None:
        from pipeline.backtest import kernel as k

        if order is None or self.cfg.dca is None:
            return
        px = float(k.fill_price(bar.open, 1, self.fp[k.F_SLIP]))
        size = self.cfg.dca.quote / px
        fee = float(k.taker_fee(size, px, self.fp[k.F_TAKER]))
        if state.cash < self.cfg.dca.quote + fee:
            out.append(_dropped(bar, order, "skipped_no_cash"))
            return
        state.cash -= self.cfg.dca.quote + fee
        slot.dca_size += size
        slot.dca_cost += self.cfg.dca.quote + fee
        out.append(
            {
                "kind": "fill",
                "market": bar.market,
                "seq": order.seq,
                "time": iso(bar.open_us),
                "side": "LONG",
                "price": px,
                "size": size,
                "fees": fee,
            }
        )


def _store(slot: Slot, st: Any, counters: Any, open_row: Any) -> None:
    slot.st = [float(v) for v in st]
    slot.counters = [int(v) for v in counters]
    slot.open_row = None if open_row is None else [float(v) for v in open_row]


def _fill(bar: Bar, seq: int, row: Any, taker: float) -> dict[str, Any]:
    from pipeline.backtest import kernel as k

    return {
        "kind": "fill",
        "market": bar.market,
        "seq": seq,
        "time": iso(bar.open_us),
        "side": "LONG" if row[k.T_SIDE] > 0 else "SHORT",
        "price": float(row[k.T_ENTRY_PX]),
        "size": float(row[k.T_SIZE]),
        "fees": float(k.taker_fee(row[k.T_SIZE], row[k.T_ENTRY_PX], taker)),
        "stop": _num(row[k.T_STOP0]),
        "target": _num(row[k.T_TARGET]),
    }


def _dropped(bar: Bar, p: Pending, why: str) -> dict[str, Any]:
    return {
        "kind": "skip",
        "market": bar.market,
        "seq": p.seq,
        "time": iso(bar.open_us),
        "reason": why,
    }


def _num(v: float) -> float | None:
    return None if v != v else float(v)


@functools.lru_cache(maxsize=1024)  # fifty bots parse the same close_time
def _us(text: str) -> int:
    return to_us(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))

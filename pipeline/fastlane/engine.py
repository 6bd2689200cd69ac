"""The fast lane's compute for one venue: a bounded in-memory window per symbol and timeframe,
updated on each closed minute, and the personalities evaluated on it with the very code the
`signals` asset runs (pipeline.candles, pipeline.indicators, pipeline.strategy).

Rules the process (pipeline/runtime/fastlane.py) relies on:

- `bootstrap` loads windows from the warehouse REPLICA (the pipeline's data is the truth the
  fast lane must agree with); a symbol without stored candles stays silent.
- `feed` takes candles in open-time order per symbol. The minute it expects is used; an
  older one is a duplicate (same values: ignored) or a revision (different values: the symbol
  goes silent until `bootstrap` reloads it past that minute); a newer one is a gap: nothing is
  used and `missing` names the minutes to fetch over REST and feed first.
- Minutes the venue has no candle for (a REST fill returning fewer minutes than asked) are
  reported with `absent`: the pipeline records them as confirmed gaps, which changes how the
  bars around them count as history, so the symbol goes silent until `bootstrap` reloads it
  past them.
- When unsure (silent), it publishes nothing: the pipeline's signal arrives as today.
- `feed_many` takes a batch by the same rules, candle by candle, and evaluates the symbols
  whose minute closes at the same time together (the same rows as `feed` one by one).

What a used minute does (pipeline.fastlane.bars): the bars of the timeframes read that close
with it are built (the resample's levels), marked as history and given their indicators over
the day's `indicator_input_window` (only the columns the personalities read, by the spec's own
entries); each personality whose signal timeframe closed is evaluated on `bar_input_window` by
`series_signals`, the engine of `compute_signals`. Bars of earlier days are the pipeline's
stored rows (or the lane's own, computed the same way, once it has run past midnight).
Not thread-safe: one caller feeds a lane.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.candles.timeframes import (
    MINUTE_MS,
    bucket_end,
    from_ms,
    to_ms,
)

if TYPE_CHECKING:
    import polars as pl

    from pipeline.config import Settings
    from pipeline.exchanges.protocol import ClosedCandle
    from pipeline.fastlane.load import SymbolState
    from pipeline.fastlane.plan import Plan
    from pipeline.fastlane.replica import Snapshot
    from pipeline.strategy.personality import Personality
    from pipeline.strategy.signal_inputs import Series

USED, DUPLICATE, REVISED, GAP, SILENT = "used", "duplicate", "revised", "gap", "silent"
PRICES = ("open", "high", "low", "close", "volume", "turnover")
# Symbols read per replica connection: each stays open well under a second (~0.2 s for ten
# symbols here), so the pipeline's replica sync is never held up for long.
READ_BATCH = 10


@dataclass(frozen=True)
class Fed:
    """What one candle did: its `status`, the signal rows it produced (dicts with the `signals`
    table's columns plus `exchange`, as `outbox.publish` and `journal.append` take them), the
    minutes [start, end) to fetch first for a gap, and a note for the log."""

    status: str
    signals: list[dict[str, Any]] = field(default_factory=list)
    missing: tuple[dt.datetime, dt.datetime] | None = None
    note: str = ""


def _hm(ms: int) -> str:
    return f"{from_ms(ms):%Y-%m-%d %H:%M}"


class VenueLane:
    """One venue's symbols in the fast lane."""

    def __init__(self, settings: Settings, exchange: str, symbols: list[str]) -> None:
        from pipeline.fastlane.plan import make_plan

        self.exchange = exchange
        self.symbols = list(symbols)
        self.plan: Plan = make_plan(settings)
        self._state: dict[str, SymbolState] = {}
        self._silent: dict[str, str] = dict.fromkeys(self.symbols, "not bootstrapped yet")
        self._floor: dict[str, tuple[int, str]] = {}  # load past this minute (ms), and why
        self._windows: dict[tuple[str, int], dict[str, tuple[int, int]]] = {}
        self._starts: dict[tuple[str, dt.date], int] = {}

    # -- the interface ---------------------------------------------------------------------

    def bootstrap(self, wh: Any, symbols: list[str] | None = None) -> dict[str, dt.datetime | None]:
        """(Re)load the windows of `symbols` (default: all) from the warehouse's replica (`wh`:
        a warehouse.Warehouse; read through `wh.reader()`); per symbol, the open_time of the
        next minute it expects (None: nothing usable stored yet, the symbol stays silent).

        A symbol already loaded starts over from the replica (the process fills the minutes
        since over REST, as for any gap). Silent while the replica's day before is not final,
        its recent minutes have holes the pipeline may still fill, or it has not passed a
        revised or absent minute; a replica that cannot be read leaves the symbols silent."""
        from pipeline.fastlane.replica import read_snapshot
        from warehouse import NoWarehouse, WarehouseBusy

        names = list(symbols if symbols is not None else self.symbols)
        self.symbols += [s for s in names if s not in self.symbols]
        out: dict[str, dt.datetime | None] = {}
        if not self.plan.personalities:  # all of them read what the lane does not have
            why = "no personality the fast lane can evaluate: " + "; ".join(
                f"{n}: {w}" for n, w in self.plan.silent.items()
            )
            for sym in names:
                self._silence(sym, why)
                out[sym] = None
            return out
        for i in range(0, len(names), READ_BATCH):  # one short replica connection per batch
            batch = names[i : i + READ_BATCH]
            try:
                snap = read_snapshot(wh, self.exchange, batch, self.plan)
            except (NoWarehouse, WarehouseBusy) as err:  # nothing to read yet, or not now
                for sym in batch:
                    self._silence(sym, f"the replica cannot be read: {err}")
                    out[sym] = None
                continue
            for sym in batch:
                why = self._not_loadable(snap, sym)
                if why:
                    self._silence(sym, why)
                    out[sym] = None
                    continue
                self._state[sym] = self._load(snap, sym)
                self._silent.pop(sym, None)
                self._floor.pop(sym, None)
                out[sym] = from_ms(snap.next_ms[sym])
        return out

    def expected(self, symbol: str) -> dt.datetime | None:
        """Open time of the next minute `symbol` needs (None while silent)."""
        st = self._state.get(symbol)
        return from_ms(st.next_ms) if st else None

    def silent(self) -> dict[str, str]:
        """Silent symbols, each with why (e.g. "revised 12:03 after use")."""
        return dict(self._silent)

    def absent(self, symbol: str, start: dt.datetime, end: dt.datetime) -> None:
        """The venue has no candles for [start, end) of `symbol` (asked over REST, not
        returned): silent until `bootstrap` loads it past them."""
        end_ms = to_ms(end)
        self._silence(
            symbol, f"no candle at the venue for {_hm(to_ms(start))} to {_hm(end_ms)}", end_ms
        )

    def bars(self, symbol: str, timeframe: str) -> pl.DataFrame:
        """The lane's window of one timeframe (None values as NaN): open_time, close_time and
        the columns it keeps, as the pipeline's `candles` and `indicators` rows hold them."""
        import polars as pl

        st = self._state.get(symbol)
        if st is None:
            raise KeyError(f"{symbol} is silent in the {self.exchange} lane (or not in it)")
        w = st.windows[timeframe]
        ts = pl.Datetime("us", "UTC")
        return pl.DataFrame(
            {
                "open_time": pl.Series(w.open_ms * 1000).cast(ts),
                "close_time": pl.Series(w.close_ms * 1000).cast(ts),
                **{c: w.col(c).copy() for c in w.names},
            }
        )

    def feed(self, candle: ClosedCandle) -> Fed:
        """Take one closed 1m candle; see the module's rules."""
        return self.feed_many([candle])[0]

    def feed_many(self, candles: Sequence[ClosedCandle]) -> list[Fed]:
        """Take closed 1m candles in arrival order (each symbol's in open-time order), one
        `Fed` per candle, exactly as `feed` one after the other would: each candle's bars are
        built at once, and the signals of the symbols whose minute closes at the same time
        are evaluated together, one `fired_columns` and one `to_frame` per personality for
        all of them (the per-symbol overhead is most of a close's cost)."""
        out: list[Fed | None] = [None] * len(candles)
        pending: dict[int, list[tuple[int, str, SymbolState, set[str]]]] = {}
        waiting: set[str] = set()  # the symbols in `pending`
        for i, candle in enumerate(candles):
            sym, t = candle.symbol, to_ms(candle.open_time)
            if t % MINUTE_MS:
                raise ValueError(f"{sym} candle at {candle.open_time}: not on the minute grid")
            if sym in waiting:  # its window moves on: evaluate its minute before
                self._evaluate(pending, out)
                waiting.clear()
            st = self._state.get(sym)
            if st is None:
                why = self._silent.get(sym, f"{sym} is not a symbol of this {self.exchange} lane")
                out[i] = Fed(SILENT, note=why)
            elif t > st.next_ms:
                note = f"{sym}: minutes {_hm(st.next_ms)} to {_hm(t)} not seen yet"
                out[i] = Fed(GAP, missing=(from_ms(st.next_ms), candle.open_time), note=note)
            elif t < st.next_ms:
                out[i] = self._older(st, candle, t)
            else:
                try:
                    closed = self._use(sym, st, candle, t)
                except Exception as err:  # a half-updated window is not to be trusted
                    self._silence(sym, f"failed on {_hm(t)}: {type(err).__name__}: {err}")
                    raise
                pending.setdefault(t + MINUTE_MS, []).append((i, sym, st, closed))
                waiting.add(sym)
        self._evaluate(pending, out)
        return [f for f in out if f is not None]

    def _evaluate(
        self,
        pending: dict[int, list[tuple[int, str, SymbolState, set[str]]]],
        out: list[Fed | None],
    ) -> None:
        """The signals of the used minutes in `pending` (by close), into `out`; emptied."""
        for close, group in pending.items():
            try:
                rows = self._signals([(sym, st, closed) for _, sym, st, closed in group], close)
            except Exception as err:  # no signal of a half-evaluated minute goes out
                for _, sym, _, _ in group:
                    self._silence(sym, f"failed on {_hm(close - MINUTE_MS)}: {err!r}")
                raise
            for i, sym, _, _ in group:
                mine = rows.get(sym, [])
                out[i] = Fed(
                    USED, mine, note=f"{sym} {_hm(close - MINUTE_MS)}: {len(mine)} signal(s)"
                )
        pending.clear()

    # -- minutes ---------------------------------------------------------------------------

    def _older(self, st: SymbolState, candle: ClosedCandle, t: int) -> Fed:
        k = st.klines.since(t)
        if k < st.klines.n and int(st.klines.open_ms[k]) == t:
            if all(_same(st.klines.col(c)[k], getattr(candle, c)) for c in PRICES):
                return Fed(DUPLICATE, note=f"{candle.symbol} {_hm(t)}: seen before")
            why = f"revised {_hm(t)} after use"
        else:
            why = f"a candle for {_hm(t)}, a minute the lane holds no candle for"
        self._silence(candle.symbol, why, t + MINUTE_MS)
        return Fed(REVISED, note=f"{candle.symbol}: {why}; silent until bootstrapped again")

    def _use(self, sym: str, st: SymbolState, candle: ClosedCandle, t: int) -> set[str]:
        """Add the minute and the bars closing with it; the timeframes that closed."""
        from pipeline.fastlane.bars import minute_row, rolled_rows

        close = t + MINUTE_MS
        day = from_ms(t).date()  # the partition owning every bar closing at `close`
        if day != st.day:
            self._roll(st, day, t)
        prices = {c: _num(getattr(candle, c)) for c in PRICES}
        st.klines.extend(_one(open_ms=t, close_ms=close, whole=True, joined=True, **prices))
        closing = [tf for tf in self.plan.timeframes if st.closes[tf.name] == close]
        for tf in closing:  # minutes come one after the other: the next bucket is the one after
            st.closes[tf.name] = int(bucket_end(tf, close))
        longer = [tf for tf in closing if tf.name != "1m"]
        rows = (
            rolled_rows(sym, st.klines, longer, self.plan.levels(longer[-1]), t) if longer else {}
        )
        if closing and closing[0].name == "1m":
            rows["1m"] = minute_row(t, prices)
        for tf in closing:
            self._add_bar(sym, st, tf.name, rows[tf.name])
        st.next_ms = close
        return {tf.name for tf in closing}

    def _add_bar(self, sym: str, st: SymbolState, tf: str, row: dict[str, Any]) -> None:
        from pipeline.fastlane.bars import indicators, marks

        w = st.windows[tf]
        whole, joined = marks(w, row, sym, st.first, st.gap_runs)
        names = self.plan.indicators[tf]
        w.extend(_one(**row, whole=whole, joined=joined, **dict.fromkeys(names, float("nan"))))
        if names:
            start = w.since(self._indicator_start(tf, st.day))
            found = indicators(w, start, self.plan.specs[tf], names)
            w.set_last({c: float(v[-1]) for c, v in found.items()})

    def _signals(
        self, used: list[tuple[str, SymbolState, set[str]]], close: int
    ) -> dict[str, list[dict[str, Any]]]:
        """Per symbol, the signal rows of its minute closing at `close` (`used`: the symbols,
        their state and the timeframes that closed), personality by personality as
        `series_signals` gives them, all symbols in one pass per personality."""
        from pipeline.strategy.signal_table import to_frame
        from pipeline.strategy.signals import fired_columns

        out: dict[str, list[dict[str, Any]]] = {}
        for p in self.plan.personalities:
            per_symbol: dict[str, dict[str, Series]] = {}
            for sym, st, closed in used:
                if p.signal_tf not in closed:
                    continue
                per = per_symbol.setdefault(sym, {})
                for tf, (lo, hi) in self._bar_window(p, close).items():
                    w = st.windows[tf]
                    s = w.series(lo, hi, w.names)
                    if s is not None:
                        per[tf] = s
            if not per_symbol:
                continue
            cols = fired_columns(per_symbol, p, at_ms=close)
            if cols["symbol"]:  # `series_signals`, without building an empty frame
                for r in to_frame(p, cols).iter_rows(named=True):
                    out.setdefault(r["symbol"], []).append(self._message(r))
        return out

    def _bar_window(self, p: Personality, close: int) -> dict[str, tuple[int, int]]:
        """`bar_input_window` in ms, once per personality and minute for all symbols."""
        from pipeline.strategy.signals import bar_input_window

        key = (p.name, close)
        if key not in self._windows:
            if len(self._windows) > 4 * len(self.plan.personalities):
                self._windows.clear()
            found = bar_input_window(p, from_ms(close))
            self._windows[key] = {tf: (to_ms(lo), to_ms(hi)) for tf, (lo, hi) in found.items()}
        return self._windows[key]

    def _indicator_start(self, tf: str, day: dt.date) -> int:
        key = (tf, day)
        if key not in self._starts:
            if len(self._starts) > 4 * len(self.plan.timeframes):
                self._starts.clear()
            self._starts[key] = self.plan.indicator_start_ms(tf, day)
        return self._starts[key]

    def _message(self, row: dict[str, Any]) -> dict[str, Any]:
        """A signal row as the outbox and the journal take it (`exchange` first)."""
        row["snapshot"] = json.loads(row["snapshot"])
        return {"exchange": self.exchange, **row}

    def _roll(self, st: SymbolState, day: dt.date, t: int) -> None:
        """A new day: each window keeps what that day's bars need."""
        for tf, w in st.windows.items():
            w.drop_before(self.plan.keep_from_ms(tf, day))
        st.klines.drop_before(self.plan.forming_start_ms(day, t))
        st.day = day

    def _silence(self, sym: str, why: str, floor_ms: int | None = None) -> None:
        self._state.pop(sym, None)
        self._silent[sym] = why
        if floor_ms is not None and floor_ms >= self._floor.get(sym, (floor_ms, ""))[0]:
            self._floor[sym] = (floor_ms, why)

    # -- bootstrap -------------------------------------------------------------------------

    def _not_loadable(self, snap: Snapshot, sym: str) -> str:
        if sym not in snap.next_ms:
            return "no stored candles yet"
        if sym in snap.unready:
            return snap.unready[sym]
        nxt = snap.next_ms[sym]
        unknown = snap.unknown_minutes(sym, self.plan.forming_start_ms(snap.day[sym], nxt), nxt)
        if unknown:
            return (
                f"the replica lacks {unknown} minute(s) before {_hm(nxt)} (neither stored nor"
                " confirmed absent: the pipeline may still fill them)"
            )
        floor, why = self._floor.get(sym, (0, ""))
        if nxt < floor:
            return f"{why}; the replica has not passed {_hm(floor)} yet"
        return ""

    def _load(self, snap: Snapshot, sym: str) -> SymbolState:
        from pipeline.fastlane.load import load_symbol

        return load_symbol(snap, sym, self.plan)


def _one(**values: Any) -> dict[str, list[Any]]:
    """One bar's columns, as `Window.extend` takes them."""
    return {k: [v] for k, v in values.items()}


def _num(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def _same(stored: float, fed: float | None) -> bool:
    """Equal values, NULL (NaN) equal to NULL (None)."""
    f = _num(fed)
    return bool(stored == f or (stored != stored and f != f))


__all__ = ["DUPLICATE", "GAP", "REVISED", "SILENT", "USED", "Fed", "VenueLane"]

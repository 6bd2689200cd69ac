"""Does what a paper bot did match what the backtest says it should have done?

For one bot and one UTC day, per market of the bot: the backtest engine runs over the
warehouse's 1m candles and the pipeline's signals from the bot's first bar to the day's end,
with the bot's parameters and starting equity; trades closed that day are matched one to one
by (market, entry time, side). Every difference gets an explanation where one can be given:

- `bot_down`: the backtest traded a signal for which the bot has no order, and the bot
  processed no bar around its close (it was not running); or the bot had the order but was
  not running at the bar it fills on or at the bar the backtest's trade exits in;
- (no order although the bot was running: the signal never reached it. A fault, left
  unexplained, so the check fails);
- `late_signal`: the bot recorded the order after the bar it fills on had closed (the
  pipeline published it late, e.g. while catching up), so it filled at a later open, or
  after the signal had expired;
- `not_in_pipeline`: the bot traded a signal the pipeline's `signals` table does not hold;
- `candle_revised`: the bot's fill or exit price differs from the warehouse candle's (the
  candle changed after the bot saw it);
- `knock_on`: after an explained difference in a market changed its position (a position
  held through a downtime exits elsewhere; sizing follows equity), a later trade of that
  market that differs or that only the bot made.

Paper fills use the backtest's slippage model, so "model vs actual next open" has nothing to
explain here; it is the same arithmetic. The equity gap at the bot's last mark of the day less
the P&L of the explained differences that exited by then is the unexplained gap (a position
still open then counts on the day it closes).

Several markets share one account in the bot (`Trader`: one cash, each entry sized from it).
Per-market backtests reproduce that account only where sizes do not depend on the cash:
`sizing: units`, never clipped to what the cash allows. Then the account's equity is the
starting equity plus every market's backtest P&L, and is reconciled like a single market's.
Otherwise (`risk`, `fraction`) each entry's size follows the shared cash, which the other
markets' fills, fees and exits move in the order the bot processed the bars (stream arrival;
a restart's REST catch-up market by market), an order neither candles nor signals hold: then
trades are matched on what the cash does not change (entry and exit time, side, prices, exit
reason), and sizes, P&L, fees and the equity gap are not compared; `equity_note` says so.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.backtest.params import BacktestParams, ParamError

if TYPE_CHECKING:
    from pathlib import Path

    import polars as pl

    from pipeline.backtest.result import BacktestResult

PRICE_TOL = 1e-9  # relative: prices equal to the last bits (same code, same candles)
SHARED_ACCOUNT = (
    "equity not reconciled: the bot's {n} markets share one account and it sizes entries by "
    "'{sizing}' from the account's cash, which the other markets' fills, fees and exits move in "
    "the order the bot processed their bars (stream arrival, REST catch-up market by market), "
    "an order neither candles nor signals record; a per-market backtest sizes from its own "
    "account. Trades are matched on time, side, prices and exit reason; sizes, P&L, fees and "
    "the equity gap are not compared (with sizing: units they are)."
)
CLIPPED = (
    "equity not reconciled: sizing 'units' was clipped to what the cash allows in {markets}, "
    "and the bot clips against the shared account's cash, not a per-market one. Trades are "
    "matched on time, side, prices and exit reason; sizes, P&L, fees and the equity gap are "
    "not compared."
)


@dataclass
class Reconciliation:
    bot: str
    day: dt.date
    markets: list[str] = field(default_factory=list)
    trades: list[dict[str, Any]] = field(default_factory=list)  # every trade closed that day
    paper_equity: float | None = None
    backtest_equity: float | None = None
    explained_pnl: float = 0.0
    fees_paper: float = 0.0
    fees_backtest: float | None = None
    curves: pl.DataFrame | None = None  # time, paper, backtest (or backtest <market> each)
    equity_note: str | None = None  # why the account's equity is not compared

    @property
    def matched(self) -> int:
        return sum(1 for t in self.trades if t["kind"] == "matched")

    @property
    def differences(self) -> list[dict[str, Any]]:
        return [t for t in self.trades if t["kind"] != "matched"]

    @property
    def equity_gap(self) -> float | None:
        if self.paper_equity is None or self.backtest_equity is None:
            return None
        return self.paper_equity - self.backtest_equity

    @property
    def unexplained_gap(self) -> float | None:
        gap = self.equity_gap
        return None if gap is None else gap - self.explained_pnl

    @property
    def unexplained_trades(self) -> int:
        return sum(1 for d in self.differences if d["why"] is None)

    def failure(self, tolerance: float) -> str | None:
        """Why the day does not reconcile within `tolerance` (account currency), or None."""
        why = []
        if self.unexplained_trades:
            why.append(f"{self.unexplained_trades} unexplained trade difference(s)")
        gap = self.unexplained_gap
        if gap is not None and abs(gap) > tolerance:
            why.append(f"unexplained equity gap {gap:.4f} exceeds the tolerance {tolerance:g}")
        return "; ".join(why) or None


def reconcile(
    bot: str,
    day: dt.date,
    markets: dict[str, tuple[pl.DataFrame, pl.DataFrame]],
    paper: pl.DataFrame,
    equity: pl.DataFrame,
    params: BacktestParams,
) -> Reconciliation:
    """`markets`: per `venue:SYMBOL`, the 1m candles (open_time, open, high, low, close) from
    before the bot's first bar to the day's end and the pipeline's signals (close_time,
    action, confidence, quality, timeframe); `paper`: the bot's paper_trades rows; `equity`:
    its paper_equity. Raises ParamError when a market has no candles in the window."""
    import polars as pl

    from pipeline.backtest.engine import run_backtest

    out = Reconciliation(bot, day, list(markets))
    day_start = dt.datetime.combine(day, dt.time(), dt.UTC)
    day_end = day_start + dt.timedelta(days=1)
    if equity.is_empty():
        return out
    start = equity["time"].min() - dt.timedelta(minutes=1)  # the bot's first processed bar
    runs = {}
    for m, (candles, signals) in markets.items():
        try:
            runs[m] = run_backtest(candles, signals, params, start=start, end=day_end)
        except ParamError as err:
            raise ParamError(f"{m}: {err}") from None
    out.equity_note = _why_not_combined(params, runs)
    paper_curve = (
        equity.sort("n").group_by("time", maintain_order=True).last().select("time", "equity")
    )
    bt = _backtest_curves(runs, params.starting_equity, combined=out.equity_note is None)
    curves = (
        bt.join(paper_curve.rename({"equity": "paper"}), on="time", how="left")
        .filter((pl.col("time") > day_start) & (pl.col("time") <= day_end))
        .select("time", "paper", pl.exclude("time", "paper"))
    )
    out.curves = curves
    marked = curves.drop_nulls("paper")
    if not marked.is_empty():
        out.paper_equity = float(marked["paper"][-1])
        if out.equity_note is None:
            out.backtest_equity = float(marked["backtest"][-1])

    in_day = (pl.col("exit_time") >= day_start) & (pl.col("exit_time") < day_end)
    bars = set(paper_curve["time"].to_list())
    expiry = dt.timedelta(minutes=params.signal_expiry_minutes)
    fees_bt = 0.0
    for m, res in runs.items():
        exchange, _, symbol = m.partition(":")
        mine = paper.filter((pl.col("exchange") == exchange) & (pl.col("symbol") == symbol))
        exits = (
            mine.filter(pl.col("kind") == "exit")
            .rename({"time": "exit_time", "price": "exit_price", "reason": "exit_reason"})
            .filter(in_day)
        )
        bt_trades = res.trades.filter(in_day)
        fees_bt += float(bt_trades["fees"].sum())
        out.fees_paper += float(exits["fees"].sum())
        sig_times = set(markets[m][1]["close_time"].to_list())
        out.trades += _match(
            m,
            list(bt_trades.sort("entry_time").iter_rows(named=True)),
            exits,
            mine.filter(pl.col("kind") == "order"),
            bars,
            expiry,
            sig_times,
            compare_pnl=out.equity_note is None,
        )
    out.trades.sort(key=lambda t: (t["entry_time"], t["market"]))
    if not marked.is_empty():  # what the explained differences did to equity by its last mark
        at = marked["time"][-1] - dt.timedelta(minutes=1)
        out.explained_pnl = sum(
            (r["paper_pnl"] or 0.0) - (r["backtest_pnl"] or 0.0)
            for r in out.trades
            if r["why"] is not None and r["exit_time"] <= at
        )
    out.fees_backtest = fees_bt if out.equity_note is None else None
    return out


def _why_not_combined(params: BacktestParams, runs: dict[str, BacktestResult]) -> str | None:
    """None when per-market backtests reproduce the bot's shared account (see the module)."""
    if len(runs) == 1:
        return None
    if params.sizing != "units":
        return SHARED_ACCOUNT.format(n=len(runs), sizing=params.sizing)
    clipped = [m for m, r in runs.items() if r.counters.get("size_clipped")]
    return CLIPPED.format(markets=", ".join(clipped)) if clipped else None


def _backtest_curves(
    runs: dict[str, BacktestResult], starting: float, combined: bool
) -> pl.DataFrame:
    """time (each bar's close) and `backtest`, the account's equity: one market's as it is,
    several markets' as the starting equity plus each one's P&L (a market without a bar at a
    minute keeps its last equity). Not combined: `backtest <market>` per market."""
    import polars as pl

    frames = []
    for m, res in runs.items():
        mk = res.market
        t = pl.Series(mk.times[mk.i0 : mk.i1] + 60_000_000).cast(pl.Datetime("us", "UTC"))
        frames.append(pl.DataFrame({"time": t, f"backtest {m}": res.equity}))
    out = frames[0]
    for f in frames[1:]:
        out = out.join(f, on="time", how="full", coalesce=True)
    out = out.sort("time").fill_null(strategy="forward")
    cols = [c for c in out.columns if c != "time"]
    if not combined:
        return out
    if len(cols) == 1:
        return out.rename({cols[0]: "backtest"})
    pnl = pl.sum_horizontal([pl.col(c).fill_null(starting) - starting for c in cols])
    return out.select("time", (starting + pnl).alias("backtest"))


def _match(
    market: str,
    bt_rows: list[dict[str, Any]],
    exits: pl.DataFrame,
    orders: pl.DataFrame,
    bars: set[dt.datetime],
    expiry: dt.timedelta,
    sig_times: set[dt.datetime],
    compare_pnl: bool,
) -> list[dict[str, Any]]:
    """One market's trades of the day, each matched or a difference with its explanation."""
    import polars as pl

    keyed = {(r["entry_time"], r["side"]): r for r in exits.iter_rows(named=True)}
    matched = {(t["entry_time"], t["side"]) for t in bt_rows} & keyed.keys()
    extras = [p for k, p in keyed.items() if k not in matched]
    # root causes first: signals one side never traded; what follows them is their knock-on
    roots = [t["entry_time"] for t in bt_rows if (t["entry_time"], t["side"]) not in matched]
    roots += [p["entry_time"] for p in extras]
    first = min(roots, default=None)

    def knock_on(t: dt.datetime) -> str | None:
        return "knock_on" if first is not None and first < t else None

    rows: list[dict[str, Any]] = []
    for t in bt_rows:
        key = (t["entry_time"], t["side"])
        if key not in matched:
            why = _why_missed(t, orders, bars, expiry) or knock_on(t["entry_time"])
            rows.append(_row(market, "missed", t, None, why))
            continue
        p = keyed[key]
        same_px = _close(p["entry_price"], t["entry_price"]) and _close(
            p["exit_price"], t["exit_price"]
        )
        same = same_px and p["exit_reason"] == t["exit_reason"]
        same = same and p["exit_time"] == t["exit_time"]
        if same and (not compare_pnl or _close(p["pnl"], t["pnl"])):
            rows.append(_row(market, "matched", t, p, None))
            continue
        revised = p["exit_time"] == t["exit_time"] and not same_px
        why = "candle_revised" if revised else knock_on(max(p["exit_time"], t["exit_time"]))
        rows.append(_row(market, "different", t, p, why))
    for p in extras:
        order = orders.filter(pl.col("seq") == p["seq"])
        close = order["time"][0] if order.height else None
        why = "not_in_pipeline" if close is not None and close not in sig_times else None
        if close is not None and why is None and p["entry_time"] > close:
            why = "late_signal"  # filled after the bar the backtest fills it on
        why = why or knock_on(p["entry_time"])
        rows.append(_row(market, "extra", None, p, why))
    return rows


def _why_missed(
    t: dict[str, Any], orders: pl.DataFrame, bars: set[dt.datetime], expiry: dt.timedelta
) -> str | None:
    import polars as pl

    close = t["signal_time"]
    mine = orders.filter(pl.col("time") == close)
    if mine.height:  # the bot had the order: late, down, or its position differed (knock-on)
        received = mine["received_at"][0]
        fill_bar_closed = t["entry_time"] + dt.timedelta(minutes=1)
        if received is not None and (received > fill_bar_closed or received - close > expiry):
            return "late_signal"  # after the bar it fills on had closed: a later bar's open
        if fill_bar_closed not in bars or t["exit_time"] + dt.timedelta(minutes=1) not in bars:
            return "bot_down"  # not running at the fill, or when the backtest's trade exited
        return None
    if close + dt.timedelta(minutes=1) not in bars:
        return "bot_down"
    return None  # the running bot never got it: a fault, not an explanation


def _row(
    market: str, kind: str, bt: dict | None, paper: dict | None, why: str | None
) -> dict[str, Any]:
    ref = bt or paper or {}
    return {
        "market": market,
        "kind": kind,
        "entry_time": ref.get("entry_time"),
        "side": ref.get("side"),
        "backtest_entry": bt and bt["entry_price"],
        "paper_entry": paper and paper["entry_price"],
        "backtest_exit": bt and bt["exit_price"],
        "paper_exit": paper and paper["exit_price"],
        "exit_time": max(r["exit_time"] for r in (bt, paper) if r is not None),
        "exit_reason": ref.get("exit_reason"),
        "backtest_pnl": bt and bt["pnl"],
        "paper_pnl": paper and paper["pnl"],
        "why": why,
    }


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= PRICE_TOL * max(abs(a), abs(b), 1.0)


def closed_through(home: Path, name: str) -> dt.datetime | None:
    """Up to when the bot has processed every one of its markets' bars, by its committed
    state (its journal holds everything before): the oldest of its markets' newest bar
    closes. None for a bot that never started (nothing to wait for)."""
    from pipeline import jsonfile
    from pipeline.bots.store import STATE_KEYS, BotStore
    from pipeline.candles.timeframes import MINUTE_US, from_us

    rec = jsonfile.read(BotStore(home, name).state_path, STATE_KEYS)
    if rec is None:
        return None
    lasts = [s.get("last_bar_us") for s in rec["slots"].values()]
    if not lasts or any(x is None for x in lasts):
        return dt.datetime.min.replace(tzinfo=dt.UTC)  # a market with no bar yet
    return from_us(min(lasts) + MINUTE_US)

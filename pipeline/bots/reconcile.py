"""Does what a paper bot did match what the backtest says it should have done?

For one bot on one market and one UTC day: the backtest engine runs over the warehouse's 1m
candles and the pipeline's signals from the bot's first bar to the day's end, with the bot's
parameters and starting equity; trades closed that day are matched one to one by (entry
time, side). Every difference gets an explanation where one can be given:

- `bot_down`: the backtest traded a signal for which the bot has no order, and the bot
  processed no bar around its close (it was not running);
- (no order although the bot was running: the signal never reached it. A fault, left
  unexplained, so the check fails);
- `late_signal`: the bot recorded the order after the bar it fills on had closed (the
  pipeline published it late, e.g. while catching up), so it filled at a later open, or
  after the signal had expired;
- `not_in_pipeline`: the bot traded a signal the pipeline's `signals` table does not hold;
- `candle_revised`: the bot's fill or exit price differs from the warehouse candle's (the
  candle changed after the bot saw it);
- `knock_on`: after an explained difference changed the account or the position (sizing
  follows equity; a position held through a downtime exits elsewhere), a later trade that
  differs or that only the bot made.

Paper fills use the backtest's slippage model, so "model vs actual next open" has nothing to
explain here; it is the same arithmetic. The equity gap at the day's last close less the
P&L the explained differences account for is the unexplained gap.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.backtest.params import BacktestParams

if TYPE_CHECKING:
    import polars as pl

PRICE_TOL = 1e-9  # relative: prices equal to the last bits (same code, same candles)


@dataclass
class Reconciliation:
    bot: str
    day: dt.date
    matched: int = 0
    differences: list[dict[str, Any]] = field(default_factory=list)
    paper_equity: float | None = None
    backtest_equity: float | None = None
    explained_pnl: float = 0.0
    fees_paper: float = 0.0
    fees_backtest: float = 0.0
    curves: pl.DataFrame | None = None  # time, paper, backtest

    @property
    def equity_gap(self) -> float:
        if self.paper_equity is None or self.backtest_equity is None:
            return 0.0
        return self.paper_equity - self.backtest_equity

    @property
    def unexplained_gap(self) -> float:
        return self.equity_gap - self.explained_pnl

    @property
    def unexplained_trades(self) -> int:
        return sum(1 for d in self.differences if d["why"] is None)


def reconcile(
    bot: str,
    day: dt.date,
    candles: pl.DataFrame,
    signals: pl.DataFrame,
    paper: pl.DataFrame,
    equity: pl.DataFrame,
    params: BacktestParams,
) -> Reconciliation:
    """`candles`: the market's 1m candles (open_time, open, high, low, close) from before the
    bot's first bar to the day's end; `signals`: the pipeline's (close_time, action, confidence,
    quality, timeframe); `paper`: the bot's paper_trades rows; `equity`: its paper_equity."""
    import polars as pl

    from pipeline.backtest.engine import run_backtest

    out = Reconciliation(bot, day)
    day_start = dt.datetime.combine(day, dt.time(), dt.UTC)
    day_end = day_start + dt.timedelta(days=1)
    if equity.is_empty():
        return out
    first_close = equity["time"].min()
    start = first_close - dt.timedelta(minutes=1)  # the bot's first processed bar
    bt = run_backtest(candles, signals, params, start=start, end=day_end)
    bt_curve = pl.DataFrame(
        {
            "time": pl.Series(bt.market.times[bt.market.i0 : bt.market.i1] + 60_000_000).cast(
                pl.Datetime("us", "UTC")
            ),
            "backtest": bt.equity,
        }
    )
    paper_curve = (
        equity.sort("n").group_by("time", maintain_order=True).last().select("time", "equity")
    )
    curves = (
        bt_curve.join(paper_curve.rename({"equity": "paper"}), on="time", how="left")
        .filter((pl.col("time") > day_start) & (pl.col("time") <= day_end))
        .select("time", "paper", "backtest")
    )
    out.curves = curves
    marked = curves.drop_nulls("paper")
    if not marked.is_empty():
        out.paper_equity = float(marked["paper"][-1])
        out.backtest_equity = float(marked["backtest"][-1])

    in_day = (pl.col("exit_time") >= day_start) & (pl.col("exit_time") < day_end)
    bt_trades = bt.trades.filter(in_day)
    exits = (
        paper.filter(pl.col("kind") == "exit")
        .rename({"time": "exit_time", "price": "exit_price", "reason": "exit_reason"})
        .filter(in_day)
    )
    out.fees_backtest = float(bt_trades["fees"].sum())
    out.fees_paper = float(exits["fees"].sum())
    orders = paper.filter(pl.col("kind") == "order")
    bars = set(paper_curve["time"].to_list())
    expiry = dt.timedelta(minutes=params.signal_expiry_minutes)
    sig_times = set(signals["close_time"].to_list())
    keyed = {(r["entry_time"], r["side"]): r for r in exits.iter_rows(named=True)}
    bt_rows = list(bt_trades.sort("entry_time").iter_rows(named=True))
    matched = {(t["entry_time"], t["side"]) for t in bt_rows} & keyed.keys()
    extras = [p for k, p in keyed.items() if k not in matched]
    # root causes first: signals one side never traded; what follows them is their knock-on
    roots = [t["entry_time"] for t in bt_rows if (t["entry_time"], t["side"]) not in matched]
    roots += [p["entry_time"] for p in extras]
    first = min(roots, default=None)

    def knock_on(t: dt.datetime) -> str | None:
        return "knock_on" if first is not None and first < t else None

    for t in bt_rows:
        key = (t["entry_time"], t["side"])
        if key not in matched:
            why = _why_missed(t, orders, bars, expiry) or knock_on(t["entry_time"])
            out.differences.append(_diff("missed", t, None, why))
            if why is not None:
                out.explained_pnl -= t["pnl"]
            continue
        p = keyed[key]
        same_px = _close(p["entry_price"], t["entry_price"]) and _close(
            p["exit_price"], t["exit_price"]
        )
        if same_px and _close(p["pnl"], t["pnl"]) and p["exit_reason"] == t["exit_reason"]:
            out.matched += 1
            continue
        revised = p["exit_time"] == t["exit_time"] and not same_px
        why = "candle_revised" if revised else knock_on(max(p["exit_time"], t["exit_time"]))
        out.differences.append(_diff("different", t, p, why))
        if why is not None:
            out.explained_pnl += p["pnl"] - t["pnl"]
    for p in extras:
        order = orders.filter(pl.col("seq") == p["seq"])
        close = order["time"][0] if order.height else None
        why = "not_in_pipeline" if close is not None and close not in sig_times else None
        if close is not None and why is None and p["entry_time"] > close:
            why = "late_signal"  # filled after the bar the backtest fills it on
        out.differences.append(_diff("extra", None, p, why or knock_on(p["entry_time"])))
        if why or knock_on(p["entry_time"]):
            out.explained_pnl += p["pnl"]
    return out


def _why_missed(
    t: dict[str, Any], orders: pl.DataFrame, bars: set[dt.datetime], expiry: dt.timedelta
) -> str | None:
    import polars as pl

    close = t["signal_time"]
    mine = orders.filter(pl.col("time") == close)
    if mine.height:  # the bot had the order: late, or its position differed (a knock-on)
        received = mine["received_at"][0]
        fill_bar_closed = t["entry_time"] + dt.timedelta(minutes=1)
        if received is not None and (received > fill_bar_closed or received - close > expiry):
            return "late_signal"  # after the bar it fills on had closed: a later bar's open
        return None
    if close + dt.timedelta(minutes=1) not in bars:
        return "bot_down"
    return None  # the running bot never got it: a fault, not an explanation


def _diff(kind: str, bt: dict | None, paper: dict | None, why: str | None) -> dict[str, Any]:
    ref = bt or paper or {}
    return {
        "kind": kind,
        "entry_time": ref.get("entry_time"),
        "side": ref.get("side"),
        "backtest_entry": bt and bt["entry_price"],
        "paper_entry": paper and paper["entry_price"],
        "backtest_exit": bt and bt["exit_price"],
        "paper_exit": paper and paper["exit_price"],
        "backtest_pnl": bt and bt["pnl"],
        "paper_pnl": paper and paper["pnl"],
        "why": why,
    }


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= PRICE_TOL * max(abs(a), abs(b), 1.0)

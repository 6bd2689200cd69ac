"""Public trades on the replay exchange: synthesized from its candles, served as Bybit's
`publicTrade.<SYMBOL>` WebSocket topic (wire: /work/shared/BYBIT-V5.md, Bybit v5 docs
"websocket/public/trade").

A minute's trades are made from that minute's final 1m candle, so order flow and candles
agree the way the real exchange's do: sizes are whole qty steps (the candle's volume
decimals, Bybit's `lotSizeFilter.qtyStep`) that add up EXACTLY to the candle's volume, every
price is on the tick grid inside [low, high], the first trade is at the open and the last at
the close, and (from four trades on) one trade each touches the high and the low. The taker
side leans with the candle's direction. Everything is drawn from a generator keyed by the
source, symbol and minute, and by the candle's values: the same seed gives the same trades on
every run and after a restart, and a `revise()`d candle gets trades that match its new
values.

Like Bybit, the stream sends trades as they happen and nothing from before the subscription:
each push carries the trades stamped after the previous push up to the exchange clock, at
most 1024 per message, ascending by time; when the clock jumps, only the trades of the last
three minutes go out (as with kline confirms). A connection cut by `drop_streams` (the
streams' fault injection) loses what happens until the client subscribes again.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.replay import synthetic
from pipeline.replay.intervals import DAY_MS, MINUTE_MS

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.replay.market import Market

TOPIC = re.compile(r"^publicTrade\.([A-Z0-9]{2,30})$")
PER_MESSAGE = 1024  # Bybit's most trades in one push
MEAN_TRADE_STEPS = 40  # qty steps a trade averages (0.04 BTC): ~300 a BTC minute, light to serve
MAX_TRADES = 5000  # per minute
LOOKBACK_MINUTES = 2  # a clock jump sends the current minute's trades and two before it


@dataclass
class TradeSub:
    """One `publicTrade` subscription: trades stamped at or after `since_ms` go out next."""

    symbol: str
    since_ms: int


@dataclass(frozen=True)
class Trades:
    """One minute's trades, ascending by time: ms stamps, taker buys, sizes, prices (as
    numbers and as the wire's strings), tick directions and ids."""

    times: np.ndarray
    buy: np.ndarray
    size: list[str]
    price: list[str]
    tick: list[str]
    ids: list[str]
    units: np.ndarray  # sizes in qty steps (they sum to the candle's volume in steps)
    prices: np.ndarray


def subscription(topic: Any, market: Market, now_ms: int) -> TradeSub | None:
    """The subscription for a valid `publicTrade.<SYMBOL>` topic of a served symbol."""
    m = TOPIC.match(topic) if isinstance(topic, str) else None
    if not m or not market.supports(m.group(1)):
        return None
    return TradeSub(m.group(1), now_ms + 1)


def minute_trades(market: Market, symbol: str, open_ms: int) -> Trades | None:
    """The trades of one closed-or-forming minute (None where the source has no candle)."""
    rows = market.day_rows(symbol, open_ms // DAY_MS)
    i = int(np.searchsorted(rows[:, 0], open_ms))
    if i >= len(rows) or rows[i, 0] != open_ms:
        return None
    o, h, lo, c, v = (float(x) for x in rows[i, 1:6])
    dec = market.decimals(symbol)
    return synthesize(market.source.ident, symbol, open_ms, (o, h, lo, c, v), dec[0], dec[1])


@lru_cache(maxsize=512)
def synthesize(
    key: str,
    symbol: str,
    open_ms: int,
    candle: tuple[float, float, float, float, float],
    price_dec: int,
    size_dec: int,
) -> Trades:
    """The trades of one candle (open, high, low, close, volume); see the module docstring."""
    o, h, lo, c, v = candle
    rng = np.random.default_rng(synthetic._key(key, symbol, "trades", open_ms, *candle))
    units_total = round(v * 10**size_dec)
    if units_total <= 0:
        return _trades(key, symbol, open_ms, np.empty(0, np.int64), *_empty(), price_dec, size_dec)
    n = round(units_total / MEAN_TRADE_STEPS * rng.lognormal(0.0, 0.3))
    n = int(min(max(n, 1), MAX_TRADES, units_total))
    weights = rng.lognormal(0.0, 1.0, n)
    units = 1 + rng.multinomial(units_total - n, weights / weights.sum())
    tick = 10.0**-price_dec
    k_lo, k_hi = round(lo / tick), round(h / tick)
    steps = rng.integers(k_lo, k_hi + 1, n)
    if n >= 4:  # touch both extremes, somewhere inside the minute
        i_hi, i_lo = rng.choice(np.arange(1, n - 1), 2, replace=False)
        steps[i_hi], steps[i_lo] = k_hi, k_lo
    if n >= 2:
        steps[0] = round(o / tick)
    steps[-1] = round(c / tick)
    prices = np.round(np.clip(steps, k_lo, k_hi) * tick, price_dec)
    times = np.sort(rng.integers(open_ms, open_ms + MINUTE_MS, n))
    lean = 0.3 * np.tanh((c - o) / max(h - lo, tick))
    buy = rng.random(n) < 0.5 + lean
    return _trades(key, symbol, open_ms, times, buy, units, prices, price_dec, size_dec)


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty(0, bool), np.empty(0, np.int64), np.empty(0)


def _trades(
    key: str,
    symbol: str,
    open_ms: int,
    times: np.ndarray,
    buy: np.ndarray,
    units: np.ndarray,
    prices: np.ndarray,
    price_dec: int,
    size_dec: int,
) -> Trades:
    step = 10.0**-size_dec
    size = [f"{u * step:.{size_dec}f}" for u in units.tolist()]
    price = [f"{p:.{price_dec}f}" for p in prices.tolist()]
    diff = np.sign(np.diff(prices, prepend=prices[:1]))
    ticks, last = [], "ZeroPlusTick"
    for d in diff.tolist():
        if d > 0:
            last = "PlusTick"
        elif d < 0:
            last = "MinusTick"
        else:
            last = "ZeroPlusTick" if last in ("PlusTick", "ZeroPlusTick") else "ZeroMinusTick"
        ticks.append(last)
    base = synthetic._key(key, symbol, "trade-ids", open_ms) << 64
    ids = [str(uuid.UUID(int=base | k)) for k in range(len(times))]
    return Trades(times, buy, size, price, ticks, ids, units, prices)


def items(symbol: str, trades: Trades, lo: int, hi: int) -> list[dict[str, Any]]:
    """The wire items of the trades stamped in [lo, hi)."""
    i0, i1 = np.searchsorted(trades.times, [lo, hi])
    return [
        {
            "T": int(trades.times[k]),
            "s": symbol,
            "S": "Buy" if trades.buy[k] else "Sell",
            "v": trades.size[k],
            "p": trades.price[k],
            "L": trades.tick[k],
            "i": trades.ids[k],
            "BT": False,
        }
        for k in range(int(i0), int(i1))
    ]


def push(
    market: Market, send: Callable[[dict[str, Any]], None], topic: str, sub: TradeSub, now_ms: int
) -> None:
    """Send (with a session's `send`) the trades stamped in [since, now], the last three
    minutes' at most."""
    hi = now_ms + 1
    lo = max(sub.since_ms, (now_ms // MINUTE_MS - LOOKBACK_MINUTES) * MINUTE_MS)
    sub.since_ms = max(sub.since_ms, hi)
    out: list[dict[str, Any]] = []
    for minute in range(lo // MINUTE_MS * MINUTE_MS, hi, MINUTE_MS):
        trades = minute_trades(market, sub.symbol, minute)
        if trades is not None:
            out += items(sub.symbol, trades, lo, hi)
    for a in range(0, len(out), PER_MESSAGE):
        chunk = out[a : a + PER_MESSAGE]
        send({"topic": topic, "type": "snapshot", "ts": now_ms, "data": chunk})

"""`<home>/fastlane/newest.json`: each market's newest confirmed candle, from the live stream.

The fast lane follows every market's stream anyway, so it knows each newest closed candle the
moment the exchange confirms it. It writes them here (atomically, once per closed minute per
venue) so the live sensor learns them all with one file read instead of one REST request per
market per tick (Bybit has no batch kline endpoint). The sensor trusts an entry only if its
venue wrote within `FRESH_S` of wall clock, and asks REST for whatever the record lacks.

    {"markets": {"bybit:BTCUSDT": "2024-01-05T03:52:00+00:00", ...},   # newest open_time
     "venues": {"bybit": {"written_at": 1704426780.1,                  # wall clock, Unix s
                          "exchange_time": "2024-01-05T03:53:00.04+00:00"}}}
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import jsonfile

FRESH_S = 90.0  # a venue silent for longer (wall clock) is not followed: its entries are stale
LATE_S = 2.0  # write a minute some markets have not confirmed yet after this long (wall)
EPOCH = dt.datetime.min.replace(tzinfo=dt.UTC)
_LOCK = threading.Lock()  # one writer per venue thread; the record is shared by the venues


def path(home: Path) -> Path:
    return home / "fastlane" / "newest.json"


class Writer:
    """One venue's side of the record, kept by its fast-lane runner.

    `saw` each confirmed candle from the stream; the minute is written as soon as every
    market of the venue confirmed it, or `LATE_S` after the first confirm (`tick`) with what
    arrived by then: at most once per closed minute, markets that lag show their older entry.
    """

    def __init__(self, home: Path, venue: str, symbols: list[str]) -> None:
        self.home, self.venue, self.symbols = home, venue, set(symbols)
        self.newest: dict[str, dt.datetime] = {}
        self.written: dt.datetime | None = None  # the newest minute written
        self.pending_since: float | None = None  # wall time of the first confirm not written

    def saw(self, symbol: str, open_time: dt.datetime, exchange_now: dt.datetime) -> None:
        if symbol not in self.symbols or open_time <= self.newest.get(symbol, EPOCH):
            return
        self.newest[symbol] = open_time
        if self.written is not None and open_time <= self.written:
            return  # a lagging market confirming a minute already written: the next write
        if self.pending_since is None:
            self.pending_since = time.time()
        # Waited for: every market that confirmed the last minute written (all, at first), so
        # one market gone quiet does not hold every later minute back by LATE_S.
        active = [
            s
            for s in self.symbols
            if self.written is None or self.newest.get(s, EPOCH) >= self.written
        ]
        if all(self.newest.get(s, EPOCH) >= open_time for s in active):
            self._write(open_time, exchange_now)

    def tick(self, exchange_now: Callable[[], dt.datetime]) -> None:
        """Write a minute that not every market confirmed, once it is `LATE_S` old (the
        exchange's clock is asked only then)."""
        if self.pending_since is not None and time.time() - self.pending_since >= LATE_S:
            self._write(max(self.newest.values()), exchange_now())

    def _write(self, minute: dt.datetime, exchange_now: dt.datetime) -> None:
        self.written, self.pending_since = minute, None
        write(self.home, self.venue, self.newest, exchange_now)


def write(
    home: Path, venue: str, newest: dict[str, dt.datetime], exchange_now: dt.datetime
) -> None:
    """Replace `venue`'s markets in the record (other venues' entries stay)."""
    with _LOCK:
        try:
            rec = jsonfile.read(path(home), {"markets", "venues"}) or {}
        except jsonfile.Unreadable:
            rec = {}  # ours to rewrite: a torn record cannot happen (atomic), a foreign one can
        markets = {k: v for k, v in rec.get("markets", {}).items() if not k.startswith(venue + ":")}
        markets.update({f"{venue}:{s}": t.isoformat() for s, t in sorted(newest.items())})
        venues = dict(rec.get("venues", {}))
        venues[venue] = {"written_at": time.time(), "exchange_time": exchange_now.isoformat()}
        jsonfile.replace(path(home), {"markets": markets, "venues": venues})


@dataclass
class Reading:
    """What the record says for the markets asked about: `have` (market -> newest open_time,
    at least the minute expected), `lacking` the others, `behind` those of them whose venue
    is followed but has not written the minute yet (worth a short wait), and `why`."""

    have: dict[str, dt.datetime] = field(default_factory=dict)
    lacking: list[str] = field(default_factory=list)
    behind: list[str] = field(default_factory=list)
    why: str = ""


def read(
    home: Path, markets: list[str], expected: dt.datetime, now: float | None = None
) -> Reading:
    """The markets (`bybit:BTCUSDT`) whose newest confirmed candle opens at `expected` (the
    minute that just closed on the exchange's clock) or later, by a venue fresh within
    `FRESH_S`; the rest are lacking, with the reason."""
    now = time.time() if now is None else now
    try:
        rec = jsonfile.read(path(home), {"markets", "venues"})
    except jsonfile.Unreadable as err:
        return Reading(lacking=list(markets), why=str(err))
    if rec is None:
        return Reading(lacking=list(markets), why="no fast-lane record (the fast lane not running)")
    if not isinstance(rec["markets"], dict) or not isinstance(rec["venues"], dict):
        why = f"{path(home)} is unreadable (markets and venues must be JSON objects)"
        return Reading(lacking=list(markets), why=why)
    out, stale, absent = Reading(), set(), []
    for m in markets:
        venue = m.split(":", 1)[0]
        written = (rec["venues"].get(venue) or {}).get("written_at")
        t = _when(rec["markets"].get(m))
        if not isinstance(written, int | float) or t is None:
            absent.append(m)
        elif now - written > FRESH_S:
            stale.add(venue)
        elif t >= expected:
            out.have[m] = t
        else:
            out.behind.append(m)
    out.lacking = [m for m in markets if m not in out.have]
    reasons = [f"{v} not updated for over {FRESH_S:.0f} s" for v in sorted(stale)]
    behind = out.behind
    reasons += [f"{len(behind)} market(s) not at {expected:%H:%M} yet"] if behind else []
    reasons += [f"{len(absent)} market(s) not in it"] if absent else []
    out.why = "; ".join(reasons)
    return out


def _when(iso: object) -> dt.datetime | None:
    """An entry's open_time (aware, UTC), or None for a missing or malformed one."""
    try:
        t = dt.datetime.fromisoformat(iso) if isinstance(iso, str) else None
    except ValueError:
        return None
    return t if t is not None and t.tzinfo is not None else None

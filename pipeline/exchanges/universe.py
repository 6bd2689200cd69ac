"""`exchanges: {bybit: all}`: every trading USDT linear perpetual the exchange lists, resolved
from its instrument list, filtered by 24h turnover, cached in the home and refreshed daily.

An instrument is kept when its `status` is Trading, its `quoteCoin` USDT and its
`contractType` LinearPerpetual; with `bybit.min_turnover_24h`, only those whose 24h turnover
(`/v5/market/tickers`) is at least that (a symbol without a ticker is dropped, and counted).
The result is written to `<home>/universe/bybit.json` with when, from where and with which
filter it was resolved (`config show` and `status` say so), and `Settings.markets` reads it.

Commands that open the home's exchange (`up`, `backfill`) resolve it when due (none yet, a
day old, another filter, another source), and so does a Dagster process asking for a client
(`ExchangeResource.client`), which keeps a long `up` refreshed daily. Never a silent choice:
an instrument list that cannot be fetched is an error (no fallback to a default or older
list), and so is a filter that keeps nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline import jsonfile
from pipeline.exchanges.protocol import ExchangeError
from pipeline.exchanges.sources import SourceError
from pipeline.markets import ALL, resolved_universe, universe_age, universe_path

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.exchanges.protocol import Endpoint

REFRESH = dt.timedelta(days=1)
VENUE = "bybit"  # the venue whose `all` is resolved here (markets.ALL_VENUES)
KEEP = {"status": "Trading", "quoteCoin": "USDT", "contractType": "LinearPerpetual"}


class UniverseError(SourceError):
    """`all` cannot be resolved; the message says why and what to do (one line)."""


def configured(settings: Settings) -> bool:
    return settings.exchanges.get(VENUE) == ALL


def due(settings: Settings, endpoint: Endpoint, now: dt.datetime | None = None) -> str | None:
    """Why `all` must be resolved now (None: the cached resolution stands)."""
    if not configured(settings):
        return None
    rec = resolved_universe(settings.home, VENUE)
    if rec is None:
        return "not resolved yet"
    if rec.get("warehouse_id") != endpoint.warehouse_id:
        return f"resolved from {rec.get('source')}, not this home's source"
    if rec.get("min_turnover_24h") != settings.bybit.min_turnover_24h:
        return "bybit.min_turnover_24h changed"
    if universe_age(rec, now) >= REFRESH:
        return f"resolved {rec['resolved_at'][:16]}, more than a day ago"
    return None


def ensure(
    settings: Settings,
    endpoint: Endpoint,
    say: Callable[[str], None] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any] | None:
    """Resolve `all` if it is due (see `due`); the new record, or None when nothing was done."""
    why = due(settings, endpoint, now)
    if why is None:
        return None
    rec = resolve(settings, endpoint, now)
    if say:
        say(f"bybit: all -> {describe(rec)} ({why})")
    return rec


def resolve(
    settings: Settings, endpoint: Endpoint, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Fetch the instrument list (and tickers, with a turnover filter), filter, record."""
    from pipeline.exchanges import client

    now = now or dt.datetime.now(dt.UTC)
    floor = settings.bybit.min_turnover_24h
    c = client(VENUE, settings, endpoint)
    try:
        listed = c.instruments_info()  # type: ignore[attr-defined]
        turnover = c.turnovers_24h() if floor is not None else {}  # type: ignore[attr-defined]
    except ExchangeError as err:
        raise UniverseError(
            f"exchanges: bybit: all needs the instrument list of {endpoint.label} "
            f"({endpoint.rest_url}), which could not be fetched: {err}. Nothing was run; "
            "Signalbox never falls back to another list (fix the exchange, or list symbols)"
        ) from None
    finally:
        c.close()
    perpetuals = sorted(
        str(i["symbol"]) for i in listed if all(i.get(k) == v for k, v in KEEP.items())
    )
    if not perpetuals:
        raise UniverseError(
            f"exchanges: bybit: all: {endpoint.label} lists {len(listed)} instrument(s) but no "
            "trading USDT linear perpetual; list the symbols instead"
        )
    kept = perpetuals
    if floor is not None:
        kept = [s for s in perpetuals if turnover.get(s, -1.0) >= floor]
        if not kept:
            top = max((turnover.get(s, 0.0) for s in perpetuals), default=0.0)
            raise UniverseError(
                f"exchanges: bybit: all with bybit.min_turnover_24h = {floor:,.0f} keeps none of "
                f"the {len(perpetuals)} trading USDT perpetuals (the largest 24h turnover is "
                f"{top:,.0f}): lower bybit.min_turnover_24h"
            )
    rec = {
        "venue": VENUE,
        "symbols": kept,
        "resolved_at": now.isoformat(timespec="seconds"),
        "source": endpoint.label,
        "warehouse_id": endpoint.warehouse_id,
        "rest_url": endpoint.rest_url,
        "min_turnover_24h": floor,
        "instruments": len(listed),
        "usdt_perpetuals": len(perpetuals),
        "without_ticker": sum(1 for s in perpetuals if s not in turnover) if floor else 0,
    }
    jsonfile.replace(universe_path(settings.home, VENUE), rec)
    return rec


def describe(rec: dict[str, Any]) -> str:
    """One line: how many symbols, of how many, by which filter, when and from where."""
    floor = rec.get("min_turnover_24h")
    how = f"24h turnover >= {floor:,.0f}" if floor is not None else "no turnover filter"
    return (
        f"{len(rec['symbols'])} of {rec.get('usdt_perpetuals', '?')} trading USDT perpetuals "
        f"({how}), resolved {rec['resolved_at'][:16]} from {rec.get('source', '?')}"
    )


def summary(settings: Settings) -> str | None:
    """What `all` stands for in this home now, for `config show` and `status` (None when
    not configured)."""
    if not configured(settings):
        return None
    try:
        rec = resolved_universe(settings.home, VENUE)
    except ValueError as err:
        return str(err)
    if rec is None:
        return "not resolved yet (`signalbox up` or `backfill` resolves it)"
    stale = universe_age(rec) >= REFRESH
    return describe(rec) + ("; due for its daily refresh" if stale else "")

"""Replay exchange + Bybit client throughput: 1000-row 1m pages, server-side and through pybit."""

from __future__ import annotations

import datetime as dt
import time

TITLE = "Replay exchange: 1000-row kline pages"
DAY_MS = 86_400_000


def run() -> str:
    import requests

    from bench.common import table
    from pipeline.exchanges.bybit import BybitClient
    from pipeline.replay import ExchangeClock, ReplayExchange, synthetic
    from pipeline.replay.data import SyntheticSource
    from pipeline.replay.market import Market

    start = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
    s0 = int(start.timestamp() * 1000)
    now = s0 + 400 * DAY_MS
    pages = [(s0 + k * 1000 * 60_000, s0 + (k * 1000 + 999) * 60_000) for k in range(526)]

    # server side, no HTTP: baseline = generating the same candles with pipeline.replay.synthetic
    t = time.perf_counter()
    for a, b in pages:
        synthetic.candles("ETHUSDT", a, b + 60_000)
    gen = time.perf_counter() - t
    m = Market(SyntheticSource(7), cache_days=400)
    t = time.perf_counter()
    for a, b in pages:
        m.kline("BTCUSDT", "1", a, b, 1000, now)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    for a, b in pages:
        m.kline("BTCUSDT", "1", a, b, 1000, now)
    warm_server = time.perf_counter() - t
    clock = ExchangeClock(dt.datetime(2024, 2, 5, tzinfo=dt.UTC))
    with ReplayExchange(seed=7, clock=clock) as ex:
        ex.market.cache_days = 400  # keep the whole year formatted for the warm passes
        # baseline: the same 526 pages as raw HTTP GETs (no pybit, no parsing, warm caches)
        c = BybitClient(ex.rest_url)
        t = time.perf_counter()
        year = c.fetch_klines("BTCUSDT", start, start + dt.timedelta(days=365))
        year_s = time.perf_counter() - t
        with requests.Session() as s:
            t = time.perf_counter()
            for a, b in pages:
                q = {"symbol": "BTCUSDT", "interval": "1", "start": a, "end": b, "limit": 1000}
                s.get(f"{ex.rest_url}/v5/market/kline", params=q).raise_for_status()
            raw = time.perf_counter() - t
        t = time.perf_counter()
        c.fetch_klines("BTCUSDT", start, start + dt.timedelta(days=365))
        warm_client = time.perf_counter() - t
    n = len(pages)
    measured = [
        ("synthetic.candles, 1000 rows (baseline)", gen),
        ("Market.kline, cold (generate + format)", cold),
        ("Market.kline, warm (formatted days cached)", warm_server),
        ("raw HTTP GET over loopback, warm server", raw),
        ("BybitClient via pybit, cold server", year_s),
        ("BybitClient via pybit, warm server", warm_client),
    ]
    rows = [[w, f"{t / n * 1e3:.2f}", f"{n / t:.0f}", f"{t / gen:.2f}"] for w, t in measured]
    return (
        f"{n} pages of 1000 one-minute candles (one year, {year.height:,} rows fetched and "
        "validated). Ratio = time / generating the same candles with "
        "`pipeline.replay.synthetic`.\n\n"
        + table(["what", "ms per page", "pages/s", "ratio"], rows)
        + f"\n\nOne-year backfill through pybit: {year_s:.1f} s cold, {warm_client:.1f} s warm "
        f"(HTTP alone: {raw:.1f} s)."
    )

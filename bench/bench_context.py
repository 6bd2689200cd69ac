"""What the market context adds to a live run: live-mode runs of the real `live` job through
the warm run launcher (bench/runstart.py), one per newly closed minute against a wall-clock
replay exchange. The in-process executor runs steps one after another, so the
`market_context` step's own duration is what it adds to the run; the baselines are the same
runs' `klines_1m` step (the perpetual's minute, the same kind of work) and the whole run."""

from __future__ import annotations

import os
import statistics

from bench.common import table

TITLE = "Market context in the live run: what the spot minute, funding and OI add"
RUNS = int(os.environ.get("BENCH_CONTEXT_RUNS", "8"))


def run() -> str:
    from bench.runstart import live_runs

    load = os.getloadavg()[0]
    rows = live_runs(RUNS)
    load = max(load, os.getloadavg()[0])

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows if key in r)

    ctx, kl, end = med("step market_context"), med("step klines_1m"), med("end")
    steps = sorted(k for k in rows[0] if k.startswith("step "))
    body = table(
        ["step", "median s", "x klines_1m step"],
        [[k.removeprefix("step "), f"{med(k):.3f}", f"{med(k) / kl:.2f}"] for k in steps]
        + [["whole run (launch → end)", f"{end:.3f}", f"{end / kl:.2f}"]],
    )
    return (
        f"{len(rows)} live-mode runs (after a warm-up ingesting the day so far), one a minute "
        f"as the live sensor requests them, medians:\n\n{body}\n\n"
        f"The `market_context` step adds **{ctx * 1000:.0f} ms** to a live run: "
        f"{ctx / kl:.2f}x the perpetual's own ingest step and {ctx / end:.1%} of the whole run. "
        "Per minute it asks the exchange for its identity (as klines_1m does) and one spot "
        "kline page (the clock is the one the sensor hands the run), and writes and checks the "
        "spot table only; "
        "open interest once every 5 minutes and funding once every 8 hours (when due).\n\n"
        f"Load average up to {load:.1f} on {os.cpu_count()} cores during the run (a shared "
        "machine): absolute times are inflated; the ratios are what to compare."
    )


if __name__ == "__main__":
    print(run())

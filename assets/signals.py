"""`signals`: every configured personality's BUY/SELL signals per daily partition.

A partition's signals equal what one pass over all history gives and what the live path
computes bar by bar (pipeline/strategy/signals.py proves it; the checks here re-prove it on a
sample of
each run). In live runs the new signals go to the sidecar's outbox right after the write, so a
subscriber gets them within milliseconds and never delays the run.
"""

import datetime as dt
import json
import time

import dagster as dg

from assets.common import (
    check_result,
    check_specs,
    daily_table,
    display,
    live_start,
    md_table,
)
from assets.common import window as partition_window
from pipeline.orchestration import tags
from pipeline.orchestration.resources import (
    ExchangeResource,
    ProgressResource,
    SettingsResource,
    WarehouseResource,
)

CHECKS = {
    "valid": "Rows a bot can trust: BUY/SELL, confidence in [0, 1] and at least the threshold, "
    "positive price, one per key, on the timeframe's grid, reasons and a JSON snapshot given, "
    "quality ok or degraded, at most one signal per cooldown.",
    "no_lookahead": "For a sample of bars, the live path's result on data cut at the bar's close "
    "(market context joined again from the rows known then) equals the one-pass result over all "
    "history.",
}
PARITY = dg.AssetCheckSpec(
    "fast_lane_parity",
    asset="signals",
    blocking=False,  # the fast lane's fault, not the pipeline's: its rows stay the record
    description="Every signal the fast lane journaled for a bar this run reached is one of these "
    "rows: same action, reasons, quality, price, confidence within 1e-9; no key journaled twice "
    "differently (pipeline/fastlane/parity.py). "
    "Pipeline rows the fast lane was silent on, and bars not reached yet, are only counted.",
)
LIVE_LOOKAHEAD_SAMPLE = 3  # bars per personality on the minute-by-minute path
BACKFILL_LOOKAHEAD_SAMPLE = 60


class SignalsConfig(dg.Config):
    """Set by the live sensor: the exchange's clock when it requested the run, which the
    sidecar's signal TTL is measured against (a replay exchange may live in the past)."""

    exchange_now: str | None = None  # ISO 8601 UTC


def _to_messages(rows) -> list[dict]:
    """Signal rows as the dicts the sidecar's outbox takes, from this lane (`origin`)."""
    out = []
    for r in rows.iter_rows(named=True):
        r = {**r, "origin": "pipeline"}
        r["snapshot"] = (
            json.loads(r["snapshot"]) if isinstance(r["snapshot"], str) else r["snapshot"]
        )
        out.append(r)
    return out


@daily_table(
    "signals",
    CHECKS,
    # rules read order flow and the market context, so a live run builds them first; the
    # context step is ordered by its spot table, the one it writes every minute (funding and
    # open interest, when not due, are not materialized and must not skip the signals)
    deps=["indicators", "order_flow_bars", "spot_klines_1m"],
    group_name="signals",
    kinds={"duckdb", "polars"},
    check_specs=[*check_specs("signals", CHECKS), PARITY],
    description=(
        "BUY/SELL signals of every configured personality (pipeline/personalities/*.yaml) "
        "with confidence, reasons, a snapshot of the values that decided them and the data "
        "quality of their window. Live runs hand new ones to the sidecar."
    ),
)
def signals(
    context: dg.AssetExecutionContext,
    config: SignalsConfig,
    settings: SettingsResource,
    exchange: ExchangeResource,
    warehouse: WarehouseResource,
    progress: ProgressResource,
) -> dg.MaterializeResult:
    import polars as pl

    from pipeline.candles.tail import live_tail
    from pipeline.fastlane import parity
    from pipeline.markets import by_venue
    from pipeline.quality.checks import CheckOutcome
    from pipeline.runtime import latency
    from pipeline.sidecar.outbox import publish
    from pipeline.strategy.build import build_signals, write_signals
    from pipeline.strategy.checks import check_signals, check_signals_lookahead
    from pipeline.strategy.personality import load_personalities
    from pipeline.strategy.signals import signal_summary

    s, wh = settings.get(), warehouse.get()
    with wh.session() as wh:  # one connection for the step's reads and write
        start, end = partition_window(context)
        first, last = start.date(), (end - dt.timedelta(days=1)).date()
        live = tags.from_sensor(context.run.tags)  # the sensor's runs: new signals to the sidecar
        personalities = load_personalities(s.personalities, s.timeframes)
        venues = list(by_venue(s.markets))
        since = live_start(context)  # mode=live: the rows of the bars the candles rebuilt
        tails = {v: live_tail(wh, v, start, end, since, s.timeframes) for v in venues} if (
            since is not None
        ) else None  # fmt: skip
        steps = len(venues) * len(personalities)
        report = progress.reporter(context, "personalities", steps, enabled=not live)
        done = iter(range(1, steps + 1))
        builds = [
            build_signals(
                wh, v, first, last, personalities,
                lambda name, n, v=v: report(next(done), f"{v} {name}: {n} signal(s)"),
                tails[v].ranges if tails else None,
            )
            for v in venues
        ]  # fmt: skip
        names = [p.name for p in personalities]
        rows = pl.concat([b.rows() for b in builds], how="vertical_relaxed") if builds else None
        rows = rows if rows is not None else pl.DataFrame()
        written = write_signals(wh, builds, start, end, names)
        # per personality: the first venue whose signals fail, else the last pass
        valid = [
            _first_failed([check_signals(_of(b, p), p) for b in builds]) for p in personalities
        ]

        published: list[int] = []
        if live and all(o.passed for o in valid) and rows.height:
            now = dt.datetime.fromisoformat(config.exchange_now) if config.exchange_now else None
            publish_started_at = time.time()
            published = publish(s, _to_messages(rows), now=now)
            latency.record(
                s.home, run_id=context.run_id, stage="signals", published=len(published),
                publish_started_at=publish_started_at, published_at=time.time(),
            )  # fmt: skip

        sample = LIVE_LOOKAHEAD_SAMPLE if live else BACKFILL_LOOKAHEAD_SAMPLE
        # on the last day, over what the build read last (a backfill's last run of days)
        lookahead = [
            _first_failed(
                [
                    check_signals_lookahead(b.frames, p, sample=sample, day=last, context=b.context)
                    for b in builds
                ]
                if all(p.name in b.by_personality for b in builds)
                else [CheckOutcome(True, f"no {p.signal_tf} bar rebuilt: nothing to check")]
            )
            for p in personalities
        ]
        summary = signal_summary(rows)
        table = pl.DataFrame(
            [{"personality": k, **v} for k, v in summary.items()] if summary else None
        )
        meta = {
            "source": exchange.source().label,
            "rows_written": written,
            "published_to_sidecar": len(published),
            "per_personality": dg.MetadataValue.md(md_table(table)),
            "summary": dg.MetadataValue.json(summary),
        }
        results = {
            "valid": _combine(valid, names, CheckOutcome),
            "no_lookahead": _combine(lookahead, names, CheckOutcome),
        }
        # the fast lane against these rows, on bars this run reached (a live day grows by minutes)
        reached = {k: v for b in builds for k, v in parity.reached(b.exchange, b.reached()).items()}
        days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
        day_rows = rows if tails is None else _stored(wh, venues, start, end)  # a tail's day
        agree = parity.outcome(parity.check_partition(s.home, venues, days, day_rows, reached))
        if not agree.passed:
            context.log.error(f"fast_lane_parity failed: {agree.description}")
        return dg.MaterializeResult(
            metadata=display(meta),
            check_results=[
                *(check_result(n, results[n], "signals") for n in CHECKS),
                check_result(PARITY.name, agree, "signals"),
            ],
        )


def _of(built, p):
    """A venue's signals of personality `p` (none: a tail without a bar of its timeframe)."""
    import polars as pl

    from pipeline.strategy.signal_table import signals_schema

    found = built.by_personality.get(p.name)
    return found if found is not None else pl.DataFrame(schema=signals_schema())


def _stored(wh, venues, start, end):
    """The day's stored signals of `venues` (a live tail wrote only some of them)."""
    from pipeline.fastlane.journal import FIELDS

    cols = ", ".join(f'"{c}"' for c in FIELDS)
    marks = ", ".join("?" * len(venues))
    return wh.query(
        f"SELECT {cols} FROM signals WHERE exchange IN ({marks})"
        " AND close_time > ? AND close_time <= ?",
        [*venues, start, end],
    )


def _first_failed(outcomes):
    """One venue's failing outcome if any (the venues are checked separately), else the last."""
    return next((o for o in outcomes if not o.passed), outcomes[-1])


def _combine(outcomes, names, outcome_cls):
    """One outcome from one per personality, naming the personalities that failed."""
    failed = [(n, o) for n, o in zip(names, outcomes, strict=True) if not o.passed]
    meta = {n: o.description for n, o in zip(names, outcomes, strict=True)}
    if not failed:
        return outcome_cls(True, f"passed for {', '.join(names)}", meta)
    desc = "; ".join(f"{n}: {o.description}" for n, o in failed)
    return outcome_cls(False, desc, {**meta, **failed[0][1].metadata})

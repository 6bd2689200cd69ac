"""`live_candles`: keeps the warehouse current to the last closed minute.

Each tick learns each market's newest closed candle and requests ONE run that ingests the new
minutes into their day's partition and updates every downstream live asset. The newest
candles come from the fast lane's record of its live streams (pipeline.fastlane.newest: one
file read for every market) where it holds the minute that just closed, else one REST request
per market it lacks; the run's `signalbox/detected` tag and the skip reason say which
(`stream`, `rest`, `stream+rest`). It never opens DuckDB; the warehouse's state comes from the
asset's materializations, and the heavy lifting happens in the run. Around a minute's close
the tick waits the last few seconds for the candle to close instead of finding it up to 5 s
later on the next daemon tick.
"""

import datetime as dt
import json
import time
from pathlib import Path

import dagster as dg

from pipeline.exchanges.live import LIVE_LAG, MINUTE, Chunk, behind, describe, plan
from pipeline.fastlane import newest as stream_record
from pipeline.markets import Market
from pipeline.orchestration import tags
from pipeline.orchestration.jobs import live_job
from pipeline.orchestration.resources import ExchangeResource, SettingsResource

KLINES_ASSET = "klines_1m"  # assets/klines.py: the asset the live runs ingest into
MAX_ATTEMPTS = 5
ALIGN_S = 5.5  # the daemon's sensor loop period, plus a little
CLOSE_GRACE_S = 0.25  # let the exchange finish closing the candle
RECORD_WAIT_S = 1.0  # just after a close, how long to wait for the fast lane's record of it
RECORD_POLL_S = 0.05
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _warehouse_last(instance: dg.DagsterInstance) -> dict[str, dt.datetime]:
    """Per market (`bybit:BTCUSDT`), the newest open_time recorded on recent materializations."""
    out: dict[str, dt.datetime] = {}
    records = instance.fetch_materializations(dg.AssetKey(KLINES_ASSET), limit=20).records
    for rec in records:
        mat = rec.asset_materialization
        meta = mat.metadata.get("last_open_time") if mat else None
        for sym, iso in (meta.value if meta else {}).items():
            t = dt.datetime.fromisoformat(iso)
            if sym not in out or t > out[sym]:
                out[sym] = t
    return out


def _newest_closed(
    exchange: ExchangeResource, markets: list[Market], home: Path, exchange_now: dt.datetime
) -> tuple[dict[str, dt.datetime], str, str]:
    """Per market (`bybit:BTCUSDT`), its venue's newest closed candle: from the fast lane's
    record where it holds the minute just closed (waiting up to RECORD_WAIT_S for it right
    after a close), else over REST (quick clients), one request per market it lacks. Also
    how (`stream`, `rest` or `stream+rest`) and why REST was asked."""
    expected = exchange_now.replace(second=0, microsecond=0) - MINUTE
    names = [str(m) for m in markets]
    reading = stream_record.read(home, names, expected)
    just_closed = exchange_now - (expected + MINUTE) < dt.timedelta(seconds=ALIGN_S)
    deadline = time.monotonic() + RECORD_WAIT_S
    while reading.behind and just_closed and time.monotonic() < deadline:
        time.sleep(RECORD_POLL_S)
        reading = stream_record.read(home, names, expected)
    lacking = [m for m in markets if str(m) in reading.lacking]
    found = dict(reading.have)
    clients = {v: exchange.client(v, quick=True) for v in {m.exchange for m in lacking}}
    for m in lacking:
        t = clients[m.exchange].latest_closed_open_time(m.symbol)
        if t is not None:
            found[str(m)] = t
    how = "stream" if not lacking else "stream+rest" if reading.have else "rest"
    return found, how, reading.why


def _align_to_close(client) -> dt.datetime:
    """If the next minute closes before the next daemon tick, wait for it here. Returns the
    exchange's clock now (after any wait)."""
    now = time.time()
    server = client.server_time()
    offset = server.timestamp() - now
    if abs(offset) <= 2.0:  # else a replay clock running elsewhere in time: no alignment
        wait = 60 - ((now + offset) % 60) + CLOSE_GRACE_S
        if wait <= ALIGN_S:
            time.sleep(wait)
    return server + dt.timedelta(seconds=time.time() - now)


def live_job_sensor(every_s: int, description: str):
    """A sensor requesting `live_job` runs, evaluated every `every_s` seconds, on by itself."""
    return dg.sensor(
        job=live_job,
        minimum_interval_seconds=every_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=description,
    )


@live_job_sensor(
    1,
    "Requests a run for every newly closed 1m candle (catching up in day-sized "
    "chunks after downtime). Cursor: per market, the open_time of the last candle handed off.",
)
def live_candles(
    context: dg.SensorEvaluationContext, settings: SettingsResource, exchange: ExchangeResource
):
    s = settings.get()
    try:
        exchange_now = _align_to_close(exchange.client(quick=True))
        newest, how, why = _newest_closed(exchange, s.markets, s.home, exchange_now)
    except Exception as err:  # the exchange is down or misbehaving: try again next tick
        return dg.SkipReason(f"exchange unavailable ({type(err).__name__}: {err}); retrying")
    if not newest:
        return dg.SkipReason(f"the exchange reported no closed candle yet (detected: {how})")
    target = min(newest.values())
    checked_at = time.time()

    cursor = json.loads(context.cursor) if context.cursor else {}
    handed = {  # markets; a cursor from before venues names Bybit's symbols alone
        (k if ":" in k else f"bybit:{k}"): dt.datetime.fromisoformat(v)
        for k, v in cursor.get("symbols", {}).items()
    }
    # 1. Live runs that failed or were lost since the last tick: their chunks, again.
    retries = _failed_chunks(context.instance, float(cursor.get("checked_at", 0)))
    for chunk, attempt in retries:
        context.log.warning(f"retrying {chunk.start:%H:%M}→{chunk.end:%H:%M} (attempt {attempt})")
    # 2. New minutes, from the last one handed off. When nothing is in flight, every run handed
    #    off has ended and the warehouse is the truth: from its last candle, whether behind the
    #    cursor (runs lost with a wiped queue) or ahead of it (a backfill, `up`'s catch-up).
    in_flight = context.instance.get_runs(
        dg.RunsFilter(tags={tags.SENSOR: tags.LIVE_SENSOR}, statuses=IN_FLIGHT), limit=1
    )
    base = handed
    if not handed or (not in_flight and not retries):
        base = _warehouse_last(context.instance)
    # With an empty warehouse, start at midnight `history_days` back on the exchange's clock
    # (not the wall clock: a replay exchange may run in the past), so partitions are whole.
    today = dt.datetime.combine(target.date(), dt.time(), dt.UTC)
    default_start = today - dt.timedelta(days=s.live.history_days)
    markets = [str(m) for m in s.markets]
    resume = min(base.get(m, default_start - MINUTE) + MINUTE for m in markets)
    chunks = plan(target, resume, s.live.catchup_chunk_minutes)
    handed_now = {m: chunks[-1].end - MINUTE for m in markets} if chunks else base
    new_cursor = json.dumps(
        {"symbols": {k: v.isoformat() for k, v in handed_now.items()}, "checked_at": checked_at}
    )
    if not chunks and not retries:
        return dg.SensorResult(
            skip_reason=f"up to date: last candle {target:%Y-%m-%d %H:%M} UTC (detected: {how}"
            + (f"; {why})" if how != "stream" else ")"),
            cursor=new_cursor,
        )
    lag = behind(target, resume)
    mode = tags.LIVE if lag <= LIVE_LAG else tags.CATCHUP
    if chunks and mode == tags.CATCHUP:
        context.log.info(
            f"catching up: {describe(lag)} behind; requesting {len(chunks)} chunk(s) "
            f"{chunks[0].start:%Y-%m-%d %H:%M} → {chunks[-1].end:%Y-%m-%d %H:%M}"
        )
    requests = [_request(c, a, tags.RETRY, target, how) for c, a in retries]
    requests += [_request(c, 0, mode, target, how) for c in chunks]
    if how != "stream":
        context.log.info(f"newest candles detected: {how} ({why})")
    return dg.SensorResult(run_requests=requests, cursor=new_cursor)


def _request(c: Chunk, attempt: int, mode: str, newest: dt.datetime, how: str) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=c.run_key(attempt),
        partition_key=c.partition,
        run_config={
            "ops": {
                KLINES_ASSET: {"config": {"start": c.start.isoformat(), "end": c.end.isoformat()}},
                "signals": {"config": {"exchange_now": (newest + MINUTE).isoformat()}},
            }
        },
        tags={**tags.sensor_tags(mode, c.label, attempt), tags.DETECTED: how},
    )


def _failed_chunks(instance: dg.DagsterInstance, since: float) -> list[tuple[Chunk, int]]:
    """Chunks of live runs that failed (or were canceled) since `since`, with their next
    attempt number; a chunk that failed MAX_ATTEMPTS times is left to the gap repair."""
    if not since:
        return []
    records = instance.get_run_records(
        dg.RunsFilter(
            tags={tags.SENSOR: tags.LIVE_SENSOR},
            statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED],
            updated_after=dt.datetime.fromtimestamp(since, dt.UTC),
        ),
        limit=50,
    )
    out = []
    for rec in records:
        run = rec.dagster_run
        window = run.run_config.get("ops", {}).get(KLINES_ASSET, {}).get("config", {})
        if not window.get("start") or not window.get("end"):
            continue
        a, b = (dt.datetime.fromisoformat(window[k]) for k in ("start", "end"))
        attempt = int(run.tags.get(tags.ATTEMPT, "0")) + 1
        if attempt <= MAX_ATTEMPTS:
            out.append((Chunk(a, b), attempt))
    return out

"""The live sensor in-process, under `dg.build_sensor_context`, against a fake exchange.

The fake implements `pipeline.exchanges.protocol.Exchange` (its clock and newest closed candle
are whatever the test says, or it fails like a venue that is down); the sensor gets it through
its `exchange` resource, and a real (temporary) Dagster instance. No daemon, no sockets.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading
from typing import ClassVar

import dagster as dg
import pytest

from pipeline import jsonfile
from pipeline.exchanges.protocol import Exchange, ExchangeUnavailable
from pipeline.fastlane import newest as newest_record
from pipeline.orchestration.resources import SettingsResource
from sensors.live import MAX_ATTEMPTS, live_candles
from tests.daemon import write_config

MINUTE = dt.timedelta(minutes=1)
T0 = dt.datetime(2024, 1, 5, 3, 52, tzinfo=dt.UTC)  # the newest closed candle (open time)
SENSOR_TAGS = {"signalbox/sensor": "live_candles"}


class FakeExchange:
    """An `Exchange` whose newest closed candle is `newest` (its clock `since_close` seconds
    past that candle's close); with `down`, every call fails. `asked`: the symbols whose newest
    candle was asked for over REST."""

    name: ClassVar[str] = "bybit"

    def __init__(self, newest: dt.datetime, down: bool = False, since_close: float = 30) -> None:
        self.newest, self.down, self.calls = newest, down, 0
        self.since_close = since_close
        self.asked: list[str] = []

    def _call(self) -> None:
        self.calls += 1
        if self.down:
            raise ExchangeUnavailable("GET /v5/market/kline at fake: connection refused")

    def server_time(self) -> dt.datetime:
        self._call()
        return self.newest + MINUTE + dt.timedelta(seconds=self.since_close)

    def latest_closed_open_time(self, symbol: str) -> dt.datetime | None:
        self._call()
        self.asked.append(symbol)
        return self.newest

    def fetch_klines(self, symbol, start, end, *, closed_by=None):
        raise AssertionError("the sensor never fetches candles; its runs do")

    def instruments(self) -> list[str]:
        return ["BTCUSDT"]

    def unlisted(self, symbols: list[str]) -> dict[str, str]:
        return {}

    def stream(self, symbols, on_candle):
        raise AssertionError("the sensor does not stream")

    def close(self) -> None:
        pass


class FakeVenue:
    """Stands in for `ExchangeResource`: hands the sensor the fake client."""

    def __init__(self, fake: FakeExchange) -> None:
        self.fake = fake

    def client(self, venue: str = "bybit", *, quick: bool = False) -> Exchange:
        assert quick, "a sensor tick asks with a short timeout and no retries"
        return self.fake


@pytest.fixture
def settings(tmp_path) -> SettingsResource:
    return SettingsResource(config_path=str(write_config(tmp_path, history_days=0)))


@pytest.fixture
def instance():
    """An in-memory instance: runs and materializations, nothing on disk."""
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def tick(instance, settings, fake: FakeExchange, cursor: str | None = None):
    resources = {"settings": settings, "exchange": FakeVenue(fake)}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
        return live_candles(ctx)


def stored_up_to(instance, last_open: dt.datetime) -> None:
    """What a run that stored candles up to `last_open` records on the 1m asset."""
    meta = {"last_open_time": dg.MetadataValue.json({"bybit:BTCUSDT": last_open.isoformat()})}
    instance.report_runless_asset_event(
        dg.AssetMaterialization("klines_1m", partition=last_open.date().isoformat(), metadata=meta)
    )


def window(req: dg.RunRequest) -> tuple[dt.datetime, dt.datetime]:
    cfg = req.run_config["ops"]["klines_1m"]["config"]
    return dt.datetime.fromisoformat(cfg["start"]), dt.datetime.fromisoformat(cfg["end"])


def handed(result) -> dt.datetime:
    return dt.datetime.fromisoformat(json.loads(result.cursor)["symbols"]["bybit:BTCUSDT"])


def in_flight(instance, req: dg.RunRequest, status=dg.DagsterRunStatus.STARTED) -> None:
    """A run of the request, as the daemon would have launched it."""
    instance.create_run_for_job(
        dg.GraphDefinition("live").to_job(), run_config=None, tags=req.tags, status=status
    )


def test_the_cursor_advances_one_minute_per_closed_candle(instance, settings):
    stored_up_to(instance, T0 - MINUTE)
    first = tick(instance, settings, FakeExchange(T0))
    (req,) = first.run_requests
    assert window(req) == (T0, T0 + MINUTE)
    assert req.tags["signalbox/mode"] == "live" and req.partition_key == "2024-01-05"
    assert handed(first) == T0
    # The run is in flight (not yet stored): the next minute is planned from the cursor.
    in_flight(instance, req)
    second = tick(instance, settings, FakeExchange(T0 + MINUTE), first.cursor)
    (req2,) = second.run_requests
    assert window(req2) == (T0 + MINUTE, T0 + 2 * MINUTE)
    assert handed(second) == T0 + MINUTE
    # Nothing new at the exchange: nothing requested, the cursor stays.
    third = tick(instance, settings, FakeExchange(T0 + MINUTE), second.cursor)
    assert not third.run_requests and "up to date" in third.skip_reason.skip_message
    assert handed(third) == T0 + MINUTE


def test_a_long_outage_is_caught_up_in_day_sized_chunks(instance, settings):
    last = T0 - dt.timedelta(days=6)  # 2023-12-30 03:51 was the last candle stored
    stored_up_to(instance, last - MINUTE)
    first = tick(instance, settings, FakeExchange(T0))
    reqs = first.run_requests
    assert len(reqs) == 4  # at most four chunks a tick
    assert all(r.tags["signalbox/mode"] == "catchup" for r in reqs)
    days = ["2023-12-30", "2023-12-31", "2024-01-01", "2024-01-02"]
    assert [r.partition_key for r in reqs] == days
    spans = [window(r) for r in reqs]
    assert spans[0][0] == last
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # contiguous
    assert all(end.time() == dt.time() for _, end in spans)  # each ends at a midnight
    assert handed(first) == spans[-1][1] - MINUTE
    for r in reqs:
        in_flight(instance, r)
    second = tick(instance, settings, FakeExchange(T0), first.cursor)
    rest = [window(r) for r in second.run_requests]
    days = ["2024-01-03", "2024-01-04", "2024-01-05"]
    assert [r.partition_key for r in second.run_requests] == days
    assert rest[0][0] == spans[-1][1] and rest[-1][1] == T0 + MINUTE
    assert handed(second) == T0


def test_an_exchange_error_skips_the_tick_and_the_next_one_goes_on(instance, settings):
    stored_up_to(instance, T0 - MINUTE)
    down = FakeExchange(T0, down=True)
    result = tick(instance, settings, down)
    assert isinstance(result, dg.SkipReason)  # no cursor change: the next tick asks again
    assert "exchange unavailable (ExchangeUnavailable" in result.skip_message
    assert down.calls == 1  # one short question a tick; the tick itself is the retry
    again = tick(instance, settings, FakeExchange(T0))
    (req,) = again.run_requests
    assert window(req) == (T0, T0 + MINUTE)


def failed_run(instance, req: dg.RunRequest, attempt: int) -> None:
    """A run of the request that failed (its `attempt`-th retry)."""
    from dagster._core.utils import make_new_run_id

    tags = {**req.tags, "signalbox/attempt": str(attempt)} if attempt else dict(req.tags)
    run = dg.DagsterRun(
        job_name="live",
        run_id=make_new_run_id(),
        run_config=req.run_config,
        tags=tags,
        status=dg.DagsterRunStatus.FAILURE,
    )
    instance.add_run(run)


@pytest.mark.parametrize("attempts", [0, MAX_ATTEMPTS - 1, MAX_ATTEMPTS])
def test_a_failed_run_is_retried_with_its_attempt_number_until_the_limit(
    instance, settings, attempts
):
    stored_up_to(instance, T0 - MINUTE)
    first = tick(instance, settings, FakeExchange(T0))
    (req,) = first.run_requests
    in_flight(instance, req)  # nothing new is planned from the warehouse while it runs
    failed_run(instance, req, attempts)
    cursor = json.dumps({**json.loads(first.cursor), "checked_at": 1.0})
    second = tick(instance, settings, FakeExchange(T0), cursor)
    if attempts == MAX_ATTEMPTS:  # left to the gap repair
        assert not second.run_requests
        return
    (retry,) = second.run_requests
    assert retry.tags["signalbox/mode"] == "retry"
    assert retry.tags["signalbox/attempt"] == str(attempts + 1)
    assert window(retry) == (T0, T0 + MINUTE) and retry.run_key != req.run_key


# -- batched detection: the fast lane's record of its streams ------------------------------
THREE = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


@pytest.fixture
def three(tmp_path) -> SettingsResource:
    top = {"exchanges": {"bybit": THREE}}
    return SettingsResource(config_path=str(write_config(tmp_path, top, history_days=0)))


def stream_saw(home, newest: dict[str, dt.datetime], age_s: float = 0.0) -> None:
    """What the fast lane writes after its stream confirmed these candles, `age_s` ago."""
    newest_record.write(home, "bybit", newest, max(newest.values()) + MINUTE)
    if age_s:
        rec = json.loads(newest_record.path(home).read_text())
        rec["venues"]["bybit"]["written_at"] -= age_s
        jsonfile.replace(newest_record.path(home), rec)


def stored_all_up_to(instance, last_open: dt.datetime) -> None:
    meta = {f"bybit:{s}": last_open.isoformat() for s in THREE}
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "klines_1m",
            partition=last_open.date().isoformat(),
            metadata={"last_open_time": dg.MetadataValue.json(meta)},
        )
    )


def test_a_fresh_stream_record_replaces_rest_for_the_markets_it_holds(instance, three, tmp_path):
    stored_all_up_to(instance, T0 - MINUTE)
    # No record (no fast lane): every market over REST, and said.
    fake = FakeExchange(T0)
    (req,) = tick(instance, three, fake).run_requests
    assert sorted(fake.asked) == THREE and req.tags["signalbox/detected"] == "rest"
    # The stream confirmed two of the three: REST for the third only.
    stream_saw(tmp_path, {"BTCUSDT": T0, "ETHUSDT": T0})
    fake = FakeExchange(T0)
    (req,) = tick(instance, three, fake).run_requests
    assert fake.asked == ["SOLUSDT"] and req.tags["signalbox/detected"] == "stream+rest"
    assert window(req) == (T0, T0 + MINUTE)
    # All three: no REST request for a candle at all, the next minute found from the record.
    stream_saw(tmp_path, dict.fromkeys(THREE, T0 + MINUTE))
    fake = FakeExchange(T0 + MINUTE)
    result = tick(instance, three, fake, json.dumps({"symbols": {}}))
    (req,) = result.run_requests
    assert fake.asked == [] and req.tags["signalbox/detected"] == "stream"
    assert window(req)[1] == T0 + 2 * MINUTE
    in_flight(instance, req)
    up_to_date = tick(instance, three, FakeExchange(T0 + MINUTE), result.cursor)
    assert "detected: stream)" in up_to_date.skip_reason.skip_message


@pytest.mark.parametrize(
    ("age_s", "at", "reason"),
    [
        (120.0, T0, "bybit not updated for over 90 s"),  # the fast lane stopped writing
        (0.0, T0 - MINUTE, "3 market(s) not at 03:52 yet"),  # a minute behind the exchange
    ],
)
def test_a_stale_or_behind_record_is_not_trusted_and_rest_is_asked(
    instance, three, tmp_path, age_s, at, reason
):
    stored_all_up_to(instance, T0 - MINUTE)
    stream_saw(tmp_path, dict.fromkeys(THREE, at), age_s)
    fake = FakeExchange(T0)
    first = tick(instance, three, fake)
    (req,) = first.run_requests
    assert sorted(fake.asked) == THREE and req.tags["signalbox/detected"] == "rest"
    in_flight(instance, req)
    again = tick(instance, three, FakeExchange(T0), first.cursor)
    assert f"detected: rest; {reason})" in again.skip_reason.skip_message


def test_right_after_a_close_the_sensor_waits_briefly_for_the_record(instance, three, tmp_path):
    """The sensor looks 0.3 s after the close, before the fast lane wrote the minute: it waits
    (at most RECORD_WAIT_S) for the record instead of asking REST."""
    stored_all_up_to(instance, T0 - MINUTE)
    stream_saw(tmp_path, dict.fromkeys(THREE, T0 - MINUTE))
    later = threading.Timer(0.2, stream_saw, (tmp_path, dict.fromkeys(THREE, T0)))
    later.start()
    fake = FakeExchange(T0, since_close=0.3)
    try:
        (req,) = tick(instance, three, fake).run_requests
    finally:
        later.join()
    assert fake.asked == [] and req.tags["signalbox/detected"] == "stream"

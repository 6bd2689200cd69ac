"""Every run-tag key Signalbox reads or writes, once (Dagster's own ones included).

Tags are for people and filters in the UI; what code needs besides (a minute range, the
exchange's clock) travels in the run config.

`signalbox/mode` says what a run is, one word from `MODES`:
- `live`: the live sensor handing off the newest minute(s), at most `LIVE_LAG` behind;
- `catchup`: the live sensor catching up after downtime, in day-sized chunks;
- `retry`: the live sensor running a failed live or catch-up chunk again;
- `repair`: the daily re-ingest and the gap repair;
- `backfill`: `signalbox backfill` and `up`'s catch-up (one run over a range of days).

"Live" has ONE meaning: the mode is `live` (`is_live`): the newest minutes, where the
indicators check only the timeframe that changes every minute. Every run the live sensor
requests (live, catchup, retry) also carries `signalbox/sensor: live_candles` (`SENSOR`,
`from_sensor`): those run one at a time, in order (the instance's tag concurrency limit), log
no progress lines, hand new signals to the sidecar, and are purged after
`live.run_retention_days`. Before, both were spelt "live" (`signalbox/live: "1"` for the
second); `LEGACY_LIVE` still finds such runs in an existing instance.
"""

from __future__ import annotations

from collections.abc import Mapping

MODE = "signalbox/mode"
CANDLES = "signalbox/candles"  # the candles a live-sensor run ingests, "03:41–03:52"
ATTEMPT = "signalbox/attempt"  # a retry's attempt number
MISSING = "signalbox/missing_minutes"  # a gap repair: how many minutes were missing
SENSOR = "signalbox/sensor"  # runs requested by the live sensor (its concurrency limit)
DETECTED = "signalbox/detected"  # how the live sensor found the newest candles: stream|rest
LIVE_SENSOR = "live_candles"  # the value of SENSOR on those runs: the sensor's name
LEGACY_LIVE = ("signalbox/live", "1")  # what marked the sensor's runs before; purged too

LIVE, CATCHUP, RETRY, REPAIR, BACKFILL = "live", "catchup", "retry", "repair", "backfill"
MODES = (LIVE, CATCHUP, RETRY, REPAIR, BACKFILL)
SENSOR_MODES = (LIVE, CATCHUP, RETRY)  # the modes of runs the live sensor requests

# Dagster's own (dagster._core.storage.tags), which `dagster job execute` has no option for.
PARTITION = "dagster/partition"
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
MAX_RUNTIME = "dagster/max_runtime"


def is_live(tags: Mapping[str, str]) -> bool:
    """The newest minutes, every minute (mode `live`)."""
    return tags.get(MODE) == LIVE


def from_sensor(tags: Mapping[str, str]) -> bool:
    """A run the live sensor requested (live, catchup or retry): no progress lines, new
    signals to the sidecar."""
    return tags.get(SENSOR) == LIVE_SENSOR


def sensor_tags(mode: str, candles: str, attempt: int = 0) -> dict[str, str]:
    """The tags of a run the live sensor requests."""
    tags = {SENSOR: LIVE_SENSOR, MODE: mode, CANDLES: candles, MAX_RUNTIME: "900"}
    if attempt:
        tags[ATTEMPT] = str(attempt)
    return tags

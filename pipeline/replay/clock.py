"""The exchange clock: the wall clock by default, or a settable clock running at any speed.

Tests start the exchange in the past (say three minutes before midnight) and run it at 60x to
cross a day boundary in seconds; candles exist only up to this clock, and `/v5/market/time`
reports it. Rate-limit reset headers stay on the wall clock, because clients compare them
with their own wall clock.
"""

from __future__ import annotations

import datetime as dt
import threading
import time


def to_ms(value: dt.datetime | str | int | float) -> int:
    """Epoch ms from a datetime (naive = UTC), an ISO 8601 string or a number of ms."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            value = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a time: use ISO 8601 (e.g. 2024-01-01T23:57:00Z) or epoch ms"
            ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


def to_datetime(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


class ExchangeClock:
    """now = start + (elapsed wall time) x speed; `start=None, speed=1` is the wall clock."""

    def __init__(self, start: dt.datetime | str | int | None = None, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"clock speed must be positive, not {speed}")
        self._lock = threading.Lock()
        self._wall = start is None and speed == 1.0
        self._anchor_ms = to_ms(start) if start is not None else time.time() * 1000
        self._anchor_mono = time.monotonic()
        self.speed = float(speed)

    @property
    def is_wall(self) -> bool:
        return self._wall

    def now_ms(self) -> int:
        if self._wall:
            return int(time.time() * 1000)
        with self._lock:
            return int(self._anchor_ms + (time.monotonic() - self._anchor_mono) * 1000 * self.speed)

    def now(self) -> dt.datetime:
        return to_datetime(self.now_ms())

    def set(self, now: dt.datetime | str | int | None = None, speed: float | None = None) -> None:
        """Jump to `now` and/or change the speed (leaves wall-clock mode)."""
        if speed is not None and speed <= 0:
            raise ValueError(f"clock speed must be positive, not {speed}")
        current = self.now_ms()
        with self._lock:
            self._anchor_ms = to_ms(now) if now is not None else current
            self._anchor_mono = time.monotonic()
            if speed is not None:
                self.speed = float(speed)
            self._wall = False

    def advance(self, seconds: float) -> None:
        """Jump forward (or back, if negative) by `seconds` of exchange time."""
        self.set(self.now_ms() + int(seconds * 1000))

    def state(self) -> dict[str, object]:
        ms = self.now_ms()
        return {
            "now_ms": ms,
            "now": to_datetime(ms).isoformat(),
            "speed": self.speed,
            "wall": self._wall,
        }

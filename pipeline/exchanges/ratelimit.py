"""Pacing a client by the rate limit the exchange reports, so it stays under it.

Bybit answers every request with `X-Bapi-Limit` (requests per window for that endpoint),
`X-Bapi-Limit-Status` (requests left) and `X-Bapi-Limit-Reset-Timestamp` (epoch ms when the
window has room again once used up; otherwise the current time). `Pacer` keeps, per endpoint,
what the last answer said, counts the requests this client has sent since (threads share
one pacer) and lets a request go at once while some are left; only when none are left does
it sleep, until the reset timestamp. It never sleeps otherwise, and knows nothing before the
first answer (the first request of an endpoint always goes). A 10006 answer (`exhausted`)
leaves nothing until its reset, for every thread; the retry policy waits for the request
that got it (`retry.py`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# Longest wait the pacer takes from one header: a reset further away is the retry policy's
# business (it knows the budget); the pacer then lets the request go and the answer decides.
MAX_WAIT_S = 10.0


@dataclass
class _Budget:
    limit: int = 0
    left: int | None = None  # None: no answer yet (or no limit reported)
    reset_s: float = 0.0  # wall clock: when the window has room again once used up
    in_flight: int = 0
    probing: bool = False  # the window's reset passed and one request is out to see the room


class Pacer:
    """Per-endpoint budgets read from the exchange's headers; `slept_s` and `waits` say how
    much pacing cost (for tests and the bench)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._budgets: dict[str, _Budget] = {}
        self.slept_s = 0.0
        self.waits = 0

    def acquire(self, key: str) -> bool:
        """Wait (only) while `key` has no request left, then take one. True when this request
        is the probe that finds out how much room a window has after its reset (pass it to
        `release`)."""
        with self._cond:
            b = self._budgets.setdefault(key, _Budget())
            probe = False
            while b.left is not None and b.left <= 0:
                now = self._clock()
                if b.reset_s <= now and not b.probing and not b.in_flight:
                    probe = b.probing = True
                    break
                wait = b.reset_s - now if b.reset_s > now else MAX_WAIT_S  # or for an answer
                self.waits += 1
                t0 = time.monotonic()
                self._cond.wait(min(wait, MAX_WAIT_S))
                self.slept_s += time.monotonic() - t0
                if time.monotonic() - t0 >= MAX_WAIT_S:
                    break  # a longer wait is the retry policy's (the answer will say 10006)
            if b.left is not None and b.left > 0:
                b.left -= 1
            b.in_flight += 1
            return probe

    def _answered(
        self, key: str, headers: Mapping[str, str] | None, probe: bool
    ) -> tuple[_Budget, tuple[int, int, float] | None]:
        """Under the lock: one request of `key` is back; its budget and what its headers say."""
        b = self._budgets.setdefault(key, _Budget())
        b.in_flight = max(b.in_flight - 1, 0)
        if probe:
            b.probing = False
        return b, _parse(headers)

    def release(self, key: str, headers: Mapping[str, str] | None, probe: bool = False) -> None:
        """The answer to a request of `key` came (its headers, if any), or it failed.

        Answers of parallel requests arrive in any order, and requests still out may not be
        counted in an answer yet: what is left is the answer's count less those, and an answer
        only ever lowers it, except the probe's (the one request out after a reset)."""
        with self._cond:
            b, parsed = self._answered(key, headers, probe)
            if parsed is not None:
                b.limit, left, reset = parsed
                room = left - b.in_flight
                b.left = room if probe or b.left is None else min(b.left, room)
                if left <= 0:
                    b.reset_s = max(b.reset_s, reset)
            elif probe and b.left is not None and b.left <= 0:
                b.reset_s = self._clock()  # no answer to learn from: the next one probes
            self._cond.notify_all()

    def exhausted(self, key: str, headers: Mapping[str, str] | None, probe: bool = False) -> None:
        """A 10006 answer: nothing left until its reset timestamp (2 s if none was sent)."""
        with self._cond:
            b, parsed = self._answered(key, headers, probe)
            b.limit = parsed[0] if parsed else max(b.limit, 1)
            b.left = 0
            b.reset_s = max(b.reset_s, parsed[2] if parsed else self._clock() + 2.0)
            self._cond.notify_all()


def _parse(headers: Mapping[str, str] | None) -> tuple[int, int, float] | None:
    """(limit, left, reset in epoch seconds) from Bybit's headers, or None without them."""
    if not headers:
        return None
    try:
        limit = int(headers["X-Bapi-Limit"])
        left = int(headers["X-Bapi-Limit-Status"])
        reset = int(headers["X-Bapi-Limit-Reset-Timestamp"]) / 1000
    except (KeyError, TypeError, ValueError):
        return None
    return limit, left, reset

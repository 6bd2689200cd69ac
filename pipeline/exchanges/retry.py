"""The one retry policy of every venue's client, on tenacity.

A venue's client turns each failed request into one of the protocol's errors or a `Transient`
(worth another try), then `call` decides:

- transient failures are retried with exponential backoff and full jitter (a uniform wait in
  [0, min(cap, base * 2**(n-1))]), at most `max_retries` times and within `budget_s` seconds;
- a venue's rate-limit hint (`Transient.wait_s`, e.g. Bybit's reset timestamp) replaces the
  backoff; a hint reaching past the budget ends the call at once;
- `MalformedResponse` is retried at most `malformed_retries` times, then raised as is;
- a refused connection (nothing listens) fails fast: after 2 tries in a row, or at once with
  no retries allowed, with the venue's hint for starting an exchange;
- anything else (`InvalidRequest`, other `ExchangeError`s) is raised at once.

Whatever gives up raises `ExchangeUnavailable` naming what was asked, how often it was tried
and the last error.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pipeline.exchanges.protocol import ExchangeUnavailable, MalformedResponse

T = TypeVar("T")


class Transient(Exception):
    """A failure worth another try; `wait_s` when the venue said how long to wait, `refused`
    when nothing accepted the connection."""

    def __init__(self, reason: str, wait_s: float | None = None, refused: bool = False) -> None:
        super().__init__(reason)
        self.wait_s, self.refused = wait_s, refused


@dataclass(frozen=True)
class Policy:
    """How hard one call tries: retries, total seconds, malformed retries and the backoff."""

    max_retries: int = 8
    budget_s: float = 120.0
    malformed_retries: int = 3
    backoff_s: float = 0.2
    backoff_cap_s: float = 8.0

    def once(self, budget_s: float) -> Policy:
        """One attempt and no malformed retry, within `budget_s` (a cheap probe)."""
        return Policy(0, budget_s, 0, self.backoff_s, self.backoff_cap_s)


def backoff(policy: Policy, attempt: int, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff before retry number `attempt` (1-based)."""
    cap = min(policy.backoff_cap_s, policy.backoff_s * 2 ** (attempt - 1))
    return (rng or random).uniform(0, cap)


@dataclass
class _State:
    malformed: int = 0
    refused: int = 0
    failure: BaseException | None = None
    give_up: str = ""
    delay: float = 0.0
    t0: float = field(default_factory=time.monotonic)


def call(
    what: str,
    attempt: Callable[[], T],
    policy: Policy,
    *,
    url: str,
    hint: str,
) -> T:
    """`attempt()` under `policy`; `what` names the request and `url` the venue in errors."""
    from tenacity import RetryCallState, Retrying, retry_if_exception

    s = _State()

    def retryable(err: BaseException) -> bool:
        s.failure = err
        if isinstance(err, MalformedResponse):
            s.malformed += 1
            s.refused = 0
            return s.malformed <= policy.malformed_retries
        if isinstance(err, Transient):
            s.refused = s.refused + 1 if err.refused else 0
            return True
        return False

    def stop(rs: RetryCallState) -> bool:
        n, elapsed = rs.attempt_number, time.monotonic() - s.t0
        err = s.failure
        budget = policy.budget_s
        if s.refused >= 2 or (s.refused and policy.max_retries == 0):
            s.give_up = f"cannot reach the exchange at {url} for {what} ({err}); {hint}"
        elif n > policy.max_retries or elapsed >= budget:
            s.give_up = (
                f"{what}: still failing after {n} attempt(s) in {elapsed:.1f} s "
                f"(max_retries={policy.max_retries}, budget {budget:g} s); last error: {err}"
            )
        else:
            wait_s = err.wait_s if isinstance(err, Transient) else None
            if wait_s is not None:
                if elapsed + wait_s > budget:
                    s.give_up = (
                        f"{what}: rate limited for {wait_s:.1f} s more, beyond the retry "
                        f"budget of {budget:g} s; last error: {err}"
                    )
                    return True
                delay = wait_s + random.uniform(0, 0.05)
            else:
                delay = backoff(policy, n)
            s.delay = min(delay, max(budget - elapsed, 0.0))
        return bool(s.give_up)

    def give_up(rs: RetryCallState) -> Any:
        raise ExchangeUnavailable(s.give_up) from None

    retrying = Retrying(
        retry=retry_if_exception(retryable),
        stop=stop,
        wait=lambda rs: s.delay,
        retry_error_callback=give_up,
        reraise=True,
    )
    return retrying(attempt)


def until_ok(
    attempt: Callable[[], T],
    ok: Callable[[T], bool],
    attempts: int,
    policy: Policy,
    on_retry: Callable[[T, int], None] | None = None,
) -> T:
    """Call `attempt` until `ok(result)` or `attempts` calls, with the same backoff; the last
    result (for probes, whose failures are answers rather than exceptions)."""
    from tenacity import Retrying, retry_if_result, stop_after_attempt

    def before_sleep(rs: Any) -> None:
        if on_retry:
            on_retry(rs.outcome.result(), rs.attempt_number)

    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=lambda rs: backoff(policy, rs.attempt_number),
        retry=retry_if_result(lambda r: not ok(r)),
        before_sleep=before_sleep,
        retry_error_callback=lambda rs: rs.outcome.result(),
    )
    return retrying(attempt)

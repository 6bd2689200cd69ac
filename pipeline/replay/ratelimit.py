"""The replay's Bybit rate limit: `limit` requests per rolling `window_s` per client IP and
endpoint, reported on every market answer in Bybit's headers and enforced with retCode 10006.

Bybit documents its API limit as a rolling window per second per endpoint, reported as
`X-Bapi-Limit` (the limit), `X-Bapi-Limit-Status` (requests left) and
`X-Bapi-Limit-Reset-Timestamp` (epoch ms when the limit resets once exceeded, else the current
time). The replay reads "exceeded" as "used up": once no request is left, the reset timestamp
says when the oldest request of the window leaves it, i.e. when the next one may go, so a
client can pace itself without ever hitting the limit. A refused request does not count.
Times are the wall clock (a client sleeps in real time whatever the exchange clock says).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

DEFAULT_LIMIT = 600  # requests per window, per IP and endpoint: generous for loopback tests
DEFAULT_WINDOW_S = 1.0


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    headers: dict[str, str]


class RateLimit:
    """Sliding-window counters keyed by (client IP, endpoint path); thread-safe."""

    def __init__(self, limit: int = DEFAULT_LIMIT, window_s: float = DEFAULT_WINDOW_S) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], deque[float]] = {}
        self.configure(limit, window_s)

    def configure(self, limit: int | None = None, window_s: float | None = None) -> dict:
        """Change the limit (0: unlimited, no headers) and window; forgets what was counted."""
        with self._lock:
            if limit is not None:
                if limit < 0:
                    raise ValueError(f"rate limit must be 0 (off) or more, not {limit}")
                self.limit = int(limit)
            if window_s is not None:
                if not window_s > 0:
                    raise ValueError(f"rate limit window must be above 0 s, not {window_s}")
                self.window_s = float(window_s)
            self._seen.clear()
        return self.state()

    def state(self) -> dict:
        return {"limit": self.limit, "window_s": self.window_s}

    def check(self, ip: str, path: str, now: float | None = None) -> Verdict:
        """Count one request of `ip` to `path` if the window has room; the headers to send."""
        if not self.limit:
            return Verdict(True, {})
        now = time.time() if now is None else now
        with self._lock:
            seen = self._seen.setdefault((ip, path), deque())
            while seen and seen[0] <= now - self.window_s:
                seen.popleft()
            allowed = len(seen) < self.limit
            if allowed:
                seen.append(now)
            left = self.limit - len(seen)
            reset = seen[0] + self.window_s if left == 0 else now
        headers = {
            "X-Bapi-Limit": str(self.limit),
            "X-Bapi-Limit-Status": str(left),
            "X-Bapi-Limit-Reset-Timestamp": str(int(reset * 1000) + (1 if left == 0 else 0)),
        }
        return Verdict(allowed, headers)

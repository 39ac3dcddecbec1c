"""A global bandwidth cap (``upload.max_mbps``) as a token bucket shared by every upload worker.

The bucket works by reservation: a caller takes its bytes at once, possibly driving the balance
negative, and then waits for the debt to be repaid at the configured rate. Callers are served in
the order they arrive, the total sent over any interval T is at most ``burst + rate * T``, and a
request larger than the burst is simply a longer wait (no chunk size limit).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: 1 Mbps (decimal megabit per second) in bytes per second.
BYTES_PER_S_PER_MBPS = 125_000
#: Default burst: a tenth of a second of traffic, at least 64 KiB. It only lets a sender that
#: paused (reading, hashing) catch up a little; it does not limit the size of one consume().
DEFAULT_BURST_S = 0.1
MIN_BURST_BYTES = 64 * 1024


class TokenBucket:
    """Blocks consume(n) until n bytes fit under the rate; unlimited when the rate is None or 0."""

    def __init__(self, rate_bytes_per_s: float | None, *, burst_bytes: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate_bytes_per_s is not None and rate_bytes_per_s < 0:
            raise ValueError(f"rate_bytes_per_s must be >= 0, got {rate_bytes_per_s}")
        self.rate_bytes_per_s = float(rate_bytes_per_s) if rate_bytes_per_s else None
        if self.rate_bytes_per_s is None:
            self.burst_bytes = 0.0
        elif burst_bytes is not None:
            if burst_bytes <= 0:
                raise ValueError(f"burst_bytes must be > 0, got {burst_bytes}")
            self.burst_bytes = float(burst_bytes)
        else:
            self.burst_bytes = max(self.rate_bytes_per_s * DEFAULT_BURST_S, MIN_BURST_BYTES)
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        # Start empty, so that a measured transfer never beats the cap, even for its first second.
        self._tokens = 0.0
        self._updated = clock()

    @classmethod
    def from_mbps(cls, max_mbps: float | None, **kwargs) -> TokenBucket:
        """A bucket for a cap in decimal megabits per second (1 Mbps = 125,000 bytes/s)."""
        rate = max_mbps * BYTES_PER_S_PER_MBPS if max_mbps else None
        return cls(rate, **kwargs)

    @property
    def limited(self) -> bool:
        return self.rate_bytes_per_s is not None

    def consume(self, n: int, *, cancel: threading.Event | None = None) -> bool:
        """Wait until n bytes may be sent; thread-safe. False only if cancel was set while waiting.

        With ``cancel`` the wait ends early when the event is set (shutdown), so a slow cap never
        holds a SIGTERM past systemd's stop timeout; the reserved bytes stay reserved, which only
        makes the cap stricter.
        """
        wait_s = self.reserve(n)
        if wait_s <= 0:
            return True
        if cancel is not None:
            return not cancel.wait(wait_s)
        self._sleep(wait_s)
        return True

    def reserve(self, n: int) -> float:
        """Take n bytes now and return how long the caller must wait before sending them."""
        if self.rate_bytes_per_s is None or n <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._updated)
            self._updated = now
            self._tokens = min(self.burst_bytes, self._tokens + elapsed * self.rate_bytes_per_s)
            self._tokens -= n
            if self._tokens >= 0:
                return 0.0
            return -self._tokens / self.rate_bytes_per_s

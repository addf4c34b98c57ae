"""Token buckets per client, for the HTTP door (the socket's clients are the user's own processes and
are not limited). Pure: the caller passes the clock."""

from __future__ import annotations

import math


class TokenBucket:
    """`rate` tokens per second up to `burst`; a request takes one."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, now

    def take(self, now: float) -> float:
        """0 when the request may go on; otherwise the seconds until one token will be there."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per client identity. At most `max_clients` buckets are kept: past that, the buckets
    that have filled up again (clients that have been quiet) are forgotten, which changes nothing for
    them; if none has, the oldest goes."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = 10_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: dict[str, TokenBucket] = {}
        self.limited = 0

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, client: str, now: float) -> float:
        """0 when `client` may go on, else the Retry-After seconds (rounded up, at least 1)."""
        if not self.enabled:
            return 0.0
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._forget_quiet(now)
            bucket = self._buckets[client] = TokenBucket(self.rate, self.burst, now)
        wait = bucket.take(now)
        if wait == 0.0:
            return 0.0
        self.limited += 1
        return float(max(1, math.ceil(wait)))

    def _forget_quiet(self, now: float) -> None:
        full = [c for c, b in self._buckets.items() if b.tokens + (now - b.at) * b.rate >= b.burst]
        for client in full or [next(iter(self._buckets))]:
            del self._buckets[client]

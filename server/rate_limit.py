"""Per-caller rate limits: a token bucket per key (a token's fingerprint, or a peer address).

A bucket holds up to `burst` requests and refills at `rate` per second. A unary call takes one
or is refused with the time until one is there (`try_take`); a stream frame waits for its turn
instead (`wait`), so a fast camera is slowed by gRPC flow control rather than cut off. Waiting
frames reserve ahead (the bucket goes below zero), so streams and unary calls of one key share
the same rate and queue fairly.

Keys are bounded: beyond `max_keys` the least recently seen key is forgotten (a forgotten key
starts again with a full bucket), so many distinct peers cannot grow memory without end.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable

MAX_KEYS = 10_000


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive number of requests/s, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self._stamp = now

    def _refill(self, now: float) -> None:
        elapsed = max(now - self._stamp, 0.0)
        self.tokens = min(self.tokens + elapsed * self.rate, float(self.burst))
        self._stamp = now

    def try_take(self, now: float) -> float:
        """0.0 when a request was taken, else the seconds until one will be there."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def reserve(self, now: float) -> float:
        """Take one request now or in the future: the seconds to wait before using it."""
        self._refill(now)
        self.tokens -= 1.0
        return max(-self.tokens, 0.0) / self.rate


class RateLimiter:
    """Token buckets by key, the `max_keys` most recently seen kept."""

    def __init__(self, rate: float, burst: int | None = None, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        # Default burst: one second's worth, so a steady caller at the rate is never refused.
        self.burst = burst if burst is not None else max(1, math.ceil(rate))
        TokenBucket(rate, self.burst, 0.0)  # the same checks, at construction
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def try_take(self, key: str) -> float:
        """0.0: allowed. Else refused, and the value is the seconds until a retry can pass."""
        now = self._clock()
        return self._bucket(key, now).try_take(now)

    async def wait(self, key: str) -> None:
        """Return once `key` may send one more request (a stream frame's turn)."""
        now = self._clock()
        bucket = self._bucket(key, now)
        delay_s = bucket.reserve(now)
        if delay_s <= 0:
            return
        try:
            await asyncio.sleep(delay_s)  # the throttle itself: this is the time being limited
        except asyncio.CancelledError:
            bucket.tokens += 1.0  # the turn was never used (the stream ended or the server drains)
            raise

"""Token buckets and the keyed limiter, on a clock the test moves (no sleeps, exact values)."""

from __future__ import annotations

import asyncio

import pytest

from detserve.server.rate_limit import RateLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.try_take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take(0.0) == pytest.approx(0.5)  # one request refills in 1/rate s
    assert bucket.try_take(0.25) == pytest.approx(0.25)
    assert bucket.try_take(0.5) == 0.0
    # Idle time refills up to the burst, never beyond it.
    assert [bucket.try_take(100.0) for _ in range(4)][3] == pytest.approx(0.5)


def test_reservations_queue_behind_each_other() -> None:
    bucket = TokenBucket(rate=10.0, burst=1, now=0.0)
    assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.0) == pytest.approx(0.1)
    assert bucket.reserve(0.0) == pytest.approx(0.2)
    # A unary call behind two reserved turns waits for them and its own.
    assert bucket.try_take(0.0) == pytest.approx(0.3)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (float("inf"), 1), (1.0, 0)])
def test_bad_rates_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


def test_limiter_keeps_a_bucket_per_key_and_forgets_the_least_recent() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=2, clock=clock)
    assert limiter.try_take("a") == 0.0
    assert limiter.try_take("b") == 0.0
    assert limiter.try_take("a") == pytest.approx(1.0)  # a's own bucket is empty; b is not
    limiter.try_take("c")  # a third key: the least recently seen ("b") is forgotten
    assert len(limiter) == 2
    assert limiter.try_take("a") == pytest.approx(1.0)  # a was seen last: still tracked
    assert limiter.try_take("b") == 0.0  # forgotten, so it starts full again


def test_default_burst_is_one_second_of_the_rate() -> None:
    assert RateLimiter(rate=7.5).burst == 8
    assert RateLimiter(rate=0.2).burst == 1


async def test_wait_returns_at_once_within_the_burst_and_refunds_a_cancelled_turn() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=0.001, burst=1, clock=clock)  # a turn every 1000 s
    await asyncio.wait_for(limiter.wait("k"), 1.0)  # within the burst: no wait
    waiting = asyncio.create_task(limiter.wait("k"))
    await asyncio.sleep(0)
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    clock.now += 1000.0  # one turn refilled; the cancelled one was given back
    assert limiter.try_take("k") == 0.0

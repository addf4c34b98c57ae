"""The HTTP door's token buckets, on a clock the test moves."""

from __future__ import annotations

from qmdd.transports.ratelimit import RateLimiter, TokenBucket


def test_a_bucket_allows_its_burst_then_one_per_interval() -> None:
    bucket = TokenBucket(rate=1.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == 1.0
    assert bucket.take(0.5) == 0.5  # half a token came back
    assert bucket.take(1.0) == 0.0
    assert bucket.take(100.0) == 0.0 and bucket.tokens == 2.0  # refills to the burst, no further


def test_the_seed_defaults_sixty_a_minute_burst_ten() -> None:
    limiter = RateLimiter(per_minute=60, burst=10)
    assert [limiter.check("a", 0.0) for _ in range(10)] == [0.0] * 10
    assert limiter.check("a", 0.0) == 1.0 and limiter.limited == 1
    assert limiter.check("b", 0.0) == 0.0  # another client has its own bucket
    assert limiter.check("a", 1.0) == 0.0
    assert limiter.check("a", 1.2) == 1.0  # Retry-After is whole seconds, at least 1


def test_zero_turns_limiting_off() -> None:
    limiter = RateLimiter(per_minute=0, burst=10)
    assert not limiter.enabled
    assert all(limiter.check("a", 0.0) == 0.0 for _ in range(1000))


def test_the_number_of_buckets_is_bounded() -> None:
    limiter = RateLimiter(per_minute=60, burst=2, max_clients=100)
    for i in range(1000):
        limiter.check(f"client{i}", float(i))
        assert len(limiter._buckets) <= 100

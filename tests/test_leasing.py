"""LeasingBucketStore: amortized round trips, the overshoot bound, what is passed through.

Deterministic: the shared bucket is a MemoryBucketStore on a FakeClock, and
several LeasingBucketStore instances over it stand for several processes.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilience as rs
from resilience._core.bucket import BucketSpec
from resilience.ratelimit import RateLimiter
from resilience.storage.buckets import BucketRequest, MemoryBucketStore
from resilience.storage.leasing import LeasingBucketStore
from resilience.testing import FakeClock


def test_options_are_checked() -> None:
    with pytest.raises(rs.ConfigurationError, match="lease"):
        LeasingBucketStore(MemoryBucketStore(), lease=0)
    with pytest.raises(rs.ConfigurationError, match="inner"):
        LeasingBucketStore(object(), lease=5)  # type: ignore[arg-type]
    assert "lease=5" in repr(LeasingBucketStore(MemoryBucketStore(), lease=5))


def test_round_trips_are_amortized() -> None:
    clock = FakeClock()
    store = LeasingBucketStore(MemoryBucketStore(clock), lease=20)
    limiter = RateLimiter("api", rate=1000, per=1.0, burst=100, store=store, clock=clock)
    for _ in range(1000):
        assert limiter.try_acquire()
        clock.advance(0.001)
    assert store.round_trips <= 1000 / 20 + 1
    assert store.local_grants >= 1000 - 1000 / 20 - 1


def test_an_empty_bucket_refuses_with_the_retry_after_of_the_cost() -> None:
    clock = FakeClock()
    inner = MemoryBucketStore(clock)
    store = LeasingBucketStore(inner, lease=4)
    spec = BucketSpec.of(rate=1, per=1.0, burst=4)
    one = [BucketRequest("a", None, 1, spec)]
    assert all(store.bucket_take(one).granted for _ in range(4))  # one batch of 4
    assert store.round_trips == 1
    refused = store.bucket_take(one)
    assert not refused.granted and refused.retry_after == 1.0  # one token, not four
    clock.advance(2.0)
    assert store.bucket_take(one).granted  # a smaller batch: the 2 tokens there
    assert store.held("a") == 1
    assert inner.bucket_tokens("a", None, spec) == 0.0


async def test_composites_and_reservations_pass_through() -> None:
    clock = FakeClock()
    inner = MemoryBucketStore(clock)
    store = LeasingBucketStore(inner, lease=3)
    spec = BucketSpec.of(rate=1, per=1.0, burst=3)
    both = [BucketRequest("a", None, 1, spec), BucketRequest("b", None, 1, spec)]
    assert store.bucket_take(both).granted
    assert await store.abucket_take(both)
    assert store.held("a") == store.held("b") == 0  # nothing leased
    assert inner.bucket_tokens("a", None, spec) == 1.0
    big = [BucketRequest("c", None, 3, spec)]
    store.lease = 2
    assert store.bucket_take(big).granted and store.held("c") == 0  # cost > lease
    # A reservation: the batch is refused, the inner store queues the request.
    reserved = store.bucket_take(big, max_wait=10.0)
    assert reserved.granted and reserved.wait == 3.0
    store.bucket_refund(big, reserved.reserved)
    await store.abucket_refund(big, reserved.reserved)
    assert inner.bucket_tokens("c", None, spec) == 0.0


async def test_async_leasing_and_penalize_drops_leased_tokens() -> None:
    clock = FakeClock()
    inner = MemoryBucketStore(clock)
    store = LeasingBucketStore(inner, lease=5)
    limiter = RateLimiter("api", rate=1, per=1.0, burst=10, store=store, clock=clock)
    await limiter.aacquire()
    assert store.held("api") == 4
    assert await limiter.atokens() == 9.0  # 5 left in the bucket + 4 held here
    assert limiter.tokens() == 9.0
    await limiter.apenalize(5.0)
    assert store.held("api") == 0
    assert not limiter.try_acquire()
    limiter.penalize(1.0)
    with pytest.raises(rs.RateLimitExceeded):
        await limiter.aacquire(timeout=0)
    clock.advance(6.0)
    assert await store.abucket_take([BucketRequest("api", None, 1, limiter._spec)])


def test_lease_one_is_the_exact_limit() -> None:
    clock = FakeClock()
    store = LeasingBucketStore(MemoryBucketStore(clock), lease=1)
    limiter = RateLimiter("api", rate=1, per=1.0, burst=2, store=store, clock=clock)
    assert [limiter.try_acquire() for _ in range(3)] == [True, True, False]
    assert store.held("api") == 0


@settings(max_examples=200, deadline=None)
@given(
    lease=st.integers(1, 6),
    burst=st.integers(1, 8),
    steps=st.lists(
        st.tuples(
            st.integers(0, 3), st.sampled_from([0.0, 0.0, 0.01, 0.1, 0.5]), st.integers(1, 3)
        ),
        min_size=1,
        max_size=150,
    ),
)
def test_overshoot_never_exceeds_instances_times_lease_minus_one(
    lease: int, burst: int, steps: list[tuple[int, float, int]]
) -> None:
    """In every window of time, uses <= burst + rate * length + instances * (lease - 1)."""
    rate = 10.0
    clock = FakeClock()
    inner = MemoryBucketStore(clock)
    instances = [LeasingBucketStore(inner, lease=lease) for _ in range(4)]
    spec = BucketSpec.of(rate, 1.0, burst)
    uses: list[float] = []
    for which, advance, cost in steps:
        clock.advance(advance)
        cost = min(cost, burst)
        if instances[which].bucket_take([BucketRequest("shared", None, cost, spec)]).granted:
            uses.extend([clock.now()] * cost)
    allowance = len(instances) * (lease - 1)
    for i, first in enumerate(uses):
        for j in range(i, len(uses)):
            used = j - i + 1
            bound = burst + rate * (uses[j] - first) + allowance
            assert used <= bound + 1e-6 * math.ceil(bound), (used, bound)

"""Hypothesis properties of RateLimiter itself, driven on a FakeClock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import resilience as rs
from resilience._core.bucket import SLACK
from resilience.ratelimit import RateLimiter
from resilience.storage.buckets import MemoryBucketStore
from resilience.testing import FakeClock

# One operation: let time pass, then try, wait (with a timeout), or penalize.
operations = st.lists(
    st.tuples(
        st.floats(0, 2, allow_nan=False),  # seconds to advance first
        st.sampled_from(["try", "acquire", "acquire", "penalize"]),
        st.sampled_from([None, "a", "b"]),  # key
        st.integers(1, 4),  # cost
        st.sampled_from([0.0, 0.3, 5.0]),  # timeout, or pause for penalize
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(
    rate=st.sampled_from([1, 5, 10]),
    per=st.sampled_from([1.0, 2.0]),
    burst=st.integers(4, 8),
    plan=operations,
)
def test_granted_tokens_per_key_stay_within_the_bound(rate, per, burst, plan) -> None:
    clock = FakeClock()
    limiter = RateLimiter("prop", rate=rate, per=per, burst=burst, clock=clock)
    grants: dict[str | None, list[tuple[float, int]]] = {}
    for advance, action, key, cost, seconds in plan:
        clock.advance(advance)
        if action == "penalize":
            limiter.penalize(seconds, key=key)
            continue
        if action == "try":
            granted = limiter.try_acquire(key, cost)
        else:
            try:
                limiter.acquire(key, cost, timeout=seconds)
                granted = True
            except rs.RateLimitExceeded as error:
                assert error.retry_after is not None and error.retry_after > seconds
                granted = False
        tokens = limiter.tokens(key)
        assert 0.0 <= tokens <= burst
        if granted:
            grants.setdefault(key, []).append((clock.now(), cost))  # after any wait
    for times in grants.values():
        times.sort()
        for i, (t0, _) in enumerate(times):
            taken = 0
            for t1, cost in times[i:]:
                taken += cost
                assert taken <= burst + rate / per * (t1 - t0) + 10 * SLACK


@settings(max_examples=150, deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.floats(0, 1, allow_nan=False), st.sampled_from(["x", "y"]), st.integers(1, 3)),
        max_size=40,
    )
)
def test_composite_never_consumes_partially(plan) -> None:
    clock = FakeClock()
    store = MemoryBucketStore(clock)
    total = RateLimiter("total", rate=6, per=1.0, burst=6, store=store)
    each = RateLimiter("each", rate=2, per=1.0, burst=3, store=store)
    for advance, key, cost in plan:
        clock.advance(advance)
        before = (total.tokens(), each.tokens(key))
        both = RateLimiter.all(total.limit(cost=cost), each.limit(key, cost=cost))
        if both.try_acquire():
            assert abs(total.tokens() - (before[0] - cost)) < 1e-9
            assert abs(each.tokens(key) - (before[1] - cost)) < 1e-9
        else:
            assert (total.tokens(), each.tokens(key)) == before
            assert min(before) < cost + 1e-9


@settings(max_examples=150, deadline=None)
@given(
    rate=st.sampled_from([1, 3, 7]),
    burst=st.integers(1, 5),
    used=st.integers(0, 12),
    gap=st.floats(0, 3, allow_nan=False),
    cost=st.integers(1, 5),
)
def test_retry_after_is_exact_on_the_clock(rate, burst, used, gap, cost) -> None:
    clock = FakeClock(1000.0)
    limiter = RateLimiter("exact", rate=rate, per=1.0, burst=burst, clock=clock)
    cost = min(cost, burst)
    for _ in range(used):
        limiter.try_acquire()
    clock.advance(gap)
    try:
        limiter.acquire(cost=cost, timeout=0)
    except rs.RateLimitExceeded as error:
        assert error.retry_after is not None
        clock.advance(error.retry_after)
        assert limiter.try_acquire(cost=cost)

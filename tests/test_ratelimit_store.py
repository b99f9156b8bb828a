"""The bucket store protocol, idle eviction, telemetry events and use with Retry."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

import resilience as rs
from resilience._core.bucket import BucketSpec, Decision
from resilience.ratelimit import RateLimiter
from resilience.storage import LeasingBucketStore, MemoryStore, buckets
from resilience.storage.buckets import BucketRequest, BucketStore, FastTake, MemoryBucketStore
from resilience.telemetry import events, subscribe
from resilience.testing import FakeClock


def test_memory_store_implements_the_protocol_and_the_fast_take_capability() -> None:
    clock = FakeClock()
    store = MemoryBucketStore(clock)
    assert isinstance(store, BucketStore)
    assert not isinstance(object(), BucketStore)
    assert isinstance(store, FastTake) and store.clock is clock
    assert "buckets=0" in repr(store)
    # The fast path answers as a one-request take with max_wait=0 would.
    spec = BucketSpec.of(rate=1, per=1.0, burst=2)
    fast = store.bucket_fast_take("x", spec)
    assert fast.clock is clock
    assert [fast.take("k"), fast.take("k"), fast.take("k")] == [True, True, False]
    assert not store.bucket_take((BucketRequest("x", "k", 1, spec),)).granted
    clock.advance(1.0)
    assert fast.take("k")


def test_only_in_process_stores_offer_the_fast_take() -> None:
    inner = MemoryBucketStore()
    assert not isinstance(LeasingBucketStore(inner, lease=5), FastTake)
    assert isinstance(MemoryStore(), FastTake)
    # A limiter uses the capability, whatever the store's class: no failure policy.
    limiter = RateLimiter("x", rate=1, store=inner)
    assert limiter._take_one is not None and limiter._store is inner
    leased = RateLimiter("y", rate=1, store=LeasingBucketStore(inner, lease=5))
    assert leased._take_one is None and leased._store is not leased.store


async def test_store_take_is_one_atomic_call_over_several_buckets() -> None:
    clock = FakeClock()
    store = MemoryBucketStore(clock)
    spec = BucketSpec.of(rate=1, per=1.0, burst=2)
    both = [BucketRequest("a", None, 2, spec), BucketRequest("b", "k", 1, spec)]
    assert store.bucket_take(both).granted
    decision = store.bucket_take(both)
    assert not decision.granted and decision.retry_after == 2.0
    assert store.bucket_tokens("b", "k", spec) == 1.0  # untouched by the refusal
    reserved = await store.abucket_take(both, max_wait=5.0)
    assert reserved == Decision(True, 2.0, 0.0, 0.0, reserved=((2.0, 4.0), (1.0, 3.0)))
    assert store.bucket_tokens("b", "k", spec) == 0.0
    store.bucket_refund(both, reserved.reserved)
    assert store.bucket_tokens("b", "k", spec) == 1.0  # back to where it was
    store.bucket_take(both[1:])
    await store.abucket_refund(both, reserved.reserved)  # taken since: no refund
    assert store.bucket_tokens("b", "k", spec) == 0.0
    await store.abucket_penalize("a", None, spec, 10.0)
    assert await store.abucket_tokens("a", None, spec) == 0.0


def test_idle_buckets_are_evicted_as_new_keys_arrive() -> None:
    clock = FakeClock()
    store = MemoryBucketStore(clock)
    limiter = RateLimiter("per-user", rate=1, per=1.0, burst=1, store=store)
    # One new key every 10 ms, each bucket full again after 1 s: ~100 are live at a time.
    for i in range(20_000):
        assert limiter.try_acquire(f"user-{i}")
        clock.advance(0.01)
    assert store.bucket_count("per-user") <= 2 * buckets.SWEEP_FLOOR
    # Evicting never changes an answer: a returning key finds a full bucket.
    assert limiter.try_acquire("user-0")


def test_live_buckets_are_kept_and_full_ones_can_be_dropped_at_once() -> None:
    clock = FakeClock()
    store = MemoryBucketStore(clock)
    limiter = RateLimiter("per-user", rate=1, per=60.0, burst=1, store=store)
    for i in range(3_000):
        limiter.try_acquire(f"user-{i}")
    assert store.bucket_count() == 3_000  # all still refilling: nothing may go
    assert not limiter.try_acquire("user-7")
    clock.advance(60.0)
    assert store.evict_idle_buckets() == 3_000
    assert store.bucket_count("per-user") == 0
    assert store.bucket_count("nobody") == 0


def test_events_on_wait_and_rejection() -> None:
    clock = FakeClock()
    seen: list[events.Event] = []
    unsubscribe = subscribe(seen.append)
    try:
        limiter = RateLimiter("api", rate=1, per=1.0, burst=1, clock=clock)
        limiter.acquire("k")
        limiter.acquire("k")
        assert not limiter.try_acquire("k")
        with pytest.raises(rs.RateLimitExceeded):
            limiter.acquire("k", timeout=0)
    finally:
        unsubscribe()
    ours = [event for event in seen if event.policy == "api"]
    assert ours == [
        events.RateLimitWaited("api", 1.0, "k"),
        events.RateLimitRejected("api", None, "k"),
        events.RateLimitRejected("api", 1.0, "k"),
    ]


def test_retry_waits_out_the_limiters_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter("api", rate=1, per=2.0, burst=1, clock=clock)
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(0.1), clock=clock)
    calls: list[float] = []

    @retry
    def send() -> str:
        limiter.acquire(timeout=0)  # refuse rather than wait: the retry decides
        calls.append(clock.now())
        return "sent"

    assert send() == "sent"
    assert send() == "sent"
    assert clock.sleeps == [2.0]  # the limiter's exact retry_after, not the 0.1 s backoff
    assert calls == [0.0, 2.0]
    assert rs.classify(rs.RateLimitExceeded("api", 2.0)).error_class is rs.ErrorClass.RATE_LIMITED


class CountingStore(MemoryBucketStore):
    """A store seen only through the protocol: the limiter cannot take the fast path."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.calls = 0

    def bucket_take(self, requests: Sequence[BucketRequest], max_wait: float = 0.0) -> Decision:
        self.calls += 1
        return super().bucket_take(requests, max_wait)


class ProtocolOnly:
    """Forwards the protocol to a memory store, but not its FastTake capability."""

    def __init__(self, clock: FakeClock) -> None:
        self.inner = CountingStore(clock)

    def __getattr__(self, name: str) -> object:
        if name == "bucket_fast_take":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def bucket_take(self, requests: Sequence[BucketRequest], max_wait: float = 0.0) -> Decision:
        return self.inner.bucket_take(requests, max_wait)

    async def abucket_take(
        self, requests: Sequence[BucketRequest], max_wait: float = 0.0
    ) -> Decision:
        return self.inner.bucket_take(requests, max_wait)

    def bucket_penalize(self, name: str, key: str | None, spec: BucketSpec, seconds: float) -> None:
        self.inner.bucket_penalize(name, key, spec, seconds)

    async def abucket_penalize(
        self, name: str, key: str | None, spec: BucketSpec, seconds: float
    ) -> None:
        self.inner.bucket_penalize(name, key, spec, seconds)

    def bucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        return self.inner.bucket_tokens(name, key, spec)

    async def abucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        return self.inner.bucket_tokens(name, key, spec)


async def test_any_store_gets_one_call_per_acquisition() -> None:
    clock = FakeClock()
    store = ProtocolOnly(clock)
    limiter = RateLimiter("api", rate=1, per=1.0, burst=2, store=store, clock=clock)  # type: ignore[arg-type]
    assert limiter.try_acquire() and limiter.try_acquire(cost=1)
    assert not limiter.try_acquire(cost=2)
    limiter.acquire()
    await limiter.aacquire()
    with pytest.raises(rs.RateLimitExceeded):
        limiter.acquire(timeout=0.5)
    assert store.inner.calls == 6
    assert clock.sleeps == [1.0, 1.0]
    assert limiter.statistics.acquired == 4
    assert limiter.statistics.rejected == 2

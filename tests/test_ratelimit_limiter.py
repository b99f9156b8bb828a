"""RateLimiter behaviour on a FakeClock: acquiring, waiting, keys, penalties, composites."""

from __future__ import annotations

import asyncio
import datetime
import math

import pytest

import resilience as rs
from resilience._validation import build_options
from resilience.ratelimit import (
    CompositeLimit,
    Limit,
    RateLimiter,
    RateLimiterOptions,
    RateLimiterStatistics,
)
from resilience.storage.buckets import MemoryBucketStore
from resilience.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_contract_signature_and_defaults(clock: FakeClock) -> None:
    store = MemoryBucketStore(clock)
    limiter = RateLimiter("emails", rate=100, per=60.0, burst=100, store=store, clock=clock)
    assert (limiter.name, limiter.rate, limiter.per, limiter.burst) == ("emails", 100, 60.0, 100)
    assert limiter.store is store and limiter.clock is clock
    assert RateLimiter("x", rate=7.9).burst == 7  # burst defaults to the rate
    assert RateLimiter("x", rate=0.2).burst == 1
    assert RateLimiter("x", rate=1, per=datetime.timedelta(minutes=1)).per == 60.0
    assert isinstance(limiter, rs.Policy)
    assert "emails" in repr(limiter)


def test_try_acquire_takes_the_burst_then_refuses(clock: FakeClock) -> None:
    limiter = RateLimiter("api", rate=10, per=1.0, burst=5, clock=clock)
    assert [limiter.try_acquire() for _ in range(6)] == [True] * 5 + [False]
    clock.advance(0.1)  # one token per 0.1 s
    assert limiter.try_acquire()
    assert not limiter.try_acquire()
    clock.advance(0.3)
    assert limiter.try_acquire(cost=3)
    assert not limiter.try_acquire()
    assert clock.sleeps == []  # try_acquire never waits


def test_acquire_waits_exactly_until_the_tokens_are_there(clock: FakeClock) -> None:
    limiter = RateLimiter("api", rate=2, per=1.0, burst=2, clock=clock)
    for _ in range(5):
        limiter.acquire()
    # Two at once, then one every half second: reservations queue up.
    assert clock.sleeps == [0.5, 0.5, 0.5]
    assert clock.now() == 1.5
    stats = limiter.statistics
    assert stats == RateLimiterStatistics(acquired=5, rejected=0, waited=3, tokens=0.0)


def test_acquire_fails_at_once_when_it_could_not_be_served_in_time(clock: FakeClock) -> None:
    limiter = RateLimiter("api", rate=1, per=10.0, burst=1, clock=clock)
    limiter.acquire()
    with pytest.raises(rs.RateLimitExceeded) as caught:
        limiter.acquire(timeout=9.0)
    assert clock.sleeps == []  # no sleeping in vain
    assert caught.value.retry_after == 10.0
    assert caught.value.name == "api"
    assert isinstance(caught.value, rs.ResilienceError)
    limiter.acquire(timeout=datetime.timedelta(seconds=10))  # just in time
    assert clock.sleeps == [10.0]
    assert limiter.statistics.rejected == 1


def test_retry_after_is_exact(clock: FakeClock) -> None:
    limiter = RateLimiter("api", rate=3, per=1.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.try_acquire()
    with pytest.raises(rs.RateLimitExceeded) as caught:
        limiter.acquire(key=None, cost=2, timeout=0)
    clock.advance(caught.value.retry_after)
    assert limiter.try_acquire(cost=2)


def test_default_wait_comes_from_max_wait(clock: FakeClock) -> None:
    limiter = RateLimiter("api", rate=1, per=1.0, burst=1, max_wait=0.5, clock=clock)
    limiter.acquire()
    with pytest.raises(rs.RateLimitExceeded):
        limiter.acquire()
    limiter.acquire(timeout=math.inf)  # an explicit timeout overrides it
    assert clock.sleeps == [1.0]


async def test_aacquire_waits_on_the_clock(clock: FakeClock) -> None:
    limiter = RateLimiter("api", rate=4, per=1.0, burst=1, clock=clock)
    for _ in range(3):
        await limiter.aacquire()
    assert clock.sleeps == [0.25, 0.25]
    with pytest.raises(rs.RateLimitExceeded) as caught:
        await limiter.aacquire(timeout=0.1)
    assert caught.value.retry_after == 0.25
    await limiter.aacquire(cost=1, timeout=0.25)


def test_keys_have_their_own_buckets(clock: FakeClock) -> None:
    limiter = RateLimiter("per-user", rate=1, per=60.0, burst=2, clock=clock)
    assert limiter.try_acquire("alice") and limiter.try_acquire("alice")
    assert not limiter.try_acquire("alice")
    assert limiter.try_acquire("bob")
    assert limiter.tokens("alice") == 0.0
    assert limiter.tokens("bob") == 1.0
    assert limiter.tokens("carol") == 2.0
    with pytest.raises(rs.RateLimitExceeded) as caught:
        limiter.acquire("alice", timeout=0)
    assert caught.value.key == "alice"  # how the message shows it: see the redaction tests


def test_decorator_and_context_managers(clock: FakeClock) -> None:
    limiter = RateLimiter("api", rate=1, per=1.0, burst=1, clock=clock)

    @limiter
    def work(x: int) -> int:
        return x * 2

    assert work(2) == 4 and work(3) == 6
    assert clock.sleeps == [1.0]
    assert work.policy is limiter  # type: ignore[attr-defined]
    with limiter as entered:
        assert entered is limiter
    assert limiter.call(work.__wrapped__, 5) == 10  # type: ignore[attr-defined]
    assert clock.sleeps == [1.0, 1.0, 1.0]


async def test_async_decorator_and_context_manager(clock: FakeClock) -> None:
    limiter = RateLimiter("api", rate=1, per=1.0, burst=1, clock=clock)

    @limiter
    async def work(x: int) -> int:
        return x + 1

    assert await work(1) == 2
    async with limiter:
        pass
    assert await limiter.acall(work.__wrapped__, 1) == 2  # type: ignore[attr-defined]
    assert clock.sleeps == [1.0, 1.0]


async def test_limit_binds_key_cost_and_timeout(clock: FakeClock) -> None:
    limiter = RateLimiter("per-host", rate=1, per=1.0, burst=4, clock=clock)
    big = limiter.limit("a.example", cost=3, timeout=0)
    assert isinstance(big, Limit)
    with big:
        pass
    assert limiter.tokens("a.example") == 1.0
    with pytest.raises(rs.RateLimitExceeded), big:
        pass
    assert not big.try_acquire()
    async with limiter.limit("b.example", cost=4):
        pass
    assert limiter.tokens("b.example") == 0.0

    @limiter.limit(key=lambda host, path: host, timeout=0)
    def fetch(host: str, path: str) -> str:
        return host + path

    assert fetch("c.example", "/") == "c.example/"
    assert limiter.tokens("c.example") == 3.0

    @limiter.limit(key=lambda host: host)
    async def afetch(host: str) -> str:
        return host

    assert await afetch("c.example") == "c.example"
    assert limiter.tokens("c.example") == 2.0
    with pytest.raises(TypeError, match="key function"):
        limiter.limit(lambda: "x").acquire()


def test_penalize_pauses_everyone_sharing_the_bucket(clock: FakeClock) -> None:
    store = MemoryBucketStore(clock)
    one = RateLimiter("upstream", rate=10, per=1.0, store=store)
    other = RateLimiter("upstream", rate=10, per=1.0, store=store)  # same name, same buckets
    one.penalize(30.0)
    assert not other.try_acquire()
    with pytest.raises(rs.RateLimitExceeded) as caught:
        other.acquire(timeout=5)
    assert caught.value.retry_after == pytest.approx(30.0)
    other.acquire()  # waits the pause out
    assert clock.sleeps == [pytest.approx(30.0)]
    assert not one.try_acquire()  # then refills from one token, at the normal pace
    one.penalize(datetime.timedelta(seconds=5), key="host")
    assert not one.try_acquire("host")
    assert one.try_acquire("other-host")


async def test_apenalize_and_atokens(clock: FakeClock) -> None:
    limiter = RateLimiter("upstream", rate=1, per=1.0, burst=3, clock=clock)
    await limiter.apenalize(2.0)
    assert await limiter.atokens() == 0.0
    clock.advance(2.0)
    assert await limiter.atokens() == pytest.approx(1.0)


def test_composite_is_all_or_nothing(clock: FakeClock) -> None:
    store = MemoryBucketStore(clock)
    everyone = RateLimiter("emails", rate=100, per=60.0, store=store)
    per_recipient = RateLimiter("emails-per-recipient", rate=10, per=60.0, store=store)

    def send(to: str) -> bool:
        return RateLimiter.all(everyone, per_recipient.limit(to)).try_acquire()

    assert sum(send("bob") for _ in range(15)) == 10
    # The five refused sends took nothing from the global bucket.
    assert everyone.tokens() == 90.0
    assert sum(send(f"user{i}") for i in range(100)) == 90
    assert everyone.tokens() == 0.0
    assert per_recipient.tokens("user95") == 10.0
    assert everyone.statistics.rejected == 15
    assert per_recipient.statistics.acquired == 100


def test_composite_waits_for_the_slowest_bucket(clock: FakeClock) -> None:
    store = MemoryBucketStore(clock)
    fast = RateLimiter("fast", rate=10, per=1.0, burst=1, store=store)
    slow = RateLimiter("slow", rate=1, per=1.0, burst=1, store=store)
    both = RateLimiter.all(fast, slow)
    assert isinstance(both, CompositeLimit)
    both.acquire()
    clock.advance(0.5)
    with pytest.raises(rs.RateLimitExceeded) as caught:
        both.acquire(timeout=0.25)
    assert caught.value.retry_after == 0.5
    assert fast.tokens() == 1.0  # refused: nothing taken from the fast bucket either
    both.acquire()
    assert clock.sleeps == [0.5]

    @RateLimiter.all(fast, slow.limit("k"))
    def work() -> str:
        return "done"

    assert work() == "done"


async def test_composite_async_and_context_forms(clock: FakeClock) -> None:
    store = MemoryBucketStore(clock)
    a = RateLimiter("a", rate=1, per=1.0, burst=1, store=store)
    b = RateLimiter("b", rate=1, per=2.0, burst=1, store=store)
    async with RateLimiter.all(a, b):
        pass
    await RateLimiter.all(a, b, timeout=5).aacquire()
    assert clock.sleeps == [2.0]
    with RateLimiter.all(a.limit("x"), b.limit("x")):
        pass


def test_composite_merges_the_same_bucket_and_needs_one_store(clock: FakeClock) -> None:
    store = MemoryBucketStore(clock)
    a = RateLimiter("a", rate=1, per=1.0, burst=3, store=store)
    assert RateLimiter.all(a, a.limit(cost=2)).try_acquire()
    assert a.tokens() == 0.0
    with pytest.raises(rs.ConfigurationError, match="burst"):
        RateLimiter.all(a.limit(cost=2), a.limit(cost=2))
    elsewhere = RateLimiter("b", rate=1, clock=clock)
    with pytest.raises(rs.ConfigurationError) as caught:
        RateLimiter.all(a, elsewhere)
    assert caught.value.fields == ("store",)
    with pytest.raises(rs.ConfigurationError):
        RateLimiter.all()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": -1}, "rate"),
        ({"rate": math.nan}, "rate"),
        ({"rate": math.inf}, "rate"),
        ({"rate": 1, "per": 0}, "per"),
        ({"rate": 1, "per": -1.0}, "per"),
        ({"rate": 1, "per": math.nan}, "per"),
        ({"rate": 1, "per": math.inf}, "per"),
        ({"rate": 1, "per": datetime.timedelta(0)}, "per"),
        ({"rate": 1, "burst": 0}, "burst"),
        ({"rate": 1, "burst": 1.5}, "burst"),
        ({"rate": 1, "max_wait": -1}, "max_wait"),
        ({"rate": 1, "max_wait": math.nan}, "max_wait"),
        ({"rate": 1, "store": object()}, "store"),
        ({"rate": 1, "clock": object()}, "clock"),
    ],
)
def test_invalid_configuration_names_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        RateLimiter("bad", **options)  # type: ignore[arg-type]
    assert field in caught.value.fields
    assert isinstance(caught.value, ValueError)


def test_options_from_a_dict_reject_unknown_fields() -> None:
    options = build_options(RateLimiterOptions, "limiter", name="x", rate=2, per="30")
    assert RateLimiter.from_options(options).per == 30.0
    with pytest.raises(rs.ConfigurationError) as caught:
        build_options(RateLimiterOptions, "limiter", name="x", rate=1, unknown=1)
    assert caught.value.fields == ("unknown",)


def test_empty_name_and_mismatched_clocks_are_configuration_errors() -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        RateLimiter("", rate=1)
    assert caught.value.fields == ("name",)
    with pytest.raises(rs.ConfigurationError) as caught:
        RateLimiter("x", rate=1, store=MemoryBucketStore(FakeClock()), clock=FakeClock())
    assert caught.value.fields == ("clock",)
    clock = FakeClock()
    adopted = RateLimiter("x", rate=1, store=MemoryBucketStore(clock))
    assert adopted.clock is clock  # a memory store's clock is the limiter's


@pytest.mark.parametrize("cost", [0, -1, 1.5, "1", 11])
def test_bad_cost_is_a_value_error_naming_cost(clock: FakeClock, cost: object) -> None:
    limiter = RateLimiter("api", rate=10, clock=clock)
    for call in (
        limiter.try_acquire,
        limiter.acquire,
        lambda key, cost: limiter.limit(key, cost=cost),
    ):
        with pytest.raises(ValueError, match="cost") as caught:
            call(None, cost)  # type: ignore[operator]
        assert isinstance(caught.value, rs.ConfigurationError)
        assert caught.value.fields == ("cost",)
    assert clock.sleeps == []  # a cost over the burst never waits forever


@pytest.mark.parametrize("bad", [-1.0, math.nan, "soon"])
def test_bad_timeout_and_penalty(clock: FakeClock, bad: float) -> None:
    limiter = RateLimiter("api", rate=10, clock=clock)
    with pytest.raises(rs.ConfigurationError) as caught:
        limiter.acquire(timeout=bad)
    assert caught.value.fields == ("timeout",)
    with pytest.raises(rs.ConfigurationError) as caught:
        limiter.penalize(bad)
    assert caught.value.fields == ("seconds",)


def test_from_options_builds_the_same_limiter(clock: FakeClock) -> None:
    limiter = RateLimiter("api", rate=5, per=2.0, clock=clock)
    twin = RateLimiter.from_options(limiter.options)
    assert (twin.name, twin.rate, twin.per, twin.burst) == ("api", 5, 2.0, 5)
    assert twin.store is limiter.store  # options carry the store: same buckets


class GatedClock(FakeClock):
    """Virtual time whose async sleeps last until the test says so (or the task is
    cancelled)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await self.gate.wait()


async def test_a_cancelled_waiter_hands_its_tokens_back() -> None:
    clock = GatedClock()
    limiter = RateLimiter("api", rate=1, per=1.0, burst=1, clock=clock)
    limiter.acquire()
    waiter = asyncio.create_task(limiter.aacquire(timeout=5))
    await asyncio.sleep(0)
    assert clock.sleeps == [1.0]  # reserved the next token, now waiting for it
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    clock.advance(1.0)
    assert limiter.try_acquire()  # the reservation was given back
    assert limiter.statistics.acquired == 2 and limiter.statistics.waited == 0


async def test_a_cancelled_waiter_behind_others_keeps_the_tokens_spent() -> None:
    clock = GatedClock()
    store = MemoryBucketStore(clock)
    limiter = RateLimiter("api", rate=1, per=1.0, burst=1, store=store)
    other = RateLimiter("other", rate=1, per=1.0, burst=1, store=store)
    limiter.acquire()
    first = asyncio.create_task(limiter.aacquire(timeout=5))
    second = asyncio.create_task(RateLimiter.all(limiter, other).aacquire(timeout=5))
    await asyncio.sleep(0)
    assert clock.sleeps == [1.0, 2.0]
    first.cancel()  # someone queued behind it: its tokens cannot be given back
    second.cancel()  # the last in line: its tokens go back to both buckets
    await asyncio.gather(first, second, return_exceptions=True)
    assert other.tokens() == 1.0
    clock.advance(1.0)
    assert not limiter.try_acquire()  # the first waiter's token, due now, stays spent
    clock.advance(1.0)
    assert limiter.try_acquire()  # the second waiter's, given back
    clock.gate.set()


def test_an_interrupted_sync_waiter_hands_its_tokens_back() -> None:
    class InterruptedClock(FakeClock):
        def sleep(self, seconds: float) -> None:
            raise KeyboardInterrupt

    clock = InterruptedClock()
    limiter = RateLimiter("api", rate=1, per=1.0, burst=1, clock=clock)
    limiter.acquire()
    with pytest.raises(KeyboardInterrupt):
        limiter.acquire()
    clock.advance(1.0)
    assert limiter.try_acquire()

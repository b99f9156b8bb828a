"""The rate limiter's drivers in every form: acquire, decorator, context manager.

Written once, async; scripts/unasync.py generates the sync twin in tests/_sync.
Timing on FakeClock only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import resilience as rs
from resilience.ratelimit import RateLimiter
from resilience.storage import LeasingBucketStore
from resilience.storage.buckets import MemoryBucketStore
from resilience.telemetry import events, subscribe
from resilience.testing import FakeClock

FORMS = ["acquire", "decorator", "with"]
"""How a test takes a token: ``aacquire``, the decorator, or ``async with``."""


async def take(form: str, policy: object) -> None:
    """One acquisition through ``policy`` (a limiter, a limit or a composite) in ``form``."""
    if form == "acquire":
        await policy.aacquire()  # type: ignore[attr-defined]
    elif form == "decorator":

        @policy  # type: ignore[operator]
        async def work() -> str:
            return "done"

        assert await work() == "done"
    else:
        async with policy:  # type: ignore[attr-defined]
            pass


class Interrupted(BaseException):
    """Raised by a clock's sleep: a KeyboardInterrupt, a task's cancellation."""


class InterruptedClock(FakeClock):
    __slots__ = ()

    def sleep(self, seconds: float) -> None:
        raise Interrupted

    async def asleep(self, seconds: float) -> None:  # unasync: async only
        raise Interrupted  # unasync: async only


@pytest.fixture
def seen() -> Iterator[list[events.Event]]:
    received: list[events.Event] = []
    unsubscribe = subscribe(received.append)
    yield received
    unsubscribe()


@pytest.mark.parametrize("form", FORMS)
async def test_each_form_takes_a_token_then_waits_for_the_next(
    form: str, seen: list[events.Event]
) -> None:
    clock = FakeClock(1000.0)
    limiter = RateLimiter("drv-wait", rate=1, per=2.0, clock=clock)
    await take(form, limiter)
    await take(form, limiter)
    assert clock.sleeps == [2.0]  # the second waited for its reserved token
    stats = limiter.statistics
    assert (stats.acquired, stats.waited, stats.rejected) == (2, 1, 0)
    assert [e.wait for e in seen if isinstance(e, events.RateLimitWaited)] == [2.0]


@pytest.mark.parametrize("form", FORMS)
async def test_each_form_refuses_at_once_what_would_wait_too_long(
    form: str, seen: list[events.Event]
) -> None:
    clock = FakeClock(1000.0)
    limiter = RateLimiter("drv-refuse", rate=1, per=2.0, max_wait=0.5, clock=clock)
    await take(form, limiter)
    with pytest.raises(rs.RateLimitExceeded) as caught:
        await take(form, limiter)
    assert caught.value.retry_after == pytest.approx(2.0)
    assert clock.sleeps == []  # refused without waiting, and nothing taken
    assert await limiter.atokens() == 0.0
    clock.advance(2.0)
    assert await limiter.atokens() == 1.0
    assert limiter.statistics.rejected == 1
    rejected = next(e for e in seen if isinstance(e, events.RateLimitRejected))
    assert rejected.retry_after == pytest.approx(2.0)


@pytest.mark.parametrize("form", FORMS)
async def test_an_interrupted_wait_hands_its_reservation_back(form: str) -> None:
    clock = InterruptedClock(1000.0)
    limiter = RateLimiter("drv-refund", rate=1, per=1.0, clock=clock)
    await take(form, limiter)
    with pytest.raises(Interrupted):
        await take(form, limiter)  # reserved the next token, then was interrupted
    clock.advance(1.0)
    assert await limiter.atokens() == 1.0  # the reservation was undone
    assert limiter.statistics.acquired == 1


@pytest.mark.parametrize("form", FORMS)
async def test_a_store_without_the_fast_path_gets_the_same_answers(form: str) -> None:
    clock = FakeClock(1000.0)
    store = LeasingBucketStore(MemoryBucketStore(clock), lease=1)
    limiter = RateLimiter("drv-slow", rate=1, per=2.0, store=store, clock=clock)
    assert limiter._take_one is None
    await take(form, limiter)
    await take(form, limiter)
    assert clock.sleeps == [2.0]
    assert store.round_trips == 2


@pytest.mark.parametrize("form", FORMS)
async def test_a_bound_limit_takes_its_key_and_cost(form: str) -> None:
    clock = FakeClock(1000.0)
    limiter = RateLimiter("drv-limit", rate=2, per=2.0, clock=clock)
    await take(form, limiter.limit("alice", cost=2))
    assert await limiter.atokens("alice") == 0.0
    assert await limiter.atokens("bob") == 2.0
    with pytest.raises(rs.RateLimitExceeded):
        await take(form, limiter.limit("alice", timeout=0.5))
    await take(form, limiter.limit("alice"))  # waits for one token
    assert clock.sleeps == [1.0]


async def test_a_key_function_picks_the_bucket_per_call() -> None:
    clock = FakeClock(1000.0)
    limiter = RateLimiter("drv-keyed", rate=1, per=1.0, max_wait=0, clock=clock)

    @limiter.limit(lambda user: f"user-{user}")
    async def greet(user: str) -> str:
        return f"hello {user}"

    assert await greet("a") == "hello a"
    assert await greet("b") == "hello b"
    with pytest.raises(rs.RateLimitExceeded) as caught:
        await greet("a")
    assert caught.value.key == "user-a"
    with pytest.raises(TypeError, match="key function"):
        await limiter.limit(lambda user: user).aacquire()


@pytest.mark.parametrize("form", FORMS)
async def test_a_composite_takes_from_every_bucket_or_from_none(form: str) -> None:
    clock = FakeClock(1000.0)
    store = MemoryBucketStore(clock)
    everyone = RateLimiter("drv-all", rate=2, per=1.0, store=store)
    per_user = RateLimiter("drv-user", rate=1, per=1.0, store=store)
    both = RateLimiter.all(everyone, per_user.limit("alice"), timeout=0)
    await take(form, both)
    with pytest.raises(rs.RateLimitExceeded) as caught:
        await take(form, both)  # alice is out: nothing is taken from everyone
    assert caught.value.retry_after == pytest.approx(1.0)
    assert await everyone.atokens() == 1.0
    assert (everyone.statistics.acquired, everyone.statistics.rejected) == (1, 1)
    assert (per_user.statistics.acquired, per_user.statistics.rejected) == (1, 1)
    waiting = RateLimiter.all(everyone, per_user.limit("alice"))
    await take(form, waiting)  # waits for alice's token, takes everyone's too
    assert clock.sleeps == [1.0]
    assert everyone.statistics.waited == 1


async def test_penalize_pauses_the_bucket_then_grants_one_token() -> None:
    clock = FakeClock(1000.0)
    limiter = RateLimiter("drv-penalize", rate=5, per=1.0, max_wait=0, clock=clock)
    await limiter.apenalize(3.0, key="k")
    assert await limiter.atokens("k") == 0.0
    with pytest.raises(rs.RateLimitExceeded) as caught:
        await limiter.aacquire("k")
    assert caught.value.retry_after == pytest.approx(3.0)
    clock.advance(3.0)
    assert await limiter.atokens("k") == pytest.approx(1.0)
    await limiter.aacquire("k")


class Name(str):
    __slots__ = ()


async def test_keys_are_plain_strings_or_refused() -> None:
    limiter = RateLimiter("drv-keys", rate=1, clock=FakeClock())
    await limiter.aacquire(Name("k"))
    assert await limiter.atokens("k") == 0.0
    assert await limiter.atokens(Name("k")) == 0.0
    for bad in (1, b"k"):
        with pytest.raises(TypeError, match="key"):
            await limiter.aacquire(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="key"):
            await limiter.apenalize(1.0, bad)  # type: ignore[arg-type]


async def test_an_enclosing_timeout_bounds_the_wait() -> None:
    clock = FakeClock(1000.0)
    limiter = RateLimiter("drv-deadline", rate=1, per=1.0, clock=clock)
    await limiter.aacquire()

    @rs.Timeout(0.5, clock=clock)
    async def within_half_a_second() -> None:
        await limiter.aacquire()

    with pytest.raises(rs.RateLimitExceeded):
        await within_half_a_second()  # the token comes after the deadline: refused now
    assert clock.sleeps == []

"""A wait that is interrupted hands its reservation back, whatever happens next.

The refund must not be cut short by a second cancellation (the tokens would be
lost to everyone sharing the bucket), and a refund that fails must not hide why
the wait ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

import resilience as rs
from resilience._core.bucket import Decision
from resilience.storage.buckets import BucketRequest, MemoryBucketStore
from resilience.testing import FakeClock


class Reserving(MemoryBucketStore):
    """The real memory store, telling when a take has reserved a later token."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        super().__init__(clock)
        self.reserved = asyncio.Event()

    async def abucket_take(
        self, requests: Sequence[BucketRequest], max_wait: float = 0.0
    ) -> Decision:
        decision = await super().abucket_take(requests, max_wait)
        if decision.granted and decision.wait > 0:
            self.reserved.set()
        return decision


class SlowRefunds(Reserving):
    """The real memory store, whose async refund waits for ``gate`` first."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.refunding = asyncio.Event()

    async def abucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        self.refunding.set()
        await self.gate.wait()
        self.bucket_refund(requests, reserved)


class BrokenRefunds(Reserving):
    """The real memory store, whose refund finds the store down."""

    def bucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        raise rs.StoreUnavailable("test", "down")

    async def abucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        self.bucket_refund(requests, reserved)


async def _waiting(limiter: rs.RateLimiter, store: Reserving) -> asyncio.Task[None]:
    """A task that has reserved the next token and sleeps until it is due."""
    assert limiter.try_acquire()
    task = asyncio.create_task(limiter.aacquire(timeout=10_000.0))
    async with asyncio.timeout(10):
        await store.reserved.wait()
    return task


async def test_a_second_cancellation_does_not_cut_the_refund_short() -> None:
    store = SlowRefunds()  # the real clock: the wait really sleeps (for 1000 s)
    limiter = rs.RateLimiter("cancelled", rate=1, per=1000.0, burst=1, store=store)
    task = await _waiting(limiter, store)
    task.cancel()
    async with asyncio.timeout(10):
        await store.refunding.wait()
    task.cancel()  # again, while the refund is under way
    with pytest.raises(asyncio.CancelledError):
        await task
    store.gate.set()
    for _ in range(10):
        await asyncio.sleep(0)
    # The reservation is handed back: the next token is due in 1000 s, not 2000 s.
    with pytest.raises(rs.RateLimitExceeded) as refused:
        limiter.acquire(timeout=0)
    assert refused.value.retry_after is not None and refused.value.retry_after < 1500


async def test_a_failed_refund_does_not_hide_the_cancellation() -> None:
    store = BrokenRefunds()
    limiter = rs.RateLimiter("cancelled", rate=1, per=1000.0, burst=1, store=store)
    task = await _waiting(limiter, store)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class InterruptedClock(FakeClock):
    """A clock whose sleeps are interrupted, as by Ctrl-C."""

    def sleep(self, seconds: float) -> None:
        raise KeyboardInterrupt


def test_a_failed_refund_does_not_hide_an_interrupted_sync_wait() -> None:
    clock = InterruptedClock(1_700_000_000.25)
    store = BrokenRefunds(clock)
    limiter = rs.RateLimiter("interrupted", rate=1, per=1000.0, burst=1, store=store)
    assert limiter.try_acquire()
    with pytest.raises(KeyboardInterrupt):
        limiter.acquire(timeout=10_000.0)

"""Many threads and many asyncio tasks on one limiter, on the real clock.

Each test counts the tokens granted and checks them against the bound computed
from the elapsed time it measured itself (``burst + rate * elapsed``): whatever
the scheduler does, the limit holds. Nothing here asserts on timing.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import resilience as rs
from resilience.ratelimit import RateLimiter
from resilience.storage.buckets import MemoryBucketStore

RATE, BURST = 2_000.0, 20  # tokens per second; a small burst makes overshoot visible
RUN_FOR = 0.3  # seconds each test hammers the limiter


@pytest.fixture(autouse=True)
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads every few microseconds: races show up instead of hiding."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(previous)


def bound(elapsed: float) -> float:
    return BURST + RATE * elapsed


def hammer_with_threads(attempt: object, threads: int = 8) -> tuple[int, float]:
    """Run ``attempt()`` (-> tokens granted) in ``threads`` threads for RUN_FOR seconds."""
    granted = [0] * threads
    go = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        go.wait()
        deadline = time.monotonic() + RUN_FOR
        while time.monotonic() < deadline:
            granted[index] += attempt()  # type: ignore[operator]

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    start = time.monotonic()  # the bucket was full before this instant: count from here
    go.wait()
    for thread in pool:
        thread.join()
    return sum(granted), time.monotonic() - start


def test_threads_never_exceed_the_bound_with_try_acquire() -> None:
    limiter = RateLimiter("threads", rate=RATE, per=1.0, burst=BURST)
    total, elapsed = hammer_with_threads(lambda: int(limiter.try_acquire()))
    assert 0 < total <= bound(elapsed)
    assert limiter.statistics.acquired == total


class YieldingClock:
    """The real clock, but every reading gives up the GIL: each acquisition is
    interrupted in the middle, where a missing lock would let two threads in."""

    def now(self) -> float:
        now = time.monotonic()
        time.sleep(0)
        return now

    sleep = staticmethod(time.sleep)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def test_threads_interrupted_mid_acquisition_never_exceed_the_bound() -> None:
    limiter = RateLimiter("threads", rate=RATE / 10, per=1.0, burst=BURST, clock=YieldingClock())
    total, elapsed = hammer_with_threads(lambda: int(limiter.try_acquire()))
    assert 0 < total <= BURST + RATE / 10 * elapsed
    both = RateLimiter.all(limiter.limit("a"), limiter.limit("b"))
    total, elapsed = hammer_with_threads(lambda: int(both.try_acquire()))
    assert 0 < total <= BURST + RATE / 10 * elapsed


def test_threads_never_exceed_the_bound_with_keys_and_costs() -> None:
    limiter = RateLimiter("threads", rate=RATE, per=1.0, burst=BURST)
    counter = iter(range(10**9))

    def attempt() -> int:
        cost = 1 + next(counter) % 3
        return cost if limiter.try_acquire("shared", cost) else 0

    total, elapsed = hammer_with_threads(attempt)
    assert 0 < total <= bound(elapsed)


def test_threads_waiting_in_acquire_never_exceed_the_bound() -> None:
    limiter = RateLimiter("threads", rate=RATE, per=1.0, burst=BURST)

    def attempt() -> int:
        try:
            limiter.acquire(timeout=0.01)
        except rs.RateLimitExceeded:
            return 0
        return 1

    total, elapsed = hammer_with_threads(attempt)
    assert 0 < total <= bound(elapsed)
    assert limiter.statistics.waited > 0


def test_composite_under_threads_never_overdraws_either_bucket() -> None:
    store = MemoryBucketStore()
    global_ = RateLimiter("global", rate=RATE, per=1.0, burst=BURST, store=store)
    local = RateLimiter("local", rate=RATE / 2, per=1.0, burst=BURST // 2, store=store)
    both = RateLimiter.all(global_, local)
    total, elapsed = hammer_with_threads(lambda: int(both.try_acquire()))
    assert 0 < total <= BURST // 2 + RATE / 2 * elapsed
    assert global_.statistics.acquired == local.statistics.acquired == total


async def test_tasks_never_exceed_the_bound() -> None:
    limiter = RateLimiter("tasks", rate=RATE, per=1.0, burst=BURST)
    granted = 0

    async def worker() -> None:
        nonlocal granted
        deadline = time.monotonic() + RUN_FOR
        while time.monotonic() < deadline:
            try:
                await limiter.aacquire(timeout=0.005)
            except rs.RateLimitExceeded:
                await asyncio.sleep(0)
            else:
                granted += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(50)))
    elapsed = time.monotonic() - start
    assert 0 < granted <= bound(elapsed)


async def test_tasks_and_threads_together_never_exceed_the_bound() -> None:
    limiter = RateLimiter("mixed", rate=RATE, per=1.0, burst=BURST)
    start = time.monotonic()
    thread_total = asyncio.get_running_loop().run_in_executor(
        None, hammer_with_threads, lambda: int(limiter.try_acquire()), 4
    )
    granted = 0

    async def worker() -> None:
        nonlocal granted
        deadline = time.monotonic() + RUN_FOR
        while time.monotonic() < deadline:
            if limiter.try_acquire():
                granted += 1
            await asyncio.sleep(0)

    await asyncio.gather(*(worker() for _ in range(20)))
    from_threads, _ = await thread_total
    elapsed = time.monotonic() - start
    assert 0 < granted + from_threads <= bound(elapsed)


def test_no_lock_is_held_while_a_caller_sleeps() -> None:
    """A waiter asleep on the clock does not stop anyone else from acquiring."""
    sleeping, wake = threading.Event(), threading.Event()

    class GatedClock:
        now = staticmethod(time.monotonic)

        def sleep(self, seconds: float) -> None:
            sleeping.set()
            wake.wait(5)

        async def asleep(self, seconds: float) -> None:  # pragma: no cover - unused
            raise AssertionError

    limiter = RateLimiter("gated", rate=1, per=3600.0, burst=1, clock=GatedClock())
    limiter.try_acquire()
    waiter = threading.Thread(target=limiter.acquire, args=("slow",), kwargs={"cost": 1})
    waiter.start()
    limiter.try_acquire("slow")  # empties "slow": the waiter below must reserve and sleep
    other = threading.Thread(target=limiter.acquire, args=("slow",))
    other.start()
    assert sleeping.wait(5)
    started = time.monotonic()
    assert limiter.try_acquire("another-key")
    assert not limiter.try_acquire()
    assert time.monotonic() - started < 1.0
    wake.set()
    waiter.join(5)
    other.join(5)
    assert not waiter.is_alive() and not other.is_alive()


@pytest.mark.parametrize("tasks", [200])
async def test_waiting_tasks_are_served_in_order(tasks: int) -> None:
    """Reservation is first come, first served: wake-ups follow arrival order."""
    limiter = RateLimiter("fifo", rate=10_000, per=1.0, burst=1)
    order: list[int] = []

    async def worker(index: int) -> None:
        await limiter.aacquire(timeout=10)
        order.append(index)

    await asyncio.gather(*(worker(i) for i in range(tasks)))
    assert sorted(order) == list(range(tasks))
    # Sleeps end in reservation order, barring timer resolution ties.
    inversions = sum(1 for a, b in itertools.pairwise(order) if b < a)
    assert inversions < tasks // 4

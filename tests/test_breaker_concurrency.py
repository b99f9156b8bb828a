"""Half-open admits at most ``half_open_calls`` probes at once, across threads and tasks;
no lock is held while the protected call runs.

Real threads, but only invariants are asserted: nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import resilience as rs
from resilience.breaker import CircuitBreaker, CircuitState
from resilience.storage.breakers import MemoryBreakerStore
from resilience.testing import FakeClock

WORKERS = 48


class Gauge:
    """Counts calls running at once, and the most ever seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.entered = 0

    def enter(self) -> None:
        with self._lock:
            self.running += 1
            self.entered += 1
            self.peak = max(self.peak, self.running)

    def leave(self) -> None:
        with self._lock:
            self.running -= 1


def wait_until(condition: Callable[[], bool]) -> None:
    """Wait for the threads to settle; the limit only turns a hang into a failure."""
    give_up = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < give_up, "threads did not settle"
        time.sleep(0.001)


def half_open_breaker(clock: FakeClock, half_open_calls: int, **options: Any) -> CircuitBreaker:
    breaker = CircuitBreaker(
        "shared",
        failure_threshold=1,
        break_duration=1.0,
        half_open_calls=half_open_calls,
        clock=clock,
        **options,
    )
    with pytest.raises(ConnectionError):
        breaker.call(_raise_connection_error)
    clock.advance(1.0)
    return breaker


def _raise_connection_error() -> None:
    raise ConnectionError


@pytest.mark.parametrize("half_open_calls", [1, 3])
def test_threads_never_exceed_the_probe_permits(half_open_calls: int) -> None:
    clock = FakeClock()
    breaker = half_open_breaker(clock, half_open_calls)
    gauge = Gauge()
    release = threading.Event()
    start = threading.Barrier(WORKERS)
    outcomes: list[str] = []

    def probe() -> str:
        gauge.enter()
        try:
            release.wait(timeout=10)
            return "ok"
        finally:
            gauge.leave()

    def worker() -> None:
        start.wait(timeout=10)
        try:
            outcomes.append(breaker.call(probe))
        except rs.CircuitOpenError:
            outcomes.append("rejected")

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    # Every thread that was not admitted is rejected at once; the probes hold.
    wait_until(lambda: outcomes.count("rejected") + gauge.running == WORKERS)
    assert gauge.running == half_open_calls  # the probes run concurrently: no lock held
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    assert gauge.peak == half_open_calls
    assert outcomes.count("ok") == half_open_calls
    assert breaker.state is CircuitState.CLOSED


async def test_tasks_never_exceed_the_probe_permits() -> None:
    clock = FakeClock()
    breaker = half_open_breaker(clock, 2)
    gauge = Gauge()
    release = asyncio.Event()

    @breaker
    async def probe() -> str:
        gauge.enter()
        try:
            await release.wait()
            return "ok"
        finally:
            gauge.leave()

    async def attempt() -> str:
        try:
            return await probe()
        except rs.CircuitOpenError:
            return "rejected"

    tasks = [asyncio.create_task(attempt()) for _ in range(WORKERS)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert gauge.running == 2
    release.set()
    outcomes = await asyncio.gather(*tasks)
    assert gauge.peak == 2
    assert outcomes.count("ok") == 2
    assert outcomes.count("rejected") == WORKERS - 2
    assert breaker.state is CircuitState.CLOSED


async def test_async_with_blocks_never_exceed_the_probe_permits() -> None:
    clock = FakeClock()
    breaker = half_open_breaker(clock, 1)
    gauge = Gauge()
    release = asyncio.Event()

    async def attempt() -> str:
        try:
            async with breaker:
                gauge.enter()
                try:
                    await release.wait()
                finally:
                    gauge.leave()
                return "ok"
        except rs.CircuitOpenError:
            return "rejected"

    tasks = [asyncio.create_task(attempt()) for _ in range(WORKERS)]
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    outcomes = await asyncio.gather(*tasks)
    assert gauge.peak == 1
    assert outcomes.count("ok") == 1
    assert breaker.state is CircuitState.CLOSED


def test_breakers_sharing_a_store_share_the_probe_permits() -> None:
    """Several breaker objects on one store behave like several processes on Redis."""
    clock = FakeClock()
    store = MemoryBreakerStore()
    breakers = [
        CircuitBreaker(
            "fleet",
            failure_threshold=1,
            break_duration=1.0,
            half_open_calls=2,
            store=store,
            clock=clock,
        )
        for _ in range(6)
    ]
    with pytest.raises(ConnectionError):
        breakers[0].call(_raise_connection_error)
    assert all(b.state is CircuitState.OPEN for b in breakers)  # pushed at once
    clock.advance(1.0)
    gauge = Gauge()
    release = threading.Event()
    outcomes: list[str] = []
    start = threading.Barrier(len(breakers) * 4)

    def probe() -> str:
        gauge.enter()
        try:
            release.wait(timeout=10)
            return "ok"
        finally:
            gauge.leave()

    def worker(breaker: CircuitBreaker) -> None:
        start.wait(timeout=10)
        try:
            outcomes.append(breaker.call(probe))
        except rs.CircuitOpenError:
            outcomes.append("rejected")

    threads = [threading.Thread(target=worker, args=(b,)) for b in breakers for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: outcomes.count("rejected") + gauge.running == len(threads))
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    assert gauge.peak == 2
    assert outcomes.count("ok") == 2
    assert all(b.state is CircuitState.CLOSED for b in breakers)


def test_closed_state_hammered_by_threads_keeps_exact_counts() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("busy", failure_ratio=0.9, window_size=50, clock=clock)
    per_thread = 2_000

    @breaker
    def work(i: int) -> int:
        if i % 10 == 0:
            raise ConnectionError
        return i

    def worker() -> None:
        for i in range(per_thread):
            with contextlib.suppress(ConnectionError):
                work(i)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = breaker.statistics
    assert stats.calls == 8 * per_thread
    assert stats.failures == 8 * per_thread // 10
    assert breaker.state is CircuitState.CLOSED  # 10 % failures never reach 90 %


def test_racing_failures_open_the_circuit_once() -> None:
    clock = FakeClock()
    changes: list[tuple[CircuitState, CircuitState]] = []
    breaker = CircuitBreaker(
        "race",
        failure_threshold=3,
        clock=clock,
        on_state_change=lambda old, new, reason: changes.append((old, new)),
    )
    start = threading.Barrier(16)

    def worker() -> None:
        start.wait(timeout=10)
        for _ in range(20):
            with contextlib.suppress(ConnectionError, rs.CircuitOpenError):
                breaker.call(_raise_connection_error)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert changes == [(CircuitState.CLOSED, CircuitState.OPEN)]
    assert breaker.statistics.failures + breaker.statistics.rejections == 16 * 20


def test_no_lock_is_held_during_the_call_in_closed_state() -> None:
    """Two calls must be inside the function at once, or the barrier times out."""
    breaker = CircuitBreaker("closed", failure_ratio=0.5, window=10.0, clock=FakeClock())
    inside = threading.Barrier(2)

    @breaker
    def meet() -> bool:
        inside.wait(timeout=10)
        return True

    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(meet())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True, True]

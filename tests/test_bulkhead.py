"""Bulkhead: concurrency limit, queue, rejection, fairness; threads and tasks.

Calls are held inside the bulkhead with real Events (behaviour, never timing).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

import resilience as rs
from resilience.bulkhead import Bulkhead
from resilience.testing import FakeClock
from resilience.timeout import Timeout

WAIT = 10.0  # generous bound on real waits, so a bug fails rather than hangs


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


class Held:
    """A sync call that stays inside the bulkhead until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> str:
        self.entered.set()
        assert self.release.wait(WAIT)
        return "done"


def start(bulkhead: Bulkhead, held: Held, results: list[object]) -> threading.Thread:
    def run() -> None:
        try:
            results.append(bulkhead.call(held))
        except Exception as error:
            results.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_rejects_when_full_and_no_queue() -> None:
    bulkhead = Bulkhead(1, name="db")
    held, results = Held(), []
    thread = start(bulkhead, held, results)
    assert held.entered.wait(WAIT)
    with pytest.raises(rs.BulkheadFull) as caught:
        bulkhead.call(lambda: None)
    assert caught.value.name == "db"
    held.release.set()
    thread.join(WAIT)
    assert results == ["done"]
    assert bulkhead.call(lambda: "free again") == "free again"
    stats = bulkhead.statistics
    assert (stats.calls, stats.rejections, stats.active, stats.queued) == (2, 1, 0, 0)


def test_a_queued_call_runs_when_a_slot_frees_and_the_queue_is_bounded() -> None:
    bulkhead = Bulkhead(1, max_queued=1)
    first, second = Held(), Held()
    results: list[object] = []
    t1 = start(bulkhead, first, results)
    assert first.entered.wait(WAIT)
    t2 = start(bulkhead, second, results)
    wait_until(lambda: bulkhead.statistics.queued == 1)
    with pytest.raises(rs.BulkheadFull):
        bulkhead.call(lambda: None)  # slot taken, queue full
    assert not second.entered.is_set()
    first.release.set()
    assert second.entered.wait(WAIT)
    second.release.set()
    t1.join(WAIT)
    t2.join(WAIT)
    assert results == ["done", "done"]


def test_waiters_are_served_first_come_first_served() -> None:
    bulkhead = Bulkhead(1, max_queued=5)
    gate = Held()
    order: list[int] = []
    threads = [start(bulkhead, gate, [])]
    assert gate.entered.wait(WAIT)
    for number in range(4):
        thread = threading.Thread(target=bulkhead.call, args=(order.append, number))
        thread.start()
        threads.append(thread)
        wait_until(lambda n=number: bulkhead.statistics.queued == n + 1)  # type: ignore[misc]
    gate.release.set()
    for thread in threads:
        thread.join(WAIT)
    assert order == [0, 1, 2, 3]


def test_a_wait_that_expires_is_rejected() -> None:
    bulkhead = Bulkhead(1, max_queued=1, max_wait=0.01)
    held = Held()
    thread = start(bulkhead, held, [])
    assert held.entered.wait(WAIT)
    with pytest.raises(rs.BulkheadFull):
        bulkhead.call(lambda: None)
    assert bulkhead.statistics.queued == 0  # the expired waiter left the queue
    held.release.set()
    thread.join(WAIT)


def test_an_expired_deadline_means_no_waiting() -> None:
    clock = FakeClock()
    bulkhead = Bulkhead(1, max_queued=1)  # would wait for ever without a deadline
    held = Held()
    thread = start(bulkhead, held, [])
    assert held.entered.wait(WAIT)

    def late() -> None:
        clock.advance(5.0)
        bulkhead.call(lambda: None)

    with pytest.raises(rs.BulkheadFull):
        Timeout(5.0, clock=clock).call(late)
    held.release.set()
    thread.join(WAIT)


def test_the_lock_is_not_held_during_the_call() -> None:
    bulkhead = Bulkhead(2)
    # statistics takes the lock: this would deadlock if the call held it.
    assert bulkhead.call(lambda: bulkhead.statistics.active) == 1


def test_errors_free_the_slot() -> None:
    bulkhead = Bulkhead(1)

    def fail() -> None:
        raise ConnectionError

    for _ in range(3):
        with pytest.raises(ConnectionError):
            bulkhead.call(fail)
    assert bulkhead.statistics.active == 0


def test_never_more_than_max_concurrent_under_threads() -> None:
    bulkhead = Bulkhead(3, max_queued=100)
    lock = threading.Lock()
    running, peak = [0], [0]

    @bulkhead
    def work() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0)  # let other threads in
        with lock:
            running[0] -= 1

    threads = [threading.Thread(target=lambda: [work() for _ in range(200)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    stats = bulkhead.statistics
    assert 1 <= peak[0] <= 3
    assert (stats.calls, stats.rejections, stats.active, stats.queued) == (1600, 0, 0, 0)


def test_context_manager_form() -> None:
    bulkhead = Bulkhead(1)
    with bulkhead:
        assert bulkhead.statistics.active == 1
        with pytest.raises(rs.BulkheadFull), bulkhead:
            pass
    assert bulkhead.statistics.active == 0


def test_options_are_validated() -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        Bulkhead(0, max_queued=-1, max_wait=-1)
    assert set(caught.value.fields) == {"max_concurrent", "max_queued", "max_wait"}


# -- async twins -----------------------------------------------------------------------------


async def test_async_rejects_when_full_and_runs_queued_calls_in_order() -> None:
    bulkhead = Bulkhead(1, max_queued=2)
    release = asyncio.Event()
    order: list[str] = []

    async def work(label: str) -> str:
        order.append(label)
        await release.wait()
        return label

    first = asyncio.create_task(bulkhead.acall(work, "a"))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(bulkhead.acall(work, label)) for label in "bc"]
    await asyncio.sleep(0)
    assert bulkhead.statistics.queued == 2
    with pytest.raises(rs.BulkheadFull):
        await bulkhead.acall(work, "d")
    release.set()
    assert await asyncio.gather(first, *queued) == ["a", "b", "c"]
    assert order == ["a", "b", "c"]
    assert bulkhead.statistics.active == 0


async def test_async_a_cancelled_waiter_leaves_the_queue() -> None:
    bulkhead = Bulkhead(1, max_queued=1)
    release = asyncio.Event()

    async def hold() -> None:
        await release.wait()

    holder = asyncio.create_task(bulkhead.acall(hold))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(bulkhead.acall(hold))
    await asyncio.sleep(0)
    assert bulkhead.statistics.queued == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bulkhead.statistics.queued == 0
    release.set()
    await holder
    assert bulkhead.statistics.active == 0
    assert await bulkhead.acall(asyncio.sleep, 0, "free") == "free"


async def test_async_a_wait_that_expires_is_rejected() -> None:
    bulkhead = Bulkhead(1, max_queued=1, max_wait=0.01)
    release = asyncio.Event()
    holder = asyncio.create_task(bulkhead.acall(release.wait))
    await asyncio.sleep(0)
    with pytest.raises(rs.BulkheadFull):
        await bulkhead.acall(asyncio.sleep, 0)
    assert bulkhead.statistics.queued == 0
    release.set()
    await holder


async def test_async_never_more_than_max_concurrent_under_tasks() -> None:
    bulkhead = Bulkhead(3, max_queued=1000)
    running, peak = [0], [0]

    @bulkhead
    async def work() -> None:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await asyncio.sleep(0)
        running[0] -= 1

    await asyncio.gather(*(work() for _ in range(300)))
    stats = bulkhead.statistics
    assert peak[0] == 3
    assert (stats.calls, stats.rejections, stats.active, stats.queued) == (300, 0, 0, 0)


async def test_async_context_manager_form() -> None:
    bulkhead = Bulkhead(1)
    async with bulkhead:
        with pytest.raises(rs.BulkheadFull):
            async with bulkhead:
                pass
    assert bulkhead.statistics.active == 0


def test_threads_and_an_event_loop_share_one_bulkhead() -> None:
    bulkhead = Bulkhead(1, max_queued=1)
    held = Held()
    thread = start(bulkhead, held, [])
    assert held.entered.wait(WAIT)

    async def queued() -> str:
        return await bulkhead.acall(asyncio.sleep, 0, "from the loop")

    def release_soon() -> None:
        wait_until(lambda: bulkhead.statistics.queued == 1)
        held.release.set()

    releaser = threading.Thread(target=release_soon)
    releaser.start()
    assert asyncio.run(queued()) == "from the loop"
    releaser.join(WAIT)
    thread.join(WAIT)
    assert bulkhead.statistics.active == 0


def test_rejections_are_reported_as_events() -> None:
    from resilience.telemetry import events, subscribe

    seen: list[events.Event] = []
    unsubscribe = subscribe(seen.append)
    try:
        bulkhead = Bulkhead(1, name="db")
        with bulkhead, pytest.raises(rs.BulkheadFull):
            bulkhead.call(lambda: None)
    finally:
        unsubscribe()
    rejected = [event for event in seen if isinstance(event, events.BulkheadRejected)]
    assert [(event.policy, event.reason) for event in rejected] == [("db", "queue_full")]

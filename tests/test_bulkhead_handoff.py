"""Bulkhead hand-off: a queued waiter that gives up never loses a slot nor raises
anything but CancelledError / BulkheadFull, whatever a concurrent release does.

Real event loops and threads; nothing asserts on timing. Where a test needs two
timer callbacks to run in one loop iteration, it blocks the loop briefly so that
both are due when it resumes (asyncio runs due timers in deadline order).
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from types import SimpleNamespace

import pytest

import resilience as rs
import resilience._primitives as primitives_module
from resilience.bulkhead import Bulkhead


def _free(bulkhead: Bulkhead) -> bool:
    stats = bulkhead.statistics
    return stats.active == 0 and stats.queued == 0


async def _queued(bulkhead: Bulkhead) -> asyncio.Task[None]:
    """A task waiting in ``bulkhead``'s queue (every slot must be taken)."""
    task = asyncio.create_task(bulkhead.aacquire())
    for _ in range(10):
        await asyncio.sleep(0)
        if bulkhead.statistics.queued:
            return task
    raise AssertionError("the task never queued")


# -- each await point, deterministically --------------------------------------------------


async def test_cancelled_then_skipped_by_a_release_raises_cancelled_error() -> None:
    bulkhead = Bulkhead(1, max_queued=1)
    await bulkhead.aacquire()
    waiter = await _queued(bulkhead)
    waiter.cancel()  # its future is cancelled at once; the task has not run yet
    bulkhead.release()  # pops the waiter, sees it cancelled, frees the slot
    with pytest.raises(asyncio.CancelledError):
        await waiter  # was: ValueError: deque.remove(x): x not in deque
    assert _free(bulkhead)
    await bulkhead.aacquire()  # the slot is really free
    bulkhead.release()


async def test_timed_out_then_skipped_by_a_release_raises_bulkhead_full() -> None:
    bulkhead = Bulkhead(1, max_queued=1, max_wait=0.01)
    await bulkhead.aacquire()
    waiter = await _queued(bulkhead)
    loop = asyncio.get_running_loop()
    loop.call_later(0.02, bulkhead.release)  # due after the waiter's timeout
    time.sleep(0.05)  # noqa: ASYNC251 - block the loop: both timers are then due
    with pytest.raises(rs.BulkheadFull):
        await waiter  # was: ValueError
    assert _free(bulkhead)


async def test_granted_then_cancelled_before_it_runs_passes_the_slot_on() -> None:
    bulkhead = Bulkhead(1, max_queued=2)
    await bulkhead.aacquire()
    first = await _queued(bulkhead)
    second = await _queued(bulkhead)
    bulkhead.release()  # hands the slot to ``first``...
    first.cancel()  # ...which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await first
    await second  # the slot went on to the next in line
    assert bulkhead.statistics.active == 1
    bulkhead.release()
    assert _free(bulkhead)


async def test_granted_as_its_wait_expires_keeps_the_slot() -> None:
    bulkhead = Bulkhead(1, max_queued=1, max_wait=0.01)
    await bulkhead.aacquire()
    waiter = asyncio.create_task(bulkhead.aacquire())
    await asyncio.sleep(0)
    bulkhead.release()  # granted while still inside asyncio.timeout
    time.sleep(0.02)  # noqa: ASYNC251 - block the loop: the timeout is due too
    await waiter  # holds the slot, raises nothing
    assert bulkhead.statistics.active == 1
    bulkhead.release()
    assert _free(bulkhead)


async def test_cancelled_inside_the_protected_call_frees_the_slot() -> None:
    bulkhead = Bulkhead(1, max_queued=1)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(bulkhead.acall(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _free(bulkhead)


def test_a_thread_interrupted_while_queued_passes_a_granted_slot_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bulkhead = Bulkhead(1, max_queued=2)
    bulkhead.acquire()

    class Interrupted(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            bulkhead.release()  # the slot is handed to this waiter...
            raise KeyboardInterrupt  # ...which is interrupted before it sees it

    # A queued thread waits on a Waiter (resilience._primitives), which makes the Event.
    monkeypatch.setattr(primitives_module, "threading", SimpleNamespace(Event=Interrupted))
    with pytest.raises(KeyboardInterrupt):
        bulkhead.acquire()
    monkeypatch.undo()
    assert _free(bulkhead)  # passed on: here to nobody, so the slot is free again
    bulkhead.acquire()
    bulkhead.release()


# -- huge waits reach no primitive as an overflowing value ----------------------------------


@pytest.mark.parametrize("max_wait", [1e308, 1e12, 10**400, True, math.nan, -1.0])
def test_max_wait_beyond_the_ceiling_is_refused(max_wait: object) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        Bulkhead(1, max_queued=1, max_wait=max_wait)
    assert caught.value.fields == ("max_wait",)


@pytest.mark.parametrize("max_wait", [math.inf, 1e9, None])
def test_a_long_sync_wait_does_not_overflow(max_wait: float | None) -> None:
    bulkhead = Bulkhead(1, max_queued=1, max_wait=max_wait)
    bulkhead.acquire()
    threading.Timer(0.05, bulkhead.release).start()
    bulkhead.acquire()  # waits on Event.wait: was OverflowError for 1e308
    bulkhead.release()
    assert _free(bulkhead)


async def test_a_long_async_wait_does_not_overflow() -> None:
    bulkhead = Bulkhead(1, max_queued=1, max_wait=1e9)
    await bulkhead.aacquire()
    asyncio.get_running_loop().call_later(0.01, bulkhead.release)
    await bulkhead.aacquire()
    bulkhead.release()
    assert _free(bulkhead)


@pytest.mark.parametrize("seconds", [1e9, math.inf])
def test_a_deadline_far_away_does_not_overflow(seconds: float) -> None:
    bulkhead = Bulkhead(1, max_queued=1)
    bulkhead.acquire()
    threading.Timer(0.05, bulkhead.release).start()
    rs.Timeout(seconds).call(bulkhead.acquire)  # the budget is the deadline: was OverflowError
    bulkhead.release()
    assert _free(bulkhead)


# -- mixed load -----------------------------------------------------------------------------


def test_mixed_load_never_raises_value_error_nor_leaks_a_slot() -> None:
    limit = 4
    bulkhead = Bulkhead(limit, max_queued=64, max_wait=0.003)
    lock = threading.Lock()
    running, peak = [0], [0]
    outcomes: dict[str, int] = {}
    unexpected: list[BaseException] = []

    def enter() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            assert running[0] <= limit

    def leave() -> None:
        with lock:
            running[0] -= 1

    def count(outcome: str) -> None:
        with lock:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    async def work(rng: random.Random) -> None:
        enter()
        try:
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
        finally:
            leave()

    async def one(rng: random.Random) -> None:
        try:
            await bulkhead.acall(work, rng)
            count("ran")
        except rs.BulkheadFull:
            count("full")

    async def loop_load(seed: int, stop: float) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            tasks = [asyncio.create_task(one(rng)) for _ in range(40)]
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
            for task in tasks:
                if rng.random() < 0.3:
                    task.cancel()  # at whatever await point it has reached
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, asyncio.CancelledError):
                    count("cancelled")
                elif isinstance(result, BaseException):
                    unexpected.append(result)

    def thread_load(seed: int, stop: float) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            try:
                with bulkhead:
                    enter()
                    if rng.random() < 0.5:
                        time.sleep(0)
                    leave()
                count("ran")
            except rs.BulkheadFull:
                count("full")
            except BaseException as error:  # pragma: no cover - the failure we look for
                unexpected.append(error)

    stop = time.monotonic() + 1.5
    threads = [
        threading.Thread(target=lambda s=seed: asyncio.run(loop_load(s, stop))) for seed in (1, 2)
    ] + [threading.Thread(target=thread_load, args=(seed, stop)) for seed in (3, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)
    assert not any(thread.is_alive() for thread in threads)
    assert unexpected == []  # was: hundreds of ValueError('deque.remove(x): x not in deque')
    assert 1 <= peak[0] <= limit
    assert _free(bulkhead), bulkhead.statistics  # no slot leaked
    assert outcomes.get("ran", 0) > 0 and outcomes.get("cancelled", 0) > 0
    for _ in range(limit):  # every slot can be taken again, at once
        bulkhead.acquire()
    with pytest.raises(rs.BulkheadFull):
        bulkhead.acquire()  # and then there is none: waits its 3 ms, refused
    for _ in range(limit):
        bulkhead.release()
    assert _free(bulkhead)

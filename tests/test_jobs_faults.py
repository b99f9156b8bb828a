"""The job queue under faults: a store that goes down, a worker cancelled mid-job.

The store here is the memory store behind a switch that makes every call fail
the way a real store's outage does (``StoreUnavailable``); the real stores'
own outages, and ``kill -9`` of real worker processes, are in
tests/test_jobs_fleet.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

import resilience as rs
from resilience.jobs import JobQueue, current
from resilience.storage.jobs import MemoryJobStore
from resilience.testing import FakeClock

T0 = 1_700_000_000.25


class SwitchedStore:
    """A memory job store that fails every call while ``down``."""

    def __init__(self, clock: FakeClock) -> None:
        self.inner = MemoryJobStore(clock)
        self.down = False
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not name.startswith(("job_", "ajob_")):
            return target

        def check() -> None:
            if self.down:
                self.failures += 1
                raise rs.StoreUnavailable("switched://", "connection refused")

        if name.startswith("ajob_"):

            async def acall(*args: Any, **kwargs: Any) -> Any:
                check()
                return await target(*args, **kwargs)

            return acall

        def call(*args: Any, **kwargs: Any) -> Any:
            check()
            return target(*args, **kwargs)

        return call


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def test_enqueue_and_run_once_fail_closed(clock: FakeClock) -> None:
    store = SwitchedStore(clock)
    queue = JobQueue("q", store=store)

    @queue.handler
    def task() -> None:
        pass

    store.down = True
    with pytest.raises(rs.StoreUnavailable):
        queue.enqueue(task)
    with pytest.raises(rs.StoreUnavailable):
        queue.enqueue_batch(task, [{}, {}])
    with pytest.raises(rs.StoreUnavailable):
        queue.run_once()
    store.down = False
    assert queue.stats().total == 0  # nothing half-written, nothing silently dropped


def test_a_worker_waits_out_an_outage(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="resilience.storage")
    store = SwitchedStore(clock)
    queue = JobQueue("q", store=store, poll_interval=0.001)
    stop = threading.Event()
    done: list[int] = []

    @queue.handler
    def task(n: int) -> None:
        done.append(n)
        stop.set()

    queue.enqueue(task, n=1)
    store.down = True
    worker = threading.Thread(target=queue.work, kwargs={"stop": stop})
    worker.start()
    while store.failures < 3:  # the worker keeps trying, with a growing pause
        threading.Event().wait(0.001)
    store.down = False
    worker.join(timeout=30)
    assert not worker.is_alive() and done == [1]
    messages = [record.getMessage() for record in caplog.records]
    assert sum("unavailable" in message for message in messages) == 1  # once per outage
    assert sum("available again" in message for message in messages) == 1


def test_a_settle_lost_to_an_outage_runs_again_keeping_its_attempts(clock: FakeClock) -> None:
    store = SwitchedStore(clock)
    queue = JobQueue("q", store=store, lease=10.0, retry=rs.Retry(attempts=3))
    runs: list[int] = []

    @queue.handler
    def task() -> None:
        runs.append(current().attempt)
        store.down = len(runs) == 1  # the store fails while the first attempt finishes

    job_id = queue.enqueue(task)
    counts = queue.run_once()
    assert counts.lost == 1
    store.down = False
    assert queue.job(job_id).state == "running"  # type: ignore[union-attr]
    clock.advance(10.0)  # its lease lapses
    assert queue.run_once().done == 1
    job = queue.job(job_id)
    assert job is not None and (job.state, job.attempts) == ("done", 2)


def test_a_cancelled_worker_hands_its_jobs_back_at_once(clock: FakeClock) -> None:
    store = MemoryJobStore(clock)
    queue = JobQueue("q", store=store, retry=rs.Retry(attempts=1))
    started = asyncio.Event()

    @queue.handler
    async def slow() -> None:
        started.set()
        await asyncio.sleep(3600)

    async def main() -> None:
        job_id = await queue.aenqueue(slow)
        worker = asyncio.create_task(queue.awork(concurrency=2))
        await started.wait()
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
        job = await queue.ajob(job_id)
        # pending again, due now, and its one attempt given back: not dead-lettered
        assert job is not None and (job.state, job.attempts) == ("pending", 0)
        assert job.next_attempt_at == T0

    asyncio.run(main())

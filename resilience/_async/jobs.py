"""The job queue's drivers, written once (see :mod:`resilience.jobs`).

Functions taking the queue first; :class:`~resilience.jobs.JobQueue` binds them
as its methods. The store does the bookkeeping (its calls are atomic); these
run handlers, heartbeat the leases they hold, and settle each attempt with the
retry's decision. Nothing here ever sleeps through a retry's delay: a failed
attempt goes back to the store with the time it is next due.
"""

from __future__ import annotations

import asyncio  # unasync: async only
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .._primitives import (
    AsyncTicker,
    AsyncWorkerPool,
    acall_handler,
    asleep_until_stopped,
)
from ..errors import StoreUnavailable
from ..storage.jobs import BatchProgress, Job, JobState, LeaseLost, QueueStats
from ..telemetry.otel import job_attempt_span, job_enqueue_span, record_job_error

if TYPE_CHECKING:
    from ..jobs import Batch, CurrentJob, JobQueue, RunCounts, _Handler, _Tally

# Store calls made per enqueue_batch call: big batches go in chunks of this many jobs.
BATCH_CHUNK = 1000


# -- enqueueing ------------------------------------------------------------------------------


async def aenqueue(
    queue: JobQueue,
    handler: Any,
    kwargs: Mapping[str, Any],
    *,
    key: str | None,
    priority: int | None,
    delay: float,
    attempts: int | None,
    connection: Any,
) -> int:
    """Add one job: its id (the holder's, if ``key`` is held already)."""
    spec = queue._handler_named(handler)
    new = queue._new_job(spec, kwargs, key, priority, delay, attempts, None)
    with job_enqueue_span(queue.name, spec.name) as trace:
        if trace is not None:
            new = replace(new, trace=trace)
        try:
            [(job_id, created)] = await queue._store.ajob_enqueue(
                queue.name, [new], connection=connection
            )
        except StoreUnavailable as error:
            queue._report_outage(error)
            raise
    queue._report_enqueued(spec.name, job_id, created)
    return job_id


async def aenqueue_batch(
    queue: JobQueue,
    handler: Any,
    items: Iterable[Mapping[str, Any]],
    *,
    key: Any,
    batch: str | None,
    priority: int | None,
    delay: float,
    attempts: int | None,
    connection: Any,
) -> Batch:
    """Add a job per item (each item the handler's keyword arguments), as one batch."""
    spec = queue._handler_named(handler)
    name = queue._batch_name(batch)
    news = [
        queue._new_job(
            spec, item, queue._item_key(key, item, index), priority, delay, attempts, name
        )
        for index, item in enumerate(items)
    ]
    ids: list[int] = []
    created_count = 0
    with job_enqueue_span(queue.name, spec.name) as trace:
        if trace is not None:
            news = [replace(new, trace=trace) for new in news]
        for start in range(0, len(news), BATCH_CHUNK):
            try:
                answers = await queue._store.ajob_enqueue(
                    queue.name, news[start : start + BATCH_CHUNK], connection=connection
                )
            except StoreUnavailable as error:
                queue._report_outage(error)
                raise
            for job_id, created in answers:
                queue._report_enqueued(spec.name, job_id, created)
                ids.append(job_id)
                created_count += created
    return queue._batch(name, ids, created_count)


# -- running ---------------------------------------------------------------------------------


async def arun_once(queue: JobQueue, limit: int, concurrency: int) -> RunCounts:
    """One pass: claim up to ``limit`` due jobs, run them (``concurrency`` at a time),
    settle each. Raises :class:`~resilience.StoreUnavailable` if the claim fails."""
    limit, concurrency = queue._check_run(limit, concurrency)
    tally = queue._tally()
    await _apurge(queue)  # a pass is a cron tick: purging each one costs one indexed delete
    try:
        jobs = await queue._store.ajob_claim(queue.name, tally.worker, limit, queue._lease)
    except StoreUnavailable as error:
        queue._report_outage(error)
        raise
    queue._report_recovered()
    if not jobs:
        return tally.counts()
    tally.hold(jobs)
    pool = AsyncWorkerPool(concurrency)
    async with AsyncTicker(lambda: _aheartbeat(queue, tally), queue._beat_every):
        try:
            for job in jobs:
                await pool.wait_free()
                pool.submit(_arun_job, queue, job, tally)
        except BaseException:
            pool.cancel()
            raise
        finally:
            await pool.aclose()
    return tally.counts()


async def awork(queue: JobQueue, concurrency: int, stop: Any, until_empty: bool) -> RunCounts:
    """Run jobs as they fall due, ``concurrency`` at a time, until ``stop`` is set (or,
    with ``until_empty``, until nothing is due). A store outage is waited out."""
    _, concurrency = queue._check_run(1, concurrency)
    tally = queue._tally()
    pool = AsyncWorkerPool(concurrency)
    pause = queue._poll_interval
    async with AsyncTicker(lambda: _aheartbeat(queue, tally), queue._beat_every):
        try:
            while stop is None or not stop.is_set():
                free = await pool.wait_free()
                await _apurge_when_due(queue)
                try:
                    jobs = await queue._store.ajob_claim(
                        queue.name, tally.worker, free, queue._lease
                    )
                except StoreUnavailable as error:
                    queue._report_outage(error)
                    pause = min(pause * 2, queue._outage_pause)
                    if await asleep_until_stopped(stop, pause):
                        break
                    continue
                queue._report_recovered()
                pause = queue._poll_interval
                if jobs:
                    tally.hold(jobs)
                    for job in jobs:
                        pool.submit(_arun_job, queue, job, tally)
                    continue
                if until_empty:
                    if not tally.running():
                        break
                    await pool.join()
                    continue
                if await asleep_until_stopped(stop, queue._poll_interval):
                    break
        except BaseException:  # cancelled, interrupted: hand the running jobs back now
            pool.cancel()
            raise
        finally:
            await pool.aclose()
    return tally.counts()


async def _apurge_when_due(queue: JobQueue) -> None:
    """A long-running worker purges at most once a minute."""
    if time.monotonic() >= queue._next_purge:
        queue._next_purge = time.monotonic() + 60.0
        await _apurge(queue)


async def _apurge(queue: JobQueue) -> None:
    retention = queue._retention
    if retention is None:
        return
    try:
        await queue._store.ajob_purge(queue.name, retention)
    except StoreUnavailable as error:  # the claim that follows reports the outage
        del error


async def _aheartbeat(queue: JobQueue, tally: _Tally) -> None:
    held = tally.held()
    if not held:
        return
    try:
        await queue._store.ajob_heartbeat(queue.name, tally.worker, held, queue._lease)
    except StoreUnavailable as error:  # the next beat tries again; a lapse means a rerun
        queue._report_outage(error)


async def _arun_job(queue: JobQueue, job: Job, tally: _Tally) -> None:
    current = queue._current(job, tally.worker)
    token = queue._enter(current)
    started = time.monotonic()
    try:
        outcome = await _aattempt(queue, job, current, started)
    finally:
        queue._leave(token)
        tally.release(job.id)
    tally.count(outcome)


async def _aattempt(queue: JobQueue, job: Job, current: CurrentJob, started: float) -> str:
    """Run one attempt of ``job`` and settle it: the outcome."""
    spec = queue._handlers.get(job.handler)
    with job_attempt_span(queue.name, job.handler, job.id, job.attempts, job.trace) as span:
        try:
            if spec is None:
                raise LookupError(f"no handler named {job.handler!r} in this worker")
            kwargs = json.loads(job.payload)
            await _ainvoke(queue, spec, job, kwargs, current)
        except LeaseLost:
            return queue._settled(job, "lost")
        except Exception as error:
            record_job_error(span, error)
            return await _asettle_failure(queue, job, spec, current, error, started)
        except BaseException:  # cancelled, interrupted: hand the job back at once
            await _arelease(queue, job, current)
            raise
    if current.completed:
        return queue._settled(job, "done")
    try:
        done = await queue._store.ajob_complete(queue.name, job.id, current.worker)
    except StoreUnavailable as error:
        queue._report_outage(error)
        return queue._settled(job, "lost")
    return queue._settled(job, "done" if done else "lost")


async def _ainvoke(
    queue: JobQueue, spec: _Handler, job: Job, kwargs: dict[str, Any], current: CurrentJob
) -> None:
    async def run() -> Any:
        current.entered = True
        return await acall_handler(spec.fn, kwargs)

    call = run
    if spec.timeout is not None:
        call = spec.timeout.wrap_async(call)
    if spec.slots is not None:
        call = spec.slots.wrap_async(call)
    gate = queue._gate_for(job)
    if gate is not None:
        call = gate.wrap_async(call)
    await call()


async def _asettle_failure(
    queue: JobQueue,
    job: Job,
    spec: _Handler | None,
    current: CurrentJob,
    error: Exception,
    started: float,
) -> str:
    store, worker = queue._store, current.worker
    try:
        refusal = queue._gate_refusal(error, current)
        if refusal is not None:
            deferred = await store.ajob_defer(queue.name, job.id, worker, refusal)
            return queue._settled(job, "deferred" if deferred else "lost", delay=refusal)
        decision = queue._decide(job, spec, error, started)
        settled = await store.ajob_fail(
            queue.name,
            job.id,
            worker,
            retry=decision.retry,
            delay=decision.delay,
            error_class=None if decision.error_class is None else decision.error_class.value,
            reason=decision.reason,
            error=queue._error_text(error),
        )
    except StoreUnavailable as outage:
        queue._report_outage(outage)
        return queue._settled(job, "lost", error=error)
    if not settled:
        return queue._settled(job, "lost", error=error)
    return queue._settled_failure(job, decision, error)


async def _arelease(queue: JobQueue, job: Job, current: CurrentJob) -> None:
    """Give an interrupted job back (pending now, its attempt returned), even while
    being cancelled again; if the store cannot be told, its lease lapses instead."""
    args = (queue.name, job.id, current.worker, 0.0)
    try:
        await asyncio.shield(queue._store.ajob_defer(*args))  # unasync: async only
        # unasync: sync queue._store.job_defer(*args)
    except BaseException:  # the lease lapses; the job runs again later
        return


# -- reading and operating -------------------------------------------------------------------


async def ajob(queue: JobQueue, job_id: int) -> Job | None:
    """The job with this id, or ``None`` (never enqueued here, or purged)."""
    return await queue._store.ajob_get(queue.name, queue._check_id(job_id))


async def ajobs(queue: JobQueue, state: JobState | None, limit: int) -> list[Job]:
    """Up to ``limit`` jobs (in ``state``), by id; dead ones by when they died."""
    return await queue._store.ajob_list(queue.name, state, limit)


async def astats(queue: JobQueue) -> QueueStats:
    """Counts by state, due jobs and lag, read from the store now."""
    return await queue._store.ajob_stats(queue.name)


async def adead_letters(queue: JobQueue, limit: int) -> list[Job]:
    """Up to ``limit`` dead jobs, the earliest dead first."""
    return await queue._store.ajob_list(queue.name, "dead", limit)


async def areplay(queue: JobQueue, job_id: int) -> bool:
    """A dead job back to pending, due now, attempts reset; ``False`` if it is not dead."""
    return await queue._store.ajob_replay(queue.name, queue._check_id(job_id))


async def areplay_all(queue: JobQueue) -> int:
    """Every dead job back to pending: how many."""
    return await queue._store.ajob_replay_all(queue.name)


async def apurge(queue: JobQueue, older_than: float) -> int:
    """Remove the done and dead jobs finished more than ``older_than`` seconds ago."""
    return await queue._store.ajob_purge(queue.name, older_than)


async def aprogress(queue: JobQueue, batch: str) -> BatchProgress:
    """How far ``batch`` has got, read from the store now."""
    return await queue._store.ajob_progress(queue.name, batch)


async def acomplete(current: CurrentJob, connection: Any) -> None:
    """Settle the running job as done on ``connection``, inside the caller's transaction
    (see :meth:`~resilience.jobs.CurrentJob.complete`)."""
    current._check_complete(connection)
    await current.queue._store.ajob_complete(
        current.queue.name, current.job.id, current.worker, connection=connection
    )
    current.completed = True


__all__: Sequence[str] = [
    "acomplete",
    "adead_letters",
    "aenqueue",
    "aenqueue_batch",
    "ajob",
    "ajobs",
    "aprogress",
    "apurge",
    "areplay",
    "areplay_all",
    "arun_once",
    "astats",
    "awork",
]

"""Where a durable job queue keeps its jobs: the protocol, and the memory store.

The contract
------------
* **The core's rules.** :mod:`resilience._core.jobs` states what each call does
  (enqueue with idempotency keys, leased claims by priority, settling by the
  lease holder only, defer, replay, purge, stats, batch progress). The memory
  and SQLite stores apply its per-job transitions to their records; the
  PostgreSQL and Redis stores do the same in SQL and Lua, and the conformance
  suite holds every store to the core's model.
* **Store time, relative arguments.** Every time a job records (``created_at``,
  ``next_attempt_at``, ``lease_until``, ``finished_at``) is on the store's clock,
  in seconds since the epoch: the injected clock of the memory and SQLite stores
  (the wall clock by default), PostgreSQL's ``clock_timestamp()``, Redis
  ``TIME``. Callers pass durations only (``delay``, ``lease``, ``older_than``),
  so workers whose clocks disagree still agree on what is due.
* **Atomic claims.** A claim takes due jobs and leases them in one step; no job
  is handed to two workers while its lease is alive.
* **Exactly once where the store allows.** A store that keeps its jobs in a
  database the handler can write to (SQLite, PostgreSQL) accepts
  ``connection=``: the caller's own connection, inside the caller's own
  transaction, for ``job_complete`` (the job is done if and only if the
  caller's transaction commits) and ``job_enqueue`` (the outbox pattern). It says
  so with :class:`TransactionalJobStore`.
* **Sync and async.** Every method has an ``a``-prefixed coroutine twin. Names
  start with ``job_`` so that one class can implement every policy's protocol.
* **Failures.** A store that cannot answer raises
  :class:`~resilience.StoreUnavailable`, never a driver's exception; a claim it
  could not confirm may have leased jobs, which then lapse and are claimed again.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, runtime_checkable

from .._core import jobs as core
from .._core.jobs import BatchProgress, Job, JobState, QueueStats
from ..clock import Clock
from ..errors import ResilienceError

__all__ = [
    "DEFAULT_PRIORITY",
    "JOB_STATES",
    "BatchProgress",
    "Job",
    "JobState",
    "JobStore",
    "LeaseLost",
    "MemoryJobStore",
    "NewJob",
    "QueueStats",
    "TransactionalJobStore",
    "WallClock",
]

DEFAULT_PRIORITY: Final = 5
"""The priority of a job enqueued without one (1 is the most urgent)."""

JOB_STATES: Final[tuple[JobState, ...]] = ("pending", "running", "done", "dead")


class LeaseLost(ResilienceError):
    """A worker settled a job whose lease it no longer holds (it lapsed and was
    claimed again, or the job was settled already). Raised by
    ``complete(connection=...)`` so that the caller's transaction rolls back."""

    def __init__(self, queue: str, job_id: int) -> None:
        super().__init__(f"job {job_id} of queue {queue!r}: this worker's lease has lapsed")
        self.queue = queue
        self.job_id = job_id


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to enqueue: what the store records (the queue comes with the call)."""

    handler: str
    payload: str
    """The handler's keyword arguments as JSON text."""
    key: str | None = None
    priority: int = DEFAULT_PRIORITY
    delay: float = 0.0
    max_attempts: int | None = None
    batch: str | None = None
    trace: str | None = None

    def check(self) -> None:
        """Refuse invalid values with a ``ValueError`` naming the field."""
        core.check_new(
            priority=self.priority, delay=self.delay, max_attempts=self.max_attempts, now=0.0
        )


class WallClock:
    """Seconds since the epoch: what job times are kept in (they outlive processes)."""

    __slots__ = ()

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "WallClock()"


@runtime_checkable
class JobStore(Protocol):
    """Jobs of named queues. See the module's docstring for the contract."""

    def job_enqueue(
        self, queue: str, jobs: Sequence[NewJob], *, connection: Any = None
    ) -> list[tuple[int, bool]]:
        """Add ``jobs`` (all or none): ``(job id, created)`` for each, in order.
        A key already held in the queue (or earlier in ``jobs``) gives the
        holder's id and ``False``."""
        ...

    def job_claim(self, queue: str, worker: str, limit: int, lease: float) -> list[Job]:
        """Lease up to ``limit`` due jobs to ``worker`` for ``lease`` seconds."""
        ...

    def job_heartbeat(
        self, queue: str, worker: str, job_ids: Sequence[int], lease: float
    ) -> list[int]:
        """Renew ``worker``'s live leases: the ids it still holds."""
        ...

    def job_complete(self, queue: str, job_id: int, worker: str, *, connection: Any = None) -> bool:
        """The lease holder settles the job as done; ``False`` if it holds no live
        lease (with ``connection``: raise :class:`LeaseLost` instead)."""
        ...

    def job_fail(
        self,
        queue: str,
        job_id: int,
        worker: str,
        *,
        retry: bool,
        delay: float | None,
        error_class: str | None,
        reason: str | None,
        error: str | None,
    ) -> bool: ...

    def job_defer(self, queue: str, job_id: int, worker: str, delay: float) -> bool: ...

    def job_get(self, queue: str, job_id: int) -> Job | None: ...

    def job_list(self, queue: str, state: JobState | None = None, limit: int = 100) -> list[Job]:
        """Up to ``limit`` jobs (in ``state``), by id; dead ones by finish time."""
        ...

    def job_stats(self, queue: str) -> QueueStats: ...

    def job_replay(self, queue: str, job_id: int) -> bool: ...

    def job_replay_all(self, queue: str) -> int: ...

    def job_purge(self, queue: str, older_than: float) -> int:
        """Remove done and dead jobs finished more than ``older_than`` seconds ago."""
        ...

    def job_progress(self, queue: str, batch: str) -> BatchProgress: ...

    def job_queues(self) -> list[str]:
        """The names of the queues that hold jobs, sorted."""
        ...

    async def ajob_enqueue(
        self, queue: str, jobs: Sequence[NewJob], *, connection: Any = None
    ) -> list[tuple[int, bool]]: ...

    async def ajob_claim(self, queue: str, worker: str, limit: int, lease: float) -> list[Job]: ...

    async def ajob_heartbeat(
        self, queue: str, worker: str, job_ids: Sequence[int], lease: float
    ) -> list[int]: ...

    async def ajob_complete(
        self, queue: str, job_id: int, worker: str, *, connection: Any = None
    ) -> bool: ...

    async def ajob_fail(
        self,
        queue: str,
        job_id: int,
        worker: str,
        *,
        retry: bool,
        delay: float | None,
        error_class: str | None,
        reason: str | None,
        error: str | None,
    ) -> bool: ...

    async def ajob_defer(self, queue: str, job_id: int, worker: str, delay: float) -> bool: ...

    async def ajob_get(self, queue: str, job_id: int) -> Job | None: ...

    async def ajob_list(
        self, queue: str, state: JobState | None = None, limit: int = 100
    ) -> list[Job]: ...

    async def ajob_stats(self, queue: str) -> QueueStats: ...

    async def ajob_replay(self, queue: str, job_id: int) -> bool: ...

    async def ajob_replay_all(self, queue: str) -> int: ...

    async def ajob_purge(self, queue: str, older_than: float) -> int: ...

    async def ajob_progress(self, queue: str, batch: str) -> BatchProgress: ...

    async def ajob_queues(self) -> list[str]: ...


@runtime_checkable
class TransactionalJobStore(JobStore, Protocol):
    """A job store whose ``job_complete`` and ``job_enqueue`` accept the caller's
    connection to the same database (exactly-once effects, the outbox)."""

    job_transactional: Literal[True]


def check_list_arguments(state: JobState | None, limit: int) -> None:
    if state is not None and state not in JOB_STATES:
        raise ValueError(f"state must be one of {', '.join(JOB_STATES)} or None, got {state!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")


def check_duration(value: float, name: str, *, positive: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


class _Queue:
    """One queue's jobs and indexes in memory."""

    __slots__ = ("jobs", "keys", "leases", "ready", "waiting")

    def __init__(self) -> None:
        self.jobs: dict[int, Job] = {}
        self.keys: dict[str, int] = {}
        # Heaps, stale entries skipped on pop (an entry is live while it matches its job):
        self.waiting: list[tuple[float, int]] = []  # pending jobs by due time
        self.ready: list[tuple[int, float, int]] = []  # due pending jobs, in claim order
        self.leases: list[tuple[float, int]] = []  # running jobs by lease end

    def schedule(self, job: Job) -> None:
        self.jobs[job.id] = job
        if job.state == "pending":
            heapq.heappush(self.waiting, (job.next_attempt_at, job.id))
        elif job.state == "running":
            assert job.lease_until is not None
            heapq.heappush(self.leases, (job.lease_until, job.id))

    def promote(self, now: float) -> None:
        """Move due pending jobs and lapsed running ones into ``ready``."""
        while self.waiting and self.waiting[0][0] <= now:
            due_at, job_id = heapq.heappop(self.waiting)
            job = self.jobs.get(job_id)
            if job is not None and job.state == "pending" and job.next_attempt_at == due_at:
                heapq.heappush(self.ready, core.claim_order(job))
        while self.leases and self.leases[0][0] <= now:
            until, job_id = heapq.heappop(self.leases)
            job = self.jobs.get(job_id)
            if job is None or job.state != "running" or job.lease_until != until:
                continue
            if core.lapsed(job):
                self.jobs[job_id] = core.lapsed_dead(job, now)
            else:
                heapq.heappush(self.ready, core.claim_order(job))

    def pop_ready(self, now: float) -> Job | None:
        while self.ready:
            _, due_at, job_id = heapq.heappop(self.ready)
            job = self.jobs.get(job_id)
            if job is not None and job.next_attempt_at == due_at and core.is_due(job, now):
                return job
        return None


class MemoryJobStore:
    """Jobs in this process's memory: for tests, demos and work that may be lost
    with the process. ``clock`` (default: the wall clock) dates every job, so a
    fake clock runs a 24-hour schedule in milliseconds. Thread-safe."""

    job_infallible: Literal[True] = True

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = WallClock() if clock is None else clock
        self._lock = threading.Lock()
        self._queues: dict[str, _Queue] = {}
        self._ids = itertools.count(1)

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue()
        return queue

    def _held(self, queue: str, job_id: int, worker: str, now: float) -> Job | None:
        found = self._queues.get(queue)
        job = None if found is None else found.jobs.get(job_id)
        return job if job is not None and core.holds_lease(job, worker, now) else None

    # -- sync ---------------------------------------------------------------------------

    def job_enqueue(
        self, queue: str, jobs: Sequence[NewJob], *, connection: Any = None
    ) -> list[tuple[int, bool]]:
        if connection is not None:
            raise TypeError("the memory store has no transactions: connection= is not supported")
        for new in jobs:
            new.check()
        with self._lock:
            now = self.clock.now()
            records = self._queue(queue)
            answers: list[tuple[int, bool]] = []
            for new in jobs:
                if new.key is not None and new.key in records.keys:
                    answers.append((records.keys[new.key], False))
                    continue
                job = Job(
                    id=next(self._ids),
                    queue=queue,
                    handler=new.handler,
                    payload=new.payload,
                    key=new.key,
                    priority=new.priority,
                    state="pending",
                    attempts=0,
                    max_attempts=new.max_attempts,
                    next_attempt_at=now + new.delay,
                    created_at=now,
                    batch=new.batch,
                    trace=new.trace,
                )
                if new.key is not None:
                    records.keys[new.key] = job.id
                records.schedule(job)
                answers.append((job.id, True))
            return answers

    def job_claim(self, queue: str, worker: str, limit: int, lease: float) -> list[Job]:
        with self._lock:
            now = self.clock.now()
            core.check_claim(now=now, limit=limit, lease=lease)
            records = self._queue(queue)
            records.promote(now)
            claimed: list[Job] = []
            while len(claimed) < limit:
                job = records.pop_ready(now)
                if job is None:
                    break
                taken = core.taken(job, worker, now, lease)
                records.schedule(taken)
                claimed.append(taken)
            return claimed

    def job_heartbeat(
        self, queue: str, worker: str, job_ids: Sequence[int], lease: float
    ) -> list[int]:
        check_duration(lease, "lease", positive=True)
        with self._lock:
            now = self.clock.now()
            held = []
            for job_id in job_ids:
                job = self._held(queue, job_id, worker, now)
                if job is not None:
                    self._queues[queue].schedule(core.renewed(job, now, lease))
                    held.append(job_id)
            return held

    def job_complete(self, queue: str, job_id: int, worker: str, *, connection: Any = None) -> bool:
        if connection is not None:
            raise TypeError("the memory store has no transactions: connection= is not supported")
        with self._lock:
            now = self.clock.now()
            job = self._held(queue, job_id, worker, now)
            if job is None:
                return False
            self._queues[queue].schedule(core.completed(job, now))
            return True

    def job_fail(
        self,
        queue: str,
        job_id: int,
        worker: str,
        *,
        retry: bool,
        delay: float | None,
        error_class: str | None,
        reason: str | None,
        error: str | None,
    ) -> bool:
        with self._lock:
            now = self.clock.now()
            job = self._held(queue, job_id, worker, now)
            if job is None:
                return False
            settled = core.failed(
                job,
                now,
                retry=retry,
                delay=delay,
                error_class=error_class,
                reason=reason,
                error=error,
            )
            self._queues[queue].schedule(settled)
            return True

    def job_defer(self, queue: str, job_id: int, worker: str, delay: float) -> bool:
        check_duration(delay, "delay")
        with self._lock:
            now = self.clock.now()
            job = self._held(queue, job_id, worker, now)
            if job is None:
                return False
            self._queues[queue].schedule(core.deferred(job, now, now + delay))
            return True

    def job_get(self, queue: str, job_id: int) -> Job | None:
        with self._lock:
            found = self._queues.get(queue)
            return None if found is None else found.jobs.get(job_id)

    def job_list(self, queue: str, state: JobState | None = None, limit: int = 100) -> list[Job]:
        check_list_arguments(state, limit)
        with self._lock:
            found = self._queues.get(queue)
            if found is None:
                return []
            if state == "dead":
                dead = [job for job in found.jobs.values() if job.state == "dead"]
                dead.sort(key=lambda job: (job.finished_at or 0.0, job.id))
                return dead[:limit]
            chosen = (job for job in found.jobs.values() if state is None or job.state == state)
            return sorted(chosen, key=lambda job: job.id)[:limit]

    def job_stats(self, queue: str) -> QueueStats:
        with self._lock:
            found = self._queues.get(queue)
            return core.count_stats(() if found is None else found.jobs.values(), self.clock.now())

    def job_replay(self, queue: str, job_id: int) -> bool:
        with self._lock:
            found = self._queues.get(queue)
            job = None if found is None else found.jobs.get(job_id)
            if found is None or job is None or job.state != "dead":
                return False
            found.schedule(core.replayed(job, self.clock.now()))
            return True

    def job_replay_all(self, queue: str) -> int:
        with self._lock:
            found = self._queues.get(queue)
            if found is None:
                return 0
            now = self.clock.now()
            dead = [job for job in found.jobs.values() if job.state == "dead"]
            for job in dead:
                found.schedule(core.replayed(job, now))
            return len(dead)

    def job_purge(self, queue: str, older_than: float) -> int:
        check_duration(older_than, "older_than")
        with self._lock:
            found = self._queues.get(queue)
            if found is None:
                return 0
            before = self.clock.now() - older_than
            gone = [job for job in found.jobs.values() if core.purgeable(job, before)]
            for job in gone:
                del found.jobs[job.id]
                if job.key is not None and found.keys.get(job.key) == job.id:
                    del found.keys[job.key]
            return len(gone)

    def job_progress(self, queue: str, batch: str) -> BatchProgress:
        with self._lock:
            found = self._queues.get(queue)
            jobs = () if found is None else found.jobs.values()
            return core.count_progress(job for job in jobs if job.batch == batch)

    def job_queues(self) -> list[str]:
        with self._lock:
            return sorted(name for name, queue in self._queues.items() if queue.jobs)

    # -- async: the same, at once (nothing here waits) -----------------------------------------

    async def ajob_enqueue(
        self, queue: str, jobs: Sequence[NewJob], *, connection: Any = None
    ) -> list[tuple[int, bool]]:
        return self.job_enqueue(queue, jobs, connection=connection)

    async def ajob_claim(self, queue: str, worker: str, limit: int, lease: float) -> list[Job]:
        return self.job_claim(queue, worker, limit, lease)

    async def ajob_heartbeat(
        self, queue: str, worker: str, job_ids: Sequence[int], lease: float
    ) -> list[int]:
        return self.job_heartbeat(queue, worker, job_ids, lease)

    async def ajob_complete(
        self, queue: str, job_id: int, worker: str, *, connection: Any = None
    ) -> bool:
        return self.job_complete(queue, job_id, worker, connection=connection)

    async def ajob_fail(
        self,
        queue: str,
        job_id: int,
        worker: str,
        *,
        retry: bool,
        delay: float | None,
        error_class: str | None,
        reason: str | None,
        error: str | None,
    ) -> bool:
        return self.job_fail(
            queue,
            job_id,
            worker,
            retry=retry,
            delay=delay,
            error_class=error_class,
            reason=reason,
            error=error,
        )

    async def ajob_defer(self, queue: str, job_id: int, worker: str, delay: float) -> bool:
        return self.job_defer(queue, job_id, worker, delay)

    async def ajob_get(self, queue: str, job_id: int) -> Job | None:
        return self.job_get(queue, job_id)

    async def ajob_list(
        self, queue: str, state: JobState | None = None, limit: int = 100
    ) -> list[Job]:
        return self.job_list(queue, state, limit)

    async def ajob_stats(self, queue: str) -> QueueStats:
        return self.job_stats(queue)

    async def ajob_replay(self, queue: str, job_id: int) -> bool:
        return self.job_replay(queue, job_id)

    async def ajob_replay_all(self, queue: str) -> int:
        return self.job_replay_all(queue)

    async def ajob_purge(self, queue: str, older_than: float) -> int:
        return self.job_purge(queue, older_than)

    async def ajob_progress(self, queue: str, batch: str) -> BatchProgress:
        return self.job_progress(queue, batch)

    async def ajob_queues(self) -> list[str]:
        return self.job_queues()

    def __repr__(self) -> str:
        return f"MemoryJobStore(clock={self.clock!r})"

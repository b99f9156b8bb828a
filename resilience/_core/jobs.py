"""The durable job queue's rules, over plain values (issue 13's pure core).

A :class:`QueueState` holds every job of every queue (a queue is a name on
each :class:`Job`). Each function takes a state and returns the state to keep
next with its answer; states are never changed in place (copy-on-write), so a
caller may keep the old one. No clock reads, locks or I/O: ``now`` is passed
in, and the caller (a store) serializes access. This is the groundwork of
issue 13: the job stores to come (memory, SQLite, PostgreSQL, Redis) are to
apply these rules or be held to them by the conformance suite.

The rules
---------
- **Enqueue** gives ids in enqueue order. A job with a ``key`` is idempotent
  per ``(queue, key)``: a second enqueue returns the first job's id with
  ``created=False``, whatever that job's state (done and dead included). Once
  the first job is purged its key is free, and the key can be enqueued again
  as a new job.
- **Due**: a pending job whose ``next_attempt_at <= now``, or a running job
  whose lease has lapsed (``lease_until <= now``: its worker died). A lease is
  *alive* while ``now < lease_until``.
- **Claim** takes up to ``limit`` due jobs of one queue, by priority (1 first),
  then ``next_attempt_at``, then id. Each becomes running with
  ``attempts + 1``, leased to the worker until ``now + lease``. A retaken job
  keeps its attempts. A lapsed job that has already started its last attempt
  (``attempts >= max_attempts``) is not run again: claim dead-letters it
  (reason ``"attempts"``, error ``"lease lapsed"``). So a job that kills its
  worker (a poison pill) cannot run forever.
- **Settling** (``heartbeat``, ``complete``, ``fail``, ``defer``) is allowed
  only to the worker holding a live lease; otherwise the answer is ``False``
  and the state is unchanged (a late worker lost the job to another one).
  ``heartbeat`` sets the lease to ``now + lease``.
- **Fail** takes the fields of a ``RetryDecision`` as plain values. With
  ``retry=True`` the job is pending again at ``now + delay``; with
  ``retry=False`` it is dead with the decision's reason. When the job has used
  ``max_attempts`` (if set), it is dead whatever the decision says; a decision
  to retry becomes the reason ``"attempts"``, and a decision to give up keeps
  its own reason (a permanent error on the last attempt still reads as
  ``"not_retryable"``, as does a give-up with no reason). ``max_attempts=None``
  sets no limit in the core: the retry's decision is then the only limit, so a
  facade should store the retry's attempts on each job.
- **Defer** (a gate refused: rate limit, open circuit) puts the job back to
  pending at ``max(until, now)`` and gives back the attempt claim counted.
- **Replay** moves a dead job back to pending at ``now`` with no attempts. It
  keeps ``last_error``; ``reason`` and ``finished_at`` are cleared.
- **Purge** removes the done and dead jobs of a queue finished strictly before
  a time, and frees their keys.
- **Stats**: counts by state, and ``lag``, the age of the oldest due pending
  job (0 if none). **Progress** counts the jobs of a batch still in the state
  (purged jobs are not counted); an empty batch is 100 % done.

Invalid input raises :class:`ValueError` naming the argument: a time or delay
that is NaN or infinite, a negative delay, a lease that is not positive, a
priority outside ``1..MAX_PRIORITY``, a ``limit`` or ``max_attempts`` below 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

__all__ = [
    "LAPSED",
    "MAX_PRIORITY",
    "BatchProgress",
    "Job",
    "JobState",
    "QueueState",
    "QueueStats",
    "check_claim",
    "check_new",
    "claim",
    "claim_order",
    "complete",
    "completed",
    "count_progress",
    "count_stats",
    "dead_letters",
    "defer",
    "deferred",
    "enqueue",
    "fail",
    "failed",
    "get",
    "heartbeat",
    "holds_lease",
    "is_due",
    "lapsed",
    "lapsed_dead",
    "progress",
    "purge",
    "purgeable",
    "renewed",
    "replay",
    "replayed",
    "stats",
    "taken",
]

JobState = Literal["pending", "running", "done", "dead"]

MAX_PRIORITY: Final = 1_000_000_000
"""The least urgent priority allowed (1 is the most urgent)."""

LAPSED: Final = "lease lapsed"
"""The ``last_error`` of a job dead-lettered because its last attempt's lease lapsed."""


@dataclass(frozen=True, slots=True)
class Job:
    """One job's record."""

    id: int
    """Assigned in enqueue order, from 1."""
    queue: str
    handler: str
    """The handler's name."""
    payload: str
    """The handler's keyword arguments as JSON text (the core never parses it)."""
    key: str | None
    """The idempotency key, unique per queue (``None``: none)."""
    priority: int
    """1 is the most urgent."""
    state: JobState
    attempts: int
    """Attempts started (a deferred attempt is given back)."""
    max_attempts: int | None
    """The most attempts allowed (``None``: the retry's decision is the only limit)."""
    next_attempt_at: float
    """When a pending job is due (kept while it runs: the time its attempt was due)."""
    created_at: float
    lease_owner: str | None = None
    """The worker running it (running jobs only)."""
    lease_until: float | None = None
    """When that worker's lease lapses (running jobs only)."""
    last_error: str | None = None
    last_error_class: str | None = None
    finished_at: float | None = None
    """When it became done or dead."""
    batch: str | None = None
    reason: str | None = None
    """Why it is dead (``"attempts"``, the decision's reason); ``None`` unless dead."""
    trace: str | None = None
    """The W3C ``traceparent`` of the span that enqueued it (``None``: none)."""

    @property
    def kwargs(self) -> dict[str, Any]:
        """The handler's keyword arguments: the payload, parsed."""
        parsed: dict[str, Any] = json.loads(self.payload)
        return parsed


@dataclass(frozen=True, slots=True)
class QueueState:
    """Every job, the next id and the key index. Treat the mappings as read-only."""

    jobs: Mapping[int, Job] = field(default_factory=dict)
    next_id: int = 1
    keys: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """``(queue, key)`` to the id of the job holding the key."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue at one moment."""

    pending: int
    running: int
    done: int
    dead: int
    due: int
    """Jobs a claim would take now (due pending ones and lapsed running ones)."""
    lag: float
    """Seconds the oldest due pending job has waited past its due time (0 if none)."""

    @property
    def total(self) -> int:
        return self.pending + self.running + self.done + self.dead


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """How far a batch has got."""

    total: int
    done: int
    dead: int
    pending: int
    """Not finished yet: pending and running."""
    percent: float
    """Finished (done or dead) jobs per hundred; 100.0 for an empty batch."""


# -- validation ------------------------------------------------------------------------------


def _time(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def _delay(value: float, name: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _lease(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"lease must be a finite number > 0, got {value!r}")
    return value


def _count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


# -- reading ---------------------------------------------------------------------------------


def get(state: QueueState, job_id: int) -> Job | None:
    """The job with this id, or ``None`` (never enqueued, or purged)."""
    return state.jobs.get(job_id)


def holds_lease(job: Job, worker: str, now: float) -> bool:
    """Whether ``worker`` holds a live lease on ``job``."""
    return (
        job.state == "running"
        and job.lease_owner == worker
        and job.lease_until is not None
        and now < job.lease_until
    )


def is_due(job: Job, now: float) -> bool:
    """Whether a claim at ``now`` would take ``job``."""
    if job.state == "pending":
        return job.next_attempt_at <= now
    return job.state == "running" and job.lease_until is not None and job.lease_until <= now


def _exhausted(job: Job) -> bool:
    return job.max_attempts is not None and job.attempts >= job.max_attempts


def _put(state: QueueState, job: Job) -> QueueState:
    jobs = dict(state.jobs)
    jobs[job.id] = job
    return replace(state, jobs=jobs)


# -- one job's transitions (stores that keep rows apply these to each row) --------------------


def taken(job: Job, worker: str, now: float, lease: float) -> Job:
    """A due job leased to ``worker``: running, one more attempt started."""
    return replace(
        job, state="running", attempts=job.attempts + 1, lease_owner=worker, lease_until=now + lease
    )


def lapsed(job: Job) -> bool:
    """Whether a due running job must be dead-lettered rather than run again."""
    return job.state == "running" and _exhausted(job)


def lapsed_dead(job: Job, now: float) -> Job:
    """A lapsed job whose last attempt had started, dead-lettered."""
    return replace(
        job,
        state="dead",
        lease_owner=None,
        lease_until=None,
        last_error=LAPSED,
        last_error_class=None,
        finished_at=now,
        reason="attempts",
    )


def renewed(job: Job, now: float, lease: float) -> Job:
    """A held job's lease, renewed."""
    return replace(job, lease_until=now + _lease(lease))


def completed(job: Job, now: float) -> Job:
    """A held job, done."""
    return replace(job, state="done", lease_owner=None, lease_until=None, finished_at=now)


def failed(
    job: Job,
    now: float,
    *,
    retry: bool,
    delay: float | None,
    error_class: str | None,
    reason: str | None,
    error: str | None,
) -> Job:
    """A held job after a failed attempt and the retry's decision."""
    if retry:
        if delay is None:
            raise ValueError("delay must be a finite number >= 0 when retry is True, got None")
        _delay(delay, "delay")
    settled = replace(
        job, lease_owner=None, lease_until=None, last_error=error, last_error_class=error_class
    )
    if retry and not _exhausted(job):
        assert delay is not None
        return replace(settled, state="pending", next_attempt_at=now + delay)
    why = "attempts" if retry else (reason or "not_retryable")
    return replace(settled, state="dead", finished_at=now, reason=why)


def deferred(job: Job, now: float, until: float) -> Job:
    """A held job a gate refused: pending at ``max(until, now)``, its attempt given back."""
    _time(until, "until")
    return replace(
        job,
        state="pending",
        attempts=max(0, job.attempts - 1),
        next_attempt_at=max(until, now),
        lease_owner=None,
        lease_until=None,
    )


def replayed(job: Job, now: float) -> Job:
    """A dead job, pending again at ``now`` with no attempts."""
    return replace(
        job, state="pending", attempts=0, next_attempt_at=now, finished_at=None, reason=None
    )


def claim_order(job: Job) -> tuple[int, float, int]:
    """The order claims take due jobs in: priority, then due time, then id."""
    return (job.priority, job.next_attempt_at, job.id)


def check_new(*, priority: int, delay: float, max_attempts: int | None, now: float) -> None:
    """Refuse a new job's invalid values (a ``ValueError`` naming the argument)."""
    _time(now, "now")
    _delay(delay, "delay")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"priority must be an int, got {priority!r}")
    if not 1 <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be between 1 and {MAX_PRIORITY}, got {priority!r}")
    if max_attempts is not None:
        _count(max_attempts, "max_attempts")


def check_claim(*, now: float, limit: int, lease: float) -> None:
    """Refuse a claim's invalid values."""
    _time(now, "now")
    _count(limit, "limit")
    _lease(lease)


# -- the rules -------------------------------------------------------------------------------


def enqueue(
    state: QueueState,
    *,
    queue: str,
    handler: str,
    payload: str,
    key: str | None,
    priority: int,
    delay: float,
    max_attempts: int | None,
    batch: str | None,
    now: float,
    trace: str | None = None,
) -> tuple[QueueState, int, bool]:
    """Add a job due at ``now + delay``: ``(state, job_id, created)``.

    With a key already held in ``queue``: ``(state, that job's id, False)``.
    """
    check_new(priority=priority, delay=delay, max_attempts=max_attempts, now=now)
    if key is not None and (queue, key) in state.keys:
        return state, state.keys[queue, key], False
    job_id = state.next_id
    job = Job(
        id=job_id,
        queue=queue,
        handler=handler,
        payload=payload,
        key=key,
        priority=priority,
        state="pending",
        attempts=0,
        max_attempts=max_attempts,
        next_attempt_at=now + delay,
        created_at=now,
        batch=batch,
        trace=trace,
    )
    jobs = dict(state.jobs)
    jobs[job_id] = job
    keys = state.keys
    if key is not None:
        keys = dict(keys)
        keys[queue, key] = job_id
    return QueueState(jobs, job_id + 1, keys), job_id, True


def claim(
    state: QueueState, *, queue: str, worker: str, now: float, limit: int, lease: float
) -> tuple[QueueState, tuple[Job, ...]]:
    """Lease up to ``limit`` due jobs of ``queue`` to ``worker``: the claimed jobs, in order.

    Lapsed jobs whose last attempt had started are dead-lettered instead.
    """
    check_claim(now=now, limit=limit, lease=lease)
    jobs = dict(state.jobs)
    due: list[Job] = []
    for job in state.jobs.values():
        if job.queue != queue or not is_due(job, now):
            continue
        if lapsed(job):
            jobs[job.id] = lapsed_dead(job, now)
        else:
            due.append(job)
    due.sort(key=claim_order)
    claimed = []
    for job in due[:limit]:
        jobs[job.id] = taken(job, worker, now, lease)
        claimed.append(jobs[job.id])
    return replace(state, jobs=jobs), tuple(claimed)


def _held(state: QueueState, job_id: int, worker: str, now: float) -> Job | None:
    _time(now, "now")
    job = state.jobs.get(job_id)
    return job if job is not None and holds_lease(job, worker, now) else None


def heartbeat(
    state: QueueState, job_id: int, worker: str, now: float, lease: float
) -> tuple[QueueState, bool]:
    """Renew ``worker``'s live lease to ``now + lease``; ``False`` if it holds none."""
    _lease(lease)
    job = _held(state, job_id, worker, now)
    if job is None:
        return state, False
    return _put(state, renewed(job, now, lease)), True


def complete(state: QueueState, job_id: int, worker: str, now: float) -> tuple[QueueState, bool]:
    """The lease holder settles the job as done; ``False`` if it holds no live lease."""
    job = _held(state, job_id, worker, now)
    if job is None:
        return state, False
    return _put(state, completed(job, now)), True


def fail(
    state: QueueState,
    job_id: int,
    worker: str,
    now: float,
    *,
    retry: bool,
    delay: float | None,
    error_class: str | None,
    reason: str | None,
    error: str | None,
) -> tuple[QueueState, bool]:
    """The lease holder reports a failed attempt with the retry's decision.

    ``False`` (nothing changed) if it holds no live lease.
    """
    if retry:
        if delay is None:
            raise ValueError("delay must be a finite number >= 0 when retry is True, got None")
        _delay(delay, "delay")
    job = _held(state, job_id, worker, now)
    if job is None:
        return state, False
    settled = failed(
        job,
        now,
        retry=retry,
        delay=delay,
        error_class=error_class,
        reason=reason,
        error=error,
    )
    return _put(state, settled), True


def defer(
    state: QueueState, job_id: int, worker: str, now: float, until: float
) -> tuple[QueueState, bool]:
    """A gate refused the attempt: back to pending at ``max(until, now)``, the attempt
    given back. ``False`` (nothing changed) if ``worker`` holds no live lease."""
    _time(until, "until")
    job = _held(state, job_id, worker, now)
    if job is None:
        return state, False
    return _put(state, deferred(job, now, until)), True


def replay(state: QueueState, job_id: int, now: float) -> tuple[QueueState, bool]:
    """A dead job back to pending at ``now`` with no attempts; ``False`` if not dead."""
    _time(now, "now")
    job = state.jobs.get(job_id)
    if job is None or job.state != "dead":
        return state, False
    return _put(state, replayed(job, now)), True


def purge(state: QueueState, *, queue: str, finished_before: float) -> tuple[QueueState, int]:
    """Remove the done and dead jobs of ``queue`` finished before ``finished_before``."""
    _time(finished_before, "finished_before")
    gone = [
        job for job in state.jobs.values() if job.queue == queue and purgeable(job, finished_before)
    ]
    if not gone:
        return state, 0
    jobs = dict(state.jobs)
    keys = dict(state.keys)
    for job in gone:
        del jobs[job.id]
        if job.key is not None and keys.get((queue, job.key)) == job.id:
            del keys[queue, job.key]
    return replace(state, jobs=jobs, keys=keys), len(gone)


def count_stats(jobs: Iterable[Job], now: float) -> QueueStats:
    """Counts by state, due jobs and lag over ``jobs`` (one queue's) at ``now``."""
    _time(now, "now")
    counts = {"pending": 0, "running": 0, "done": 0, "dead": 0}
    due = 0
    lag = 0.0
    for job in jobs:
        counts[job.state] += 1
        if is_due(job, now):
            due += 1
            if job.state == "pending":
                lag = max(lag, now - job.next_attempt_at)
    return QueueStats(
        counts["pending"], counts["running"], counts["done"], counts["dead"], due, lag
    )


def stats(state: QueueState, queue: str, now: float) -> QueueStats:
    """Counts by state, due jobs and lag for ``queue`` at ``now``."""
    return count_stats((job for job in state.jobs.values() if job.queue == queue), now)


def count_progress(jobs: Iterable[Job]) -> BatchProgress:
    """How far the batch made of ``jobs`` has got."""
    done = dead = pending = 0
    for job in jobs:
        if job.state == "done":
            done += 1
        elif job.state == "dead":
            dead += 1
        else:
            pending += 1
    total = done + dead + pending
    percent = 100.0 if total == 0 else 100.0 * (done + dead) / total
    return BatchProgress(total, done, dead, pending, percent)


def progress(state: QueueState, batch: str, queue: str | None = None) -> BatchProgress:
    """How far ``batch`` has got (in ``queue``, or in every queue when ``None``)."""
    return count_progress(
        job
        for job in state.jobs.values()
        if job.batch == batch and (queue is None or job.queue == queue)
    )


def purgeable(job: Job, finished_before: float) -> bool:
    """Whether purging jobs finished before ``finished_before`` removes ``job``."""
    return (
        job.state in ("done", "dead")
        and job.finished_at is not None
        and job.finished_at < finished_before
    )


def dead_letters(state: QueueState, *, queue: str, limit: int) -> tuple[Job, ...]:
    """Up to ``limit`` dead jobs of ``queue``, the earliest finished first (then by id)."""
    _count(limit, "limit")
    dead = [job for job in state.jobs.values() if job.queue == queue and job.state == "dead"]
    dead.sort(key=lambda job: (job.finished_at or 0.0, job.id))
    return tuple(dead[:limit])

"""Durable retries: a job queue whose attempts, delays and dead letters live in a store.

A :class:`Retry` sleeps in process and forgets its attempts when the process
dies; a :class:`JobQueue` keeps them in a store (SQLite by default; PostgreSQL
or Redis for a fleet). A failed attempt is decided by :meth:`Retry.decide`
and goes back to the store with the time it is next due; no worker waits
through a delay. Workers lease the jobs they run and heartbeat the leases; a
job whose worker died is claimed again once its lease lapses, keeping its
attempt count. See docs/jobs.md.

::

    import resilience as rs
    from resilience.jobs import JobQueue

    schedule = rs.Backoff.schedule([1, 5, 30, 300, 1800])
    emails = JobQueue("emails", store="sqlite:///jobs.db",
                      retry=rs.Retry(attempts=5, backoff=schedule))

    @emails.handler
    def send_email(to: str, subject: str) -> None: ...

    emails.enqueue(send_email, to="a@example.com", subject="hi", key="welcome-42")
    emails.run_once(limit=50)          # a cron tick; or emails.work(concurrency=5)

The drivers (enqueue, run, settle) are written once, in :mod:`resilience._async.jobs`;
the sync ones are generated from it (:mod:`resilience._sync.jobs`).
"""

from __future__ import annotations

import contextvars
import copy
import datetime
import inspect
import itertools
import json
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from pydantic import SkipValidation, field_validator

from ._async import jobs as _async_jobs
from ._policy import Policy
from ._retry_values import RetryDecision
from ._sync import jobs as _sync_jobs
from ._validation import (
    MAX_COUNT,
    Duration,
    FinitePositiveDuration,
    OptionsModel,
    PolicyName,
    options_from,
    options_model,
)
from .bulkhead import Bulkhead
from .errors import ConfigurationError, ResilienceError, StoreUnavailable
from .ratelimit import CompositeLimit, Limit, RateLimiter
from .retry import Retry
from .storage._guard import FailureMode
from .storage.jobs import (
    DEFAULT_PRIORITY,
    BatchProgress,
    Job,
    JobState,
    JobStore,
    LeaseLost,
    NewJob,
    QueueStats,
)
from .telemetry._hub import HUB
from .telemetry.channel import track_queue
from .telemetry.events import JobEnqueued, JobSettled, StoreOutage, StoreRecovered
from .telemetry.redaction import get_redactor
from .timeout import Timeout

__all__ = [
    "DEFAULT_PRIORITY",
    "DEFAULT_STORE",
    "Batch",
    "BatchProgress",
    "CurrentJob",
    "Job",
    "JobQueue",
    "JobQueueOptions",
    "LeaseLost",
    "QueueStats",
    "RunCounts",
    "current",
]

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_STORE = "sqlite:///resilience-jobs.db"
"""Where a queue keeps its jobs when given no store: a SQLite file in the working directory."""

_MAX_ERROR_TEXT = 2000  # characters of an error kept on its job
_CURRENT: contextvars.ContextVar[CurrentJob | None] = contextvars.ContextVar(
    "resilience current job", default=None
)


@dataclass(frozen=True, slots=True)
class RunCounts:
    """What one pass (:meth:`JobQueue.run_once`) or one worker (:meth:`JobQueue.work`) did."""

    claimed: int = 0
    done: int = 0
    retried: int = 0
    """Failed attempts that will run again (pending at their next time)."""
    dead: int = 0
    deferred: int = 0
    """Attempts a gate refused: pending again later, the attempt given back."""
    lost: int = 0
    """Attempts whose lease lapsed before they were settled (they run again)."""


class _Tally:
    """One worker's identity, the leases it holds, and what its attempts ended as."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self._lock = threading.Lock()
        self._held: set[int] = set()
        self._counts = dict.fromkeys(("claimed", "done", "retry", "dead", "deferred", "lost"), 0)

    def hold(self, jobs: list[Job]) -> None:
        with self._lock:
            self._held.update(job.id for job in jobs)
            self._counts["claimed"] += len(jobs)

    def release(self, job_id: int) -> None:
        with self._lock:
            self._held.discard(job_id)

    def held(self) -> list[int]:
        with self._lock:
            return sorted(self._held)

    def running(self) -> int:
        with self._lock:
            return len(self._held)

    def count(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1

    def counts(self) -> RunCounts:
        with self._lock:
            c = self._counts
            return RunCounts(
                c["claimed"], c["done"], c["retry"], c["dead"], c["deferred"], c["lost"]
            )


@dataclass(frozen=True, slots=True)
class _Handler:
    name: str
    fn: Callable[..., Any]
    signature: inspect.Signature | None
    timeout: Timeout | None
    slots: Bulkhead | None
    """At most ``concurrency`` of this handler's jobs at once in one worker."""


class CurrentJob:
    """The job a handler is running (:func:`current`), and what it may do with it."""

    __slots__ = ("completed", "entered", "job", "queue", "worker")

    def __init__(self, queue: JobQueue, job: Job, worker: str) -> None:
        self.queue = queue
        self.job = job
        self.worker = worker
        self.entered = False
        self.completed = False

    @property
    def attempt(self) -> int:
        """This attempt's number (1 for the first)."""
        return self.job.attempts

    def _check_complete(self, connection: Any) -> None:
        if connection is None:
            raise TypeError(
                "complete() needs connection=: the job is completed for you when the "
                "handler returns; complete it yourself only inside your own transaction"
            )
        if not getattr(self.queue._store, "job_transactional", False):
            raise TypeError(
                f"the store of queue {self.queue.name!r} cannot join your transaction: "
                "complete(connection=...) needs a SQLite or PostgreSQL store"
            )

    def complete(self, connection: Any) -> None:
        """Settle this job as done inside your own transaction on ``connection`` (a
        connection to the store's own database): the job is done if and only if your
        transaction commits, so its effects happen exactly once. Raises
        :class:`LeaseLost` (roll back) if this worker's lease lapsed meanwhile."""
        _sync_jobs.complete(self, connection)

    async def acomplete(self, connection: Any) -> None:
        """:meth:`complete` for an async connection (``psycopg.AsyncConnection``)."""
        await _async_jobs.acomplete(self, connection)

    def __repr__(self) -> str:
        return f"CurrentJob(queue={self.queue.name!r}, id={self.job.id}, attempt={self.attempt})"


def current() -> CurrentJob:
    """The job the calling handler is running; ``LookupError`` outside a handler."""
    running = _CURRENT.get()
    if running is None:
        raise LookupError("resilience.jobs.current() is only set inside a job's handler")
    return running


class Batch:
    """Jobs enqueued together (:meth:`JobQueue.enqueue_batch`); its progress is read
    from the store, so any process can follow it."""

    __slots__ = ("created", "ids", "name", "queue")

    def __init__(self, queue: JobQueue, name: str, ids: list[int], created: int = 0) -> None:
        self.queue = queue
        self.name = name
        self.ids = ids
        """The ids of this call's jobs, in item order (empty for :meth:`JobQueue.batch`)."""
        self.created = created
        """How many of them this call added (the others' keys were held already)."""

    def progress(self) -> BatchProgress:
        """Total, done, dead, pending and percent finished, now."""
        return _sync_jobs.progress(self.queue, self.name)

    async def aprogress(self) -> BatchProgress:
        return await _async_jobs.aprogress(self.queue, self.name)

    def __repr__(self) -> str:
        return f"Batch({self.queue.name!r}, {self.name!r})"


# -- the queue -------------------------------------------------------------------------------


def _is_policy(value: Any) -> bool:
    return isinstance(value, Policy) or (
        callable(getattr(value, "wrap_sync", None)) and callable(getattr(value, "wrap_async", None))
    )


class JobQueue:
    """A durable job queue named ``name`` in ``store``.

    ``store``: a URL (``sqlite:///jobs.db``, ``postgresql://…``, ``redis://…``,
    ``memory://``) or a store object. ``retry`` decides each failure (default: 5
    attempts, exponential backoff from 5 s to an hour with full jitter); its
    ``attempts`` is each job's limit unless ``enqueue`` says otherwise. ``gate``: a rate
    limiter, a circuit breaker, a pipeline of them, or a function of the :class:`Job`
    returning one (or ``None``); a refusal defers the job until its ``retry_after``
    without using an attempt. ``retention``: finished jobs (done and dead) are removed
    this many seconds after they finish (``None``: kept until :meth:`purge`). ``lease``:
    how long a claimed job is reserved for its worker without a heartbeat (workers
    heartbeat every third of it). ``poll_interval``: how long an idle worker waits
    before looking again. ``on_store_failure``: only ``"fail_closed"``, the one mode
    a durable queue can keep its promise in: an enqueue the store did not confirm
    raises :class:`~resilience.StoreUnavailable` (a job is never kept only in memory,
    where a crash would lose it silently), ``run_once`` raises it, and ``work`` waits
    the outage out, reporting it once.
    """

    kind = "job_queue"

    def __init__(
        self,
        name: PolicyName,
        *,
        store: SkipValidation[Any] = DEFAULT_STORE,
        retry: SkipValidation[Retry | None] = None,
        gate: SkipValidation[Any] = None,
        retention: Duration | None = 7 * 24 * 3600.0,
        lease: FinitePositiveDuration = 30.0,
        poll_interval: FinitePositiveDuration = 1.0,
        on_store_failure: FailureMode = "fail_closed",
    ) -> None:
        """Each option is declared here once; ``JobQueueOptions`` is derived from it."""
        options: Any = options_from(JobQueueOptions, f"JobQueue {name!r}", locals())
        self.options = options
        self.name: str = options.name
        self._store: JobStore = _job_store(options.store, self.name)
        self._owns_store = isinstance(options.store, str)  # built here from a URL: closed here
        self.retry: Retry = (
            options.retry if options.retry is not None else _default_retry(self.name)
        )
        self._gate = _check_gate(options.gate, self.name)
        kept: float | None = options.retention
        self._retention = None if kept is None or math.isinf(kept) else kept
        self._next_purge = 0.0
        self._lease: float = options.lease
        self._beat_every = options.lease / 3
        self._poll_interval: float = options.poll_interval
        self._outage_pause = max(30.0, options.poll_interval)
        self._handlers: dict[str, _Handler] = {}
        self._by_function: dict[Any, _Handler] = {}
        self._outage: float | None = None
        self._batches = itertools.count(1)
        track_queue(self)

    @property
    def store(self) -> JobStore:
        """The job store (for ``memory://`` the memory store's job part)."""
        return self._store

    def close(self) -> None:
        """Close the store if this queue built it from a URL (a store object passed in
        is its owner's to close). Also ``with JobQueue(...) as queue:``."""
        close = getattr(self._store, "close", None)
        if self._owns_store and callable(close):
            close()

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- handlers ------------------------------------------------------------------------

    @overload
    def handler(self, fn: F, /) -> F: ...

    @overload
    def handler(
        self,
        /,
        *,
        name: str | None = None,
        timeout: float | datetime.timedelta | None = None,
        concurrency: int | None = None,
    ) -> Callable[[F], F]: ...

    def handler(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        timeout: float | datetime.timedelta | None = None,
        concurrency: int | None = None,
    ) -> Any:
        """Register ``fn`` (sync or async) as a handler: ``@queue.handler`` or
        ``@queue.handler(timeout=30.0)``. Jobs name their handler, by default
        ``module.qualname``; give ``name`` to keep it stable across renames. ``timeout``
        bounds each attempt (a timed-out attempt is a failure, decided by the retry).
        ``concurrency`` is the most jobs of this handler one worker runs at once."""

        def register(function: F) -> F:
            self._register(function, name, timeout, concurrency)
            return function

        return register if fn is None else register(fn)

    def _register(
        self,
        fn: Callable[..., Any],
        name: str | None,
        timeout: float | datetime.timedelta | None,
        concurrency: int | None,
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(
                f"JobQueue {self.name!r}", [("handler", f"{fn!r} is not callable")]
            )
        label = name or f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        if not isinstance(label, str) or not label:
            raise ConfigurationError(f"JobQueue {self.name!r}", [("name", f"got {name!r}")])
        if label in self._handlers and self._handlers[label].fn is not fn:
            raise ConfigurationError(
                f"JobQueue {self.name!r}",
                [("name", f"a different handler is already registered as {label!r}")],
            )
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise ConfigurationError(
                f"JobQueue {self.name!r}",
                [("concurrency", f"must be an int >= 1 or None, got {concurrency!r}")],
            )
        try:
            signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            signature = None
        limit = None if timeout is None else Timeout(timeout, name=f"{self.name}.{label}")
        slots = (
            None
            if concurrency is None
            else Bulkhead(concurrency, MAX_COUNT, name=f"{self.name}.{label}")
        )
        spec = _Handler(label, fn, signature, limit, slots)
        self._handlers[label] = spec
        self._by_function[fn] = spec

    def _handler_named(self, handler: Any) -> _Handler:
        spec = self._handlers.get(handler) if isinstance(handler, str) else None
        if spec is None and not isinstance(handler, str):
            try:
                spec = self._by_function.get(handler)
            except TypeError:  # unhashable
                spec = None
        if spec is None:
            raise ValueError(
                f"queue {self.name!r}: {handler!r} is not a registered handler "
                "(decorate it with @queue.handler first)"
            )
        return spec

    # -- enqueueing ------------------------------------------------------------------------

    def enqueue(
        self,
        handler: Any,
        /,
        *,
        key: str | None = None,
        priority: int | None = None,
        delay: float | datetime.timedelta = 0.0,
        attempts: int | None = None,
        connection: Any = None,
        **kwargs: Any,
    ) -> int:
        """Add a job running ``handler(**kwargs)``: its id. ``key``: idempotency (a
        second enqueue with the key returns the first job's id, while that job is
        kept). ``priority``: 1 is the most urgent (default 5). ``delay``: seconds
        before it is due. ``attempts``: this job's limit instead of the retry's.
        ``connection``: your open transaction on the store's database (SQLite,
        PostgreSQL): the job exists if and only if it commits (the outbox pattern).
        The keyword arguments must be JSON values (refused here, by name, if not)."""
        return _sync_jobs.enqueue(
            self,
            handler,
            kwargs,
            key=key,
            priority=priority,
            delay=_seconds(delay, "delay"),
            attempts=attempts,
            connection=connection,
        )

    async def aenqueue(
        self,
        handler: Any,
        /,
        *,
        key: str | None = None,
        priority: int | None = None,
        delay: float | datetime.timedelta = 0.0,
        attempts: int | None = None,
        connection: Any = None,
        **kwargs: Any,
    ) -> int:
        """:meth:`enqueue` from async code."""
        return await _async_jobs.aenqueue(
            self,
            handler,
            kwargs,
            key=key,
            priority=priority,
            delay=_seconds(delay, "delay"),
            attempts=attempts,
            connection=connection,
        )

    def enqueue_batch(
        self,
        handler: Any,
        items: Iterable[Mapping[str, Any]],
        *,
        key: Callable[[Mapping[str, Any]], str] | None = None,
        batch: str | None = None,
        priority: int | None = None,
        delay: float | datetime.timedelta = 0.0,
        attempts: int | None = None,
        connection: Any = None,
    ) -> Batch:
        """A job per item (a dict of the handler's keyword arguments), under the batch
        name ``batch`` (default: a new unique name): the :class:`Batch`. ``key(item)``
        gives each job's idempotency key, so that re-running the enqueue after a crash
        adds only the missing jobs. Stored in chunks of 1,000 jobs, each all or nothing."""
        return _sync_jobs.enqueue_batch(
            self,
            handler,
            items,
            key=key,
            batch=batch,
            priority=priority,
            delay=_seconds(delay, "delay"),
            attempts=attempts,
            connection=connection,
        )

    async def aenqueue_batch(
        self,
        handler: Any,
        items: Iterable[Mapping[str, Any]],
        *,
        key: Callable[[Mapping[str, Any]], str] | None = None,
        batch: str | None = None,
        priority: int | None = None,
        delay: float | datetime.timedelta = 0.0,
        attempts: int | None = None,
        connection: Any = None,
    ) -> Batch:
        """:meth:`enqueue_batch` from async code."""
        return await _async_jobs.aenqueue_batch(
            self,
            handler,
            items,
            key=key,
            batch=batch,
            priority=priority,
            delay=_seconds(delay, "delay"),
            attempts=attempts,
            connection=connection,
        )

    def batch(self, name: str) -> Batch:
        """The batch called ``name`` (for its progress, from any process)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"batch name must be a non-empty string, got {name!r}")
        return Batch(self, name, [])

    def _batch(self, name: str, ids: list[int], created: int) -> Batch:
        return Batch(self, name, ids, created)

    def _batch_name(self, batch: str | None) -> str:
        if batch is None:
            return f"{self.name}-{uuid.uuid4().hex}"
        if not isinstance(batch, str) or not batch:
            raise ValueError(f"batch must be a non-empty string or None, got {batch!r}")
        return batch

    @staticmethod
    def _item_key(key: Any, item: Mapping[str, Any], index: int) -> str | None:
        if key is None:
            return None
        value = key(item)
        if not isinstance(value, str):
            raise TypeError(f"key() must return a string, got {value!r} for item {index}")
        return value

    def _new_job(
        self,
        spec: _Handler,
        kwargs: Mapping[str, Any],
        key: str | None,
        priority: int | None,
        delay: float,
        attempts: int | None,
        batch: str | None,
    ) -> NewJob:
        if not isinstance(kwargs, Mapping):
            raise TypeError(f"a job's arguments must be a mapping of names, got {kwargs!r}")
        if spec.signature is not None:
            try:
                spec.signature.bind(**kwargs)
            except TypeError as error:
                raise TypeError(f"job for handler {spec.name!r}: {error}") from None
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be a string or None, got {key!r}")
        new = NewJob(
            handler=spec.name,
            payload=_json_payload(spec.name, kwargs),
            key=key,
            priority=DEFAULT_PRIORITY if priority is None else priority,
            delay=delay,
            max_attempts=self.retry.options.attempts if attempts is None else attempts,
            batch=batch,
        )
        new.check()
        return new

    # -- running ---------------------------------------------------------------------------

    def run_once(self, limit: int = 100, *, concurrency: int = 1) -> RunCounts:
        """One pass (a cron tick): claim up to ``limit`` due jobs, run them
        (``concurrency`` at a time, on threads), settle each; the counts."""
        return _sync_jobs.run_once(self, limit, concurrency)

    async def arun_once(self, limit: int = 100, *, concurrency: int = 1) -> RunCounts:
        """:meth:`run_once` from async code (jobs as tasks; sync handlers on threads)."""
        return await _async_jobs.arun_once(self, limit, concurrency)

    def work(
        self,
        *,
        concurrency: int = 1,
        stop: threading.Event | None = None,
        until_empty: bool = False,
    ) -> RunCounts:
        """Run jobs as they fall due, ``concurrency`` at a time, until ``stop`` is set
        (or, with ``until_empty``, until none is due and none running). A store outage
        is waited out (with a growing pause, reported once)."""
        return _sync_jobs.work(self, concurrency, stop, until_empty)

    async def awork(
        self, *, concurrency: int = 1, stop: Any = None, until_empty: bool = False
    ) -> RunCounts:
        """:meth:`work` as a task; ``stop`` an ``asyncio.Event`` or a ``threading.Event``.
        Cancelling it hands its running jobs back to the queue at once."""
        return await _async_jobs.awork(self, concurrency, stop, until_empty)

    def _check_run(self, limit: int, concurrency: int) -> tuple[int, int]:
        for field, value in (("limit", limit), ("concurrency", concurrency)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be an int >= 1, got {value!r}")
        return limit, concurrency

    def _tally(self) -> _Tally:
        worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        return _Tally(worker)

    def _current(self, job: Job, worker: str) -> CurrentJob:
        return CurrentJob(self, job, worker)

    @staticmethod
    def _enter(current: CurrentJob) -> contextvars.Token[CurrentJob | None]:
        return _CURRENT.set(current)

    @staticmethod
    def _leave(token: contextvars.Token[CurrentJob | None]) -> None:
        _CURRENT.reset(token)

    def _gate_for(self, job: Job) -> Any:
        gate = self._gate
        if gate is not None and not _is_policy(gate):
            gate = _non_waiting(gate(job))
        return gate

    def _gate_refusal(self, error: Exception, current: CurrentJob) -> float | None:
        """Seconds to defer by if ``error`` is the gate refusing before the handler ran."""
        if current.entered or not isinstance(error, ResilienceError):
            return None
        if not hasattr(error, "retry_after"):
            return None
        wait = getattr(error, "retry_after", None)
        if not isinstance(wait, int | float) or not math.isfinite(wait) or wait < 0:
            return self._poll_interval
        return float(wait)

    def _decide(
        self, job: Job, spec: _Handler | None, error: Exception, started: float
    ) -> RetryDecision:
        if spec is None:  # a worker without the handler: retrying cannot help
            return RetryDecision(False, None, None, "not_retryable")
        claimed_at = (job.lease_until or 0.0) - self._lease
        elapsed = max(0.0, claimed_at - job.created_at) + (time.monotonic() - started)
        return self.retry.decide(job.attempts, error, elapsed=elapsed)

    @staticmethod
    def _error_text(error: BaseException) -> str:
        text = f"{type(error).__name__}: {get_redactor().redact_text(str(error))}"
        return text[:_MAX_ERROR_TEXT]

    # -- reporting ---------------------------------------------------------------------------

    def _report_enqueued(self, handler: str, job_id: int, created: bool) -> None:
        if HUB.wants(JobEnqueued):
            HUB.emit(JobEnqueued(self.name, handler, job_id, created))

    def _settled(
        self,
        job: Job,
        outcome: str,
        *,
        delay: float | None = None,
        error: BaseException | None = None,
    ) -> str:
        if HUB.wants(JobSettled):
            HUB.emit(
                JobSettled(
                    self.name,
                    job.handler,
                    job.id,
                    job.attempts,
                    outcome,
                    exception=error,
                    delay=delay,
                )
            )
        return outcome

    def _settled_failure(self, job: Job, decision: RetryDecision, error: Exception) -> str:
        exhausted = job.max_attempts is not None and job.attempts >= job.max_attempts
        outcome = "retry" if decision.retry and not exhausted else "dead"
        if HUB.wants(JobSettled):
            reason = decision.reason or ("attempts" if outcome == "dead" else None)
            HUB.emit(
                JobSettled(
                    self.name,
                    job.handler,
                    job.id,
                    job.attempts,
                    outcome,
                    error_class=None
                    if decision.error_class is None
                    else decision.error_class.value,
                    exception=error,
                    delay=decision.delay if outcome == "retry" else None,
                    reason=reason,
                )
            )
        return outcome

    def _report_outage(self, error: StoreUnavailable) -> None:
        if self._outage is not None:
            return
        self._outage = time.monotonic()
        if HUB.wants(StoreOutage):
            HUB.emit(
                StoreOutage(
                    self.name, error.store, error.reason, "fail_closed", f"JobQueue {self.name!r}"
                )
            )

    def _report_recovered(self) -> None:
        began = self._outage
        if began is None:
            return
        self._outage = None
        if HUB.wants(StoreRecovered):
            store = getattr(self._store, "url", type(self._store).__name__)
            HUB.emit(
                StoreRecovered(
                    self.name, str(store), time.monotonic() - began, f"JobQueue {self.name!r}"
                )
            )

    # -- reading and operating ---------------------------------------------------------------

    def job(self, job_id: int) -> Job | None:
        """The job with this id, or ``None`` (never enqueued here, or purged)."""
        return _sync_jobs.job(self, job_id)

    async def ajob(self, job_id: int) -> Job | None:
        return await _async_jobs.ajob(self, job_id)

    def jobs(self, state: JobState | None = None, limit: int = 100) -> list[Job]:
        """Up to ``limit`` jobs (in ``state``: pending, running, done, dead), by id."""
        return _sync_jobs.jobs(self, state, limit)

    async def ajobs(self, state: JobState | None = None, limit: int = 100) -> list[Job]:
        return await _async_jobs.ajobs(self, state, limit)

    def stats(self) -> QueueStats:
        """Counts by state, due jobs and lag (seconds the oldest due job has waited)."""
        return _sync_jobs.stats(self)

    async def astats(self) -> QueueStats:
        return await _async_jobs.astats(self)

    def dead_letters(self, limit: int = 100) -> list[Job]:
        """Up to ``limit`` dead jobs, the earliest dead first."""
        return _sync_jobs.dead_letters(self, limit)

    async def adead_letters(self, limit: int = 100) -> list[Job]:
        return await _async_jobs.adead_letters(self, limit)

    def replay(self, job_id: int) -> bool:
        """A dead job back to pending, due now, attempts reset; ``False`` if not dead."""
        return _sync_jobs.replay(self, job_id)

    async def areplay(self, job_id: int) -> bool:
        return await _async_jobs.areplay(self, job_id)

    def replay_all(self) -> int:
        """Every dead job back to pending: how many."""
        return _sync_jobs.replay_all(self)

    async def areplay_all(self) -> int:
        return await _async_jobs.areplay_all(self)

    def purge(self, older_than: float | datetime.timedelta = 0.0) -> int:
        """Remove done and dead jobs finished more than ``older_than`` seconds ago
        (default: every finished job) now: how many."""
        return _sync_jobs.purge(self, _seconds(older_than, "older_than"))

    async def apurge(self, older_than: float | datetime.timedelta = 0.0) -> int:
        return await _async_jobs.apurge(self, _seconds(older_than, "older_than"))

    @staticmethod
    def _check_id(job_id: int) -> int:
        if isinstance(job_id, bool) or not isinstance(job_id, int):
            raise TypeError(f"a job id is an int, got {job_id!r}")
        return job_id

    def __repr__(self) -> str:
        return f"JobQueue({self.name!r}, store={self._store!r})"


class _JobQueueRules(OptionsModel):
    """What the signature cannot say."""

    @field_validator("on_store_failure", check_fields=False)
    @classmethod
    def _only_fail_closed(cls, value: Any) -> Any:
        if value != "fail_closed":
            raise ValueError(
                f"a job queue only fails closed, got {value!r}: a job the store has not "
                "accepted is not durable, so enqueue raises StoreUnavailable instead of "
                "letting it through or keeping it in this process"
            )
        return value


JobQueueOptions = options_model(JobQueue.__init__, "JobQueueOptions", _JobQueueRules)


# -- helpers ---------------------------------------------------------------------------------


def _default_retry(queue: str) -> Retry:
    """Five attempts, waiting from about 5 s up to an hour (full jitter): a durable
    queue's waits cost no worker, so they can be long. A Retry-After up to an hour
    is honoured (a hint is capped by the backoff's cap)."""
    from .backoff import Backoff

    return Retry(attempts=5, backoff=Backoff.exponential(5.0, 3600.0), name=f"jobs.{queue}")


def _seconds(value: float | datetime.timedelta, field: str) -> float:
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{field} must be a number of seconds or a timedelta, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{field} must be a finite number >= 0, got {value!r}")
    return float(value)


def _job_store(store: Any, queue: str) -> JobStore:
    from .storage import MemoryStore, store_from_url

    if isinstance(store, str):
        store = store_from_url(store)
    if isinstance(store, MemoryStore):
        return store.jobs
    if not isinstance(store, JobStore):
        raise ConfigurationError(
            f"JobQueue {queue!r}",
            [("store", f"expected a URL or a store with job support, got {store!r}")],
        )
    return store


def _check_gate(gate: Any, queue: str) -> Any:
    if gate is None:
        return None
    if _is_policy(gate):
        return _non_waiting(gate)
    if callable(gate):
        return gate  # a function of the job: its answer is checked per job
    raise ConfigurationError(
        f"JobQueue {queue!r}",
        [("gate", f"expected a policy or a function of the job returning one, got {gate!r}")],
    )


def _non_waiting(gate: Any) -> Any:
    """A limiter that would wait for a token refuses at once instead: the job is
    deferred to when the token is due, and the worker's slot is not held meanwhile."""
    if gate is None:
        return None
    if isinstance(gate, RateLimiter):
        return gate.limit(None, timeout=0.0)
    if isinstance(gate, Limit | CompositeLimit) and gate.timeout is None:
        refusing = copy.copy(gate)
        refusing.timeout = 0.0
        return refusing
    if not _is_policy(gate):
        raise TypeError(f"a gate function must return a policy or None, got {gate!r}")
    return gate


_JSON_SCALARS = (str, int, float, bool, type(None))


def _json_payload(handler: str, kwargs: Mapping[str, Any]) -> str:
    for name, value in kwargs.items():
        problem = _json_problem(value)
        if problem is not None:
            raise TypeError(
                f"job for handler {handler!r}: argument {name!r} cannot be stored as JSON "
                f"({problem}); payloads are JSON only, never pickled"
            )
    return json.dumps(dict(kwargs), allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def _json_problem(value: Any, depth: int = 0) -> str | None:
    if depth > 100:
        return "nested more than 100 levels"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not a JSON number"
    if isinstance(value, _JSON_SCALARS):
        return None
    if isinstance(value, list):
        for item in value:
            problem = _json_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"a dict key {key!r} is not a string"
            problem = _json_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    if isinstance(value, tuple):
        return "a tuple would come back as a list: pass a list"
    return f"{type(value).__name__} is not a JSON type"

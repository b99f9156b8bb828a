"""The job queues of :class:`~resilience.storage.redis.RedisStore`: the
:class:`~resilience.storage.jobs.JobStore` protocol over the Lua scripts of
:mod:`~resilience.storage.redis.job_scripts` (which describes the keys).

Each call validates its arguments before any I/O (a ``ValueError`` naming the
argument, as the memory store raises), runs one script, and turns the answer into
:class:`~resilience._core.jobs.Job` values. Times are the server's ``TIME``, or the
store's ``job_clock`` when it was given one (tests). Redis is not transactional
with the caller's database: ``connection=`` raises ``TypeError``.

Calls over many jobs are chunked, each chunk one atomic script, so that no script
blocks the server (or outlasts the store's timeout) for long: ``job_enqueue``
sends :data:`ENQUEUE_CHUNK` jobs per script, so a longer list is all-or-nothing per
chunk (a failure part-way leaves the earlier chunks enqueued; enqueue them again
with keys to be safe). ``job_purge`` and ``job_replay_all`` go
:data:`SWEEP_CHUNK` jobs at a time.

On Redis Cluster every key of a queue is in its slot; the id counter and the set
of queue names are in slots of their own, so there an enqueue first reserves its
ids (one more round trip), and a queue's name, once recorded, stays in the set
(:meth:`job_queues` then leaves out the names of empty queues).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from ..._core import jobs as core
from ..._core.jobs import BatchProgress, Job, JobState, QueueStats
from ..jobs import NewJob, check_duration, check_list_arguments
from .wire import text, utf8

if TYPE_CHECKING:
    from ...clock import Clock
    from .keys import RedisKeys

__all__ = ["ENQUEUE_CHUNK", "SWEEP_CHUNK", "RedisJobs", "check_job_clock"]

#: Jobs per enqueue script (each chunk is atomic).
ENQUEUE_CHUNK: Final = 1000

#: Jobs per purge or replay-all script.
SWEEP_CHUNK: Final = 1000

_NO_CONNECTION = (
    "the Redis store is not transactional with your database: connection= is not supported"
)

# Arguments per job in the enqueue script.
_FIELDS_PER_JOB = 8


def check_job_clock(clock: Any) -> tuple[str, str] | None:
    """Why ``clock`` cannot date jobs (it needs ``now()``), or None."""
    if clock is None or callable(getattr(clock, "now", None)):
        return None
    return "job_clock", f"must be a Clock with now(), or None, got {clock!r}"


# -- values to and from the scripts -----------------------------------------------------------


def _required(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return utf8(value)


def _optional(value: Any, name: str) -> bytes:
    """``None`` as ``b''``, text as ``b'='`` and its UTF-8 (so ``''`` is not ``None``)."""
    return b"" if value is None else b"=" + _required(value, name)


def _job_fields(new: NewJob) -> tuple[bytes | str, ...]:
    return (
        _required(new.handler, "handler"),
        _required(new.payload, "payload"),
        _optional(new.key, "key"),
        str(new.priority),
        repr(float(new.delay)),
        "" if new.max_attempts is None else str(new.max_attempts),
        _optional(new.batch, "batch"),
        _optional(new.trace, "trace"),
    )


def _job_id(job_id: int) -> str:
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        raise TypeError(f"job ids are int, got {type(job_id).__name__}")
    return str(job_id)


def _text_or_none(value: Any) -> str | None:
    return None if value is None else text(value)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _job(queue: str, job_id: Any, record: Sequence[Any]) -> Job:
    """A job from its id and its hash's ``HGETALL``."""
    pairs = iter(record)
    fields = {text(name): value for name, value in zip(pairs, pairs, strict=True)}
    get = fields.get
    return Job(
        id=int(job_id),
        queue=queue,
        handler=text(fields["handler"]),
        payload=text(fields["payload"]),
        key=_text_or_none(get("key")),
        priority=int(fields["priority"]),
        state=cast(JobState, text(fields["state"])),
        attempts=int(fields["attempts"]),
        max_attempts=_int_or_none(get("max_attempts")),
        next_attempt_at=float(fields["next_attempt_at"]),
        created_at=float(fields["created_at"]),
        lease_owner=_text_or_none(get("lease_owner")),
        lease_until=_float_or_none(get("lease_until")),
        last_error=_text_or_none(get("last_error")),
        last_error_class=_text_or_none(get("last_error_class")),
        finished_at=_float_or_none(get("finished_at")),
        batch=_text_or_none(get("batch")),
        reason=_text_or_none(get("reason")),
        trace=_text_or_none(get("trace")),
    )


def _jobs(queue: str, reply: Sequence[Any]) -> list[Job]:
    """Jobs from a script's ``id, HGETALL, id, HGETALL, ...``."""
    pairs = iter(reply)
    return [_job(queue, job_id, record) for job_id, record in zip(pairs, pairs, strict=True)]


def _created(reply: Sequence[Any]) -> list[tuple[int, bool]]:
    pairs = iter(reply)
    return [(int(job_id), bool(int(new))) for job_id, new in zip(pairs, pairs, strict=True)]


def _stats(reply: Sequence[Any]) -> QueueStats:
    pending, running, done, dead, due, lag = reply
    return QueueStats(int(pending), int(running), int(done), int(dead), int(due), float(lag))


def _progress(reply: Sequence[Any]) -> BatchProgress:
    total, done, dead = (int(value or 0) for value in reply)
    percent = 100.0 if total == 0 else 100.0 * (done + dead) / total
    return BatchProgress(total, done, dead, total - done - dead, percent)


def _no_connection(connection: Any) -> None:
    if connection is not None:
        raise TypeError(_NO_CONNECTION)


class RedisJobs:
    """The :class:`~resilience.storage.jobs.JobStore` methods of
    :class:`~resilience.storage.redis.RedisStore`, which supplies the clients."""

    if TYPE_CHECKING:
        _keys: RedisKeys
        _cluster: bool
        _job_clock: Clock | None
        _job_names: set[str]

        def _run(self, script: str, keys: Sequence[Any], args: Sequence[Any]) -> Any: ...

        async def _arun(self, script: str, keys: Sequence[Any], args: Sequence[Any]) -> Any: ...

    # -- arguments -------------------------------------------------------------------------

    def _now(self) -> bytes:
        """The time to send: ``b''`` (the server's ``TIME``) unless a job clock was given."""
        clock = self._job_clock
        if clock is None:
            return b""
        now = clock.now()
        if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
            raise ValueError(f"now must be a finite number, got {now!r}")
        return repr(float(now)).encode()

    def _base(self, queue: str) -> list[bytes]:
        return [self._keys.job_base(queue)]

    def _enqueue_chunks(
        self, queue: str, jobs: Sequence[NewJob], connection: Any
    ) -> list[list[bytes | str]]:
        """Each chunk's per-job arguments, all jobs checked first (nothing sent if one is bad)."""
        _no_connection(connection)
        for new in jobs:
            new.check()
        flat = [value for new in jobs for value in _job_fields(new)]
        step = ENQUEUE_CHUNK * _FIELDS_PER_JOB
        return [flat[start : start + step] for start in range(0, len(flat), step)]

    def _enqueue_call(
        self, queue: str, now: bytes, first: str, chunk: list[bytes | str]
    ) -> tuple[list[bytes], list[Any]]:
        keys = self._base(queue)
        if not self._cluster:  # one slot for everything: the script numbers and records
            keys += [self._keys.job_ids(), self._keys.job_queues()]
        return keys, [now, first, utf8(queue), *chunk]

    def _claim_call(
        self, queue: str, worker: str, limit: int, lease: float
    ) -> tuple[list[bytes], list[Any]]:
        now = self._now()
        core.check_claim(now=float(now) if now else 0.0, limit=limit, lease=lease)
        return self._base(queue), [now, _required(worker, "worker"), limit, repr(float(lease))]

    def _heartbeat_call(
        self, queue: str, worker: str, job_ids: Sequence[int], lease: float
    ) -> tuple[list[bytes], list[Any]]:
        check_duration(lease, "lease", positive=True)
        ids = [_job_id(job_id) for job_id in job_ids]
        args = [self._now(), _required(worker, "worker"), repr(float(lease)), *ids]
        return self._base(queue), args

    def _settle_call(
        self, queue: str, job_id: int, worker: str, *extra: Any
    ) -> tuple[list[bytes], list[Any]]:
        args = [self._now(), _job_id(job_id), _required(worker, "worker"), *extra]
        return self._base(queue), args

    def _fail_call(
        self,
        queue: str,
        job_id: int,
        worker: str,
        retry: bool,
        delay: float | None,
        error_class: str | None,
        reason: str | None,
        error: str | None,
    ) -> tuple[list[bytes], list[Any]]:
        if retry:
            if delay is None:
                raise ValueError("delay must be a finite number >= 0 when retry is True, got None")
            check_duration(delay, "delay")
        return self._settle_call(
            queue,
            job_id,
            worker,
            b"1" if retry else b"0",
            repr(float(delay)) if retry and delay is not None else b"0",
            _optional(error_class, "error_class"),
            _optional(reason, "reason"),
            _optional(error, "error"),
        )

    def _defer_call(
        self, queue: str, job_id: int, worker: str, delay: float
    ) -> tuple[list[bytes], list[Any]]:
        check_duration(delay, "delay")
        return self._settle_call(queue, job_id, worker, repr(float(delay)))

    def _list_call(
        self, queue: str, state: JobState | None, limit: int
    ) -> tuple[list[bytes], list[Any]]:
        check_list_arguments(state, limit)
        return self._base(queue), [state or "", limit]

    def _purge_call(
        self, queue: str, now: bytes, older_than: float, cutoff: bytes
    ) -> tuple[list[bytes], list[Any]]:
        keys = self._base(queue)
        if not self._cluster:
            keys.append(self._keys.job_queues())
        return keys, [now, repr(float(older_than)), cutoff, SWEEP_CHUNK, utf8(queue)]

    def _names(self, reply: Sequence[Any]) -> list[str]:
        return sorted(text(name) for name in reply)

    # -- sync --------------------------------------------------------------------------------

    def _reserve(self, queue: str, count: int) -> str:
        """On a cluster: record the queue's name, and reserve ``count`` ids (the first)."""
        if queue not in self._job_names:
            self._run("job_register", [self._keys.job_queues()], [utf8(queue)])
            self._job_names.add(queue)
        last = int(self._run("job_reserve", [self._keys.job_ids()], [count]))
        return str(last - count + 1)

    def job_enqueue(
        self, queue: str, jobs: Sequence[NewJob], *, connection: Any = None
    ) -> list[tuple[int, bool]]:
        """Add ``jobs``: ``(job id, created)`` for each, in order. All or nothing per
        :data:`ENQUEUE_CHUNK` jobs."""
        chunks = self._enqueue_chunks(queue, jobs, connection)
        now = self._now()
        answers: list[tuple[int, bool]] = []
        for chunk in chunks:
            first = self._reserve(queue, len(chunk) // _FIELDS_PER_JOB) if self._cluster else ""
            reply = self._run("job_enqueue", *self._enqueue_call(queue, now, first, chunk))
            answers += _created(reply)
        return answers

    def job_claim(self, queue: str, worker: str, limit: int, lease: float) -> list[Job]:
        return _jobs(queue, self._run("job_claim", *self._claim_call(queue, worker, limit, lease)))

    def job_heartbeat(
        self, queue: str, worker: str, job_ids: Sequence[int], lease: float
    ) -> list[int]:
        call = self._heartbeat_call(queue, worker, job_ids, lease)
        if not job_ids:
            return []
        return [int(job_id) for job_id in self._run("job_heartbeat", *call)]

    def job_complete(self, queue: str, job_id: int, worker: str, *, connection: Any = None) -> bool:
        _no_connection(connection)
        return bool(self._run("job_complete", *self._settle_call(queue, job_id, worker)))

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
        call = self._fail_call(queue, job_id, worker, retry, delay, error_class, reason, error)
        return bool(self._run("job_fail", *call))

    def job_defer(self, queue: str, job_id: int, worker: str, delay: float) -> bool:
        return bool(self._run("job_defer", *self._defer_call(queue, job_id, worker, delay)))

    def job_get(self, queue: str, job_id: int) -> Job | None:
        record = self._run("job_get", self._base(queue), [_job_id(job_id)])
        return _job(queue, job_id, record) if record else None

    def job_list(self, queue: str, state: JobState | None = None, limit: int = 100) -> list[Job]:
        return _jobs(queue, self._run("job_list", *self._list_call(queue, state, limit)))

    def job_stats(self, queue: str) -> QueueStats:
        return _stats(self._run("job_stats", self._base(queue), [self._now()]))

    def job_replay(self, queue: str, job_id: int) -> bool:
        args = [self._now(), _job_id(job_id)]
        return bool(self._run("job_replay", self._base(queue), args))

    def job_replay_all(self, queue: str) -> int:
        now, total = self._now(), 0
        while True:
            count = int(self._run("job_replay_all", self._base(queue), [now, SWEEP_CHUNK]))
            total += count
            if count < SWEEP_CHUNK:
                return total

    def job_purge(self, queue: str, older_than: float) -> int:
        check_duration(older_than, "older_than")
        now, cutoff, total = self._now(), b"", 0
        while True:
            call = self._purge_call(queue, now, older_than, cutoff)
            count, cutoff = self._run("job_purge", *call)
            total += int(count)
            if int(count) < SWEEP_CHUNK:
                return total

    def job_progress(self, queue: str, batch: str) -> BatchProgress:
        reply = self._run("job_progress", self._base(queue), [_required(batch, "batch")])
        return _progress(reply)

    def job_queues(self) -> list[str]:
        names = self._names(self._run("job_names", [self._keys.job_queues()], []))
        if not self._cluster:  # kept exact by the scripts
            return names
        return [name for name in names if int(self._run("job_count", self._base(name), []))]

    # -- async: the same calls on the running loop's client ----------------------------------

    async def _areserve(self, queue: str, count: int) -> str:
        if queue not in self._job_names:
            await self._arun("job_register", [self._keys.job_queues()], [utf8(queue)])
            self._job_names.add(queue)
        last = int(await self._arun("job_reserve", [self._keys.job_ids()], [count]))
        return str(last - count + 1)

    async def ajob_enqueue(
        self, queue: str, jobs: Sequence[NewJob], *, connection: Any = None
    ) -> list[tuple[int, bool]]:
        chunks = self._enqueue_chunks(queue, jobs, connection)
        now = self._now()
        answers: list[tuple[int, bool]] = []
        for chunk in chunks:
            first = ""
            if self._cluster:
                first = await self._areserve(queue, len(chunk) // _FIELDS_PER_JOB)
            reply = await self._arun("job_enqueue", *self._enqueue_call(queue, now, first, chunk))
            answers += _created(reply)
        return answers

    async def ajob_claim(self, queue: str, worker: str, limit: int, lease: float) -> list[Job]:
        call = self._claim_call(queue, worker, limit, lease)
        return _jobs(queue, await self._arun("job_claim", *call))

    async def ajob_heartbeat(
        self, queue: str, worker: str, job_ids: Sequence[int], lease: float
    ) -> list[int]:
        call = self._heartbeat_call(queue, worker, job_ids, lease)
        if not job_ids:
            return []
        return [int(job_id) for job_id in await self._arun("job_heartbeat", *call)]

    async def ajob_complete(
        self, queue: str, job_id: int, worker: str, *, connection: Any = None
    ) -> bool:
        _no_connection(connection)
        return bool(await self._arun("job_complete", *self._settle_call(queue, job_id, worker)))

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
        call = self._fail_call(queue, job_id, worker, retry, delay, error_class, reason, error)
        return bool(await self._arun("job_fail", *call))

    async def ajob_defer(self, queue: str, job_id: int, worker: str, delay: float) -> bool:
        call = self._defer_call(queue, job_id, worker, delay)
        return bool(await self._arun("job_defer", *call))

    async def ajob_get(self, queue: str, job_id: int) -> Job | None:
        record = await self._arun("job_get", self._base(queue), [_job_id(job_id)])
        return _job(queue, job_id, record) if record else None

    async def ajob_list(
        self, queue: str, state: JobState | None = None, limit: int = 100
    ) -> list[Job]:
        return _jobs(queue, await self._arun("job_list", *self._list_call(queue, state, limit)))

    async def ajob_stats(self, queue: str) -> QueueStats:
        return _stats(await self._arun("job_stats", self._base(queue), [self._now()]))

    async def ajob_replay(self, queue: str, job_id: int) -> bool:
        args = [self._now(), _job_id(job_id)]
        return bool(await self._arun("job_replay", self._base(queue), args))

    async def ajob_replay_all(self, queue: str) -> int:
        now, total = self._now(), 0
        while True:
            count = int(await self._arun("job_replay_all", self._base(queue), [now, SWEEP_CHUNK]))
            total += count
            if count < SWEEP_CHUNK:
                return total

    async def ajob_purge(self, queue: str, older_than: float) -> int:
        check_duration(older_than, "older_than")
        now, cutoff, total = self._now(), b"", 0
        while True:
            call = self._purge_call(queue, now, older_than, cutoff)
            count, cutoff = await self._arun("job_purge", *call)
            total += int(count)
            if int(count) < SWEEP_CHUNK:
                return total

    async def ajob_progress(self, queue: str, batch: str) -> BatchProgress:
        reply = await self._arun("job_progress", self._base(queue), [_required(batch, "batch")])
        return _progress(reply)

    async def ajob_queues(self) -> list[str]:
        names = self._names(await self._arun("job_names", [self._keys.job_queues()], []))
        if not self._cluster:
            return names
        return [name for name in names if int(await self._arun("job_count", self._base(name), []))]

"""SQLite: shared buckets, circuits and job queues for several processes on one host.

One database file (stdlib :mod:`sqlite3`, WAL journal) holds three tables,
created on first use: ``resilience_buckets`` (one ``REAL`` per bucket: its
theoretical arrival time), ``resilience_circuits`` (one row per circuit) and
``resilience_jobs`` (one row per job, see :mod:`resilience.storage.sqlite_jobs`).
A file written by an older version gains the tables and columns it lacks when a
store first opens it (``CREATE … IF NOT EXISTS``, ``ALTER TABLE … ADD COLUMN``).

Atomicity
---------
Every state change is one ``BEGIN IMMEDIATE`` transaction: it takes SQLite's
write lock first, reads the rows, reads the clock, applies the *same pure
function* the memory store applies (:func:`resilience._core.bucket.take_all`,
:func:`~resilience._core.bucket.refund`, :func:`~resilience._core.bucket.penalize`, the
breaker's compare-and-set and probe rules, :mod:`resilience._core.circuit`), writes
the rows and commits. Writers are serialized by the file lock, so processes
never over-grant and a composite acquisition is all or nothing. Readers
(``bucket_tokens``, ``breaker_load``) never block writers (WAL).

Time
----
The store reads its own clock inside the transaction: the wall clock
(``time.time``) by default, shared by every process on the host and
meaningful after a restart (the file outlives processes, so a monotonic clock
that restarts at boot would not do). Tests inject a
:class:`~resilience.testing.FakeClock`. The breaker's ``now`` argument is
ignored, as the protocol allows for stores with a clock of their own. A break
that does not fit in a finite number (``inf``, NaN) is stored as
:data:`~resilience._core.breaker.MAX_BREAK`: it never means "no break".

Jobs
----
The ``job_*`` methods (:class:`~resilience.storage.jobs.TransactionalJobStore`)
run the units of work of :mod:`~resilience.storage.sqlite_jobs` the same way:
a write transaction applies the job core's per-job transitions to the rows it
read, so a claim never hands one job to two processes. Job times are on
``clock``. ``job_enqueue`` and ``job_complete`` also run on the caller's own
:class:`sqlite3.Connection` to the same file (``connection=``), inside the
caller's open transaction, which is never committed or rolled back here: the
caller's busy timeout applies then, not ``timeout``. While that transaction
holds SQLite's write lock, every other writer of the file (claims, heartbeats,
other stores) waits for it, so keep it short.

Half-open probe permits are leased: they lapse together ``probe_lease``
seconds (or the breaker's own lease) after the last one was handed out, so a
process killed while it held one cannot wedge the circuit in HALF_OPEN.

Concurrency and timeouts
------------------------
One connection per store object and process, shared by threads under a lock
(SQLite serializes writers anyway); a forked child opens its own. ``timeout``
bounds the *whole* call: each call has a deadline, and the wait for that lock,
SQLite's busy wait for the file lock (``PRAGMA busy_timeout``, lowered to what
remains) and, for the ``a``-prefixed twins, the wait for a worker all come out
of it. Past it, and on any other ``sqlite3`` error, the call raises
:class:`~resilience.StoreUnavailable`.

The ``a``-prefixed twins run the sync call on the store's own worker thread
(one per store object and process, started on first use): a local file needs
no async driver, the event loop never blocks on the file lock, and calls stuck
behind another process's lock never occupy the event loop's default executor
(the application's own :func:`asyncio.to_thread` work keeps running). A call
still waiting for the worker at its deadline is dropped unrun.

A deleted or replaced file
--------------------------
Deleting the database file while processes use it would split the shared
state: old connections keep writing to the unlinked file, new stores start a
fresh one. Before every write (and before a read, at most every
:data:`FILE_CHECK_INTERVAL` seconds) the store compares the path's identity
(``st_dev``, ``st_ino``) with the file its connection opened; on a mismatch
the call raises :class:`~resilience.StoreUnavailable` saying so (the policy's
``on_store_failure`` applies), and the next call opens the file now at the path.

Idle rows
---------
A bucket that is full again is deleted opportunistically: every
``SWEEP_EVERY`` writes a store deletes the full buckets among the next
``SWEEP_ROWS`` row ids (a bounded range scan, no index needed), so the table
stays proportional to the keys used recently.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime
import functools
import math
import numbers
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

from .._core.breaker import CircuitState
from .._core.bucket import FULL, BucketSpec, Decision, penalize, refund, take_all, tokens
from .._core.circuit import (
    NEVER_MOVED,
    Circuit,
    Transition,
    acquire_probe,
    lease_or,
    release_probe,
    snapshot,
    transition,
)
from .._core.jobs import check_claim
from ..clock import Clock
from ..errors import ConfigurationError, StoreUnavailable
from . import sqlite_jobs
from ._sql import encode_key
from .breakers import DEFAULT_PROBE_LEASE, CircuitSnapshot, SnapshotCallback
from .buckets import BucketRequest
from .jobs import (
    BatchProgress,
    Job,
    JobState,
    LeaseLost,
    NewJob,
    QueueStats,
    WallClock,
    check_duration,
    check_list_arguments,
)

__all__ = ["MAX_TIMEOUT", "SQLiteStore"]

T = TypeVar("T")

#: Writes between two sweeps of idle buckets (per store object).
SWEEP_EVERY = 64
#: Row ids examined per sweep.
SWEEP_ROWS = 512
#: Seconds between two checks, on the read path, that the file is still the one opened
#: (every write checks).
FILE_CHECK_INTERVAL = 0.1
#: The largest ``timeout`` accepted (seconds): one day.
MAX_TIMEOUT = 86400.0
#: Seconds an async call waits past its deadline for a verdict from a worker that
#: had already started its call (the worker's own waits end at the deadline).
_GRACE = 0.1
#: ``PRAGMA busy_timeout`` is changed only when it is off by more than this (ms).
_BUSY_SLACK_MS = 10

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS resilience_buckets (
        name TEXT NOT NULL,
        key TEXT NOT NULL,
        tat REAL NOT NULL,
        PRIMARY KEY (name, key)
    )""",
    """CREATE TABLE IF NOT EXISTS resilience_circuits (
        name TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        version INTEGER NOT NULL,
        trips INTEGER NOT NULL,
        reason TEXT NOT NULL,
        open_until REAL NOT NULL,
        probes_out INTEGER NOT NULL,
        probe_successes INTEGER NOT NULL,
        probes_lapse_at REAL NOT NULL DEFAULT 0.0
    )""",
    *sqlite_jobs.SCHEMA,
)
#: Columns added since the first schema: (table, column, definition).
_MIGRATIONS = (
    ("resilience_circuits", "probes_lapse_at", "REAL NOT NULL DEFAULT 0.0"),
    *sqlite_jobs.MIGRATIONS,
)

_GET_TAT = "SELECT tat FROM resilience_buckets WHERE name = ? AND key = ?"
_PUT_TAT = (
    "INSERT INTO resilience_buckets (name, key, tat) VALUES (?, ?, ?) "
    "ON CONFLICT (name, key) DO UPDATE SET tat = excluded.tat"
)
_DELETE_TAT = "DELETE FROM resilience_buckets WHERE name = ? AND key = ?"
_GET_CIRCUIT = (
    "SELECT state, version, trips, reason, open_until, probes_out, probe_successes, "
    "probes_lapse_at FROM resilience_circuits WHERE name = ?"
)
_PUT_CIRCUIT = (
    "INSERT INTO resilience_circuits (name, state, version, trips, reason, open_until, "
    "probes_out, probe_successes, probes_lapse_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET "
    "state = excluded.state, version = excluded.version, trips = excluded.trips, "
    "reason = excluded.reason, open_until = excluded.open_until, "
    "probes_out = excluded.probes_out, probe_successes = excluded.probe_successes, "
    "probes_lapse_at = excluded.probes_lapse_at"
)
_SET_PROBES = "UPDATE resilience_circuits SET probes_out = ?, probes_lapse_at = ? WHERE name = ?"

# (state, version, trips, reason, open_until, probes_out, probe_successes, probes_lapse_at)
_Work = Callable[[sqlite3.Connection, float], T]


class SQLiteStore:
    """Buckets and circuits in one SQLite file, shared by the processes of one host.

    ``path`` is the database file (created on first use if missing; its
    directory must exist and be writable, which is checked here).
    ``timeout`` (seconds, at most :data:`MAX_TIMEOUT`) bounds every call, sync
    or async, from start to answer. ``clock`` is read inside each transaction
    (default: the wall clock). Breakers poll the file for changes at most
    ``breaker_staleness`` seconds apart (SQLite cannot push changes).
    ``probe_lease`` (seconds) is how long half-open probe permits are held at
    most when the breaker does not give a lease of its own.

    Invalid options raise :class:`~resilience.ConfigurationError` naming them.

    It is also a job store (:class:`~resilience.storage.jobs.TransactionalJobStore`,
    the ``job_*`` methods): jobs are dated by ``clock``, and ``job_enqueue`` and
    ``job_complete`` accept ``connection=``, your own :class:`sqlite3.Connection` to
    the same file inside your open transaction.
    """

    job_transactional: Literal[True] = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | datetime.timedelta = 5.0,
        clock: Clock | None = None,
        breaker_staleness: float | datetime.timedelta = 1.0,
        probe_lease: float | datetime.timedelta = DEFAULT_PROBE_LEASE,
    ) -> None:
        problems: list[tuple[str, str]] = []
        given, file = _check_path(path, problems)
        self.timeout = _seconds(problems, "timeout", timeout, positive=True, ceiling=MAX_TIMEOUT)
        self.breaker_staleness = _seconds(problems, "breaker_staleness", breaker_staleness)
        self.probe_lease = _seconds(problems, "probe_lease", probe_lease, positive=True)
        if clock is not None and not callable(getattr(clock, "now", None)):
            problems.append(("clock", f"expected a Clock (with now()), got {clock!r}"))
        if problems:
            raise ConfigurationError("SQLiteStore", problems)
        self.path = given
        self.url = f"sqlite:///{self.path}"
        self._file = file  # absolute: a later chdir changes nothing
        self._clock: Clock = WallClock() if clock is None else clock
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._next_check = 0.0
        self._busy_ms = 0
        self._writes = 0
        self._sweep_from = 0
        self._pool_lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    # -- connection and transactions ---------------------------------------------------

    def _forked(self) -> None:
        """In a forked child: nothing of the parent's connection, locks or worker is usable."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._connection = None  # the parent's: left alone, never closed here
        self._pool = None

    def _open(self, deadline: float) -> sqlite3.Connection:
        remaining = deadline - time.monotonic()
        connection = sqlite3.connect(
            self._file, timeout=remaining, isolation_level=None, check_same_thread=False
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                connection.execute(statement)
            _migrate(connection)
            identity = _identity_of(self._file)
            if identity is None:
                raise self._moved("was deleted as it was being opened")
        except BaseException:
            connection.close()
            raise
        self._connection, self._identity = connection, identity
        self._busy_ms = int(remaining * 1000)
        self._next_check = time.monotonic() + FILE_CHECK_INTERVAL
        return connection

    def _moved(self, what: str) -> StoreUnavailable:
        return StoreUnavailable(
            self.url,
            f"the database file {self._file!r} {what} while in use: the state it held is "
            "no longer shared with stores opening the path (the next call opens the file "
            "now at the path)",
        )

    def _check_file(self) -> None:
        """Fail if the path no longer names the file this connection opened."""
        identity = _identity_of(self._file)
        if identity == self._identity:
            self._next_check = time.monotonic() + FILE_CHECK_INTERVAL
            return
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
        raise self._moved("was deleted" if identity is None else "was replaced by another file")

    def _bound_busy(self, connection: sqlite3.Connection, deadline: float) -> None:
        """SQLite's busy wait for the file lock ends at the deadline, too."""
        busy_ms = int((deadline - time.monotonic()) * 1000)
        if busy_ms <= 0:
            raise StoreUnavailable(self.url, f"no answer within {self.timeout}s")
        if abs(busy_ms - self._busy_ms) > _BUSY_SLACK_MS:
            connection.execute(f"PRAGMA busy_timeout = {busy_ms:d}")
            self._busy_ms = busy_ms

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        return StoreUnavailable(self.url, f"{type(error).__name__}: {error}")

    @contextmanager
    def _session(self, deadline: float, write: bool) -> Iterator[sqlite3.Connection]:
        """This process's connection, under the lock, until ``deadline`` (monotonic);
        driver errors become StoreUnavailable."""
        if self._pid != os.getpid():
            self._forked()
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self._lock.acquire(timeout=remaining):
            raise StoreUnavailable(self.url, f"no connection free within {self.timeout}s")
        try:
            try:
                connection = self._connection
                if connection is None:
                    connection = self._open(deadline)
                else:
                    if write or time.monotonic() >= self._next_check:
                        self._check_file()
                    self._bound_busy(connection, deadline)
                yield connection
            except sqlite3.Error as error:
                raise self._unavailable(error) from error
        finally:
            self._lock.release()

    def _transaction(self, work: _Work[T], deadline: float | None = None) -> T:
        """Run ``work(connection, now)`` in one ``BEGIN IMMEDIATE`` transaction."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        with self._session(deadline, True) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection, self._clock.now())
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return result

    def _read(self, work: _Work[T], deadline: float | None = None) -> T:
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        with self._session(deadline, False) as connection:
            return work(connection, self._clock.now())

    def _worker(self) -> concurrent.futures.ThreadPoolExecutor:
        """This store's own worker thread (the async twins never use the default executor)."""
        if self._pid != os.getpid():
            self._forked()
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                pool = self._pool
                if pool is None:
                    pool = self._pool = concurrent.futures.ThreadPoolExecutor(
                        max_workers=1, thread_name_prefix="resilience-sqlite"
                    )
        return pool

    async def _arun(self, run: Callable[[_Work[T], float], T], work: _Work[T]) -> T:
        """``run(work, deadline)`` on the worker; the whole call ends by the deadline."""
        deadline = time.monotonic() + self.timeout
        job = self._worker().submit(run, work, deadline)
        waiter = asyncio.wrap_future(job)
        try:
            done, _ = await asyncio.wait((waiter,), timeout=self.timeout)
            if not done:
                if job.cancel():  # still queued: it will never run
                    raise StoreUnavailable(self.url, f"no worker free within {self.timeout}s")
                # Running: its own waits end at the deadline; its verdict is due.
                done, _ = await asyncio.wait((waiter,), timeout=_GRACE)
                if not done:
                    waiter.cancel()
                    raise StoreUnavailable(self.url, f"no answer within {self.timeout}s")
        except asyncio.CancelledError:
            job.cancel()
            waiter.cancel()
            raise
        return waiter.result()

    def close(self) -> None:
        """Close this process's connection and worker (the next call reopens them)."""
        if self._pid != os.getpid():
            self._forked()
            return
        with self._lock:
            if self._connection is not None:
                self._connection.close()
            self._connection = None
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def _wrote(self, connection: sqlite3.Connection, now: float) -> None:
        """Count a write; every SWEEP_EVERY writes, drop some full buckets."""
        self._writes += 1
        if self._writes % SWEEP_EVERY:
            return
        start = self._sweep_from
        connection.execute(
            "DELETE FROM resilience_buckets WHERE rowid > ? AND rowid <= ? AND tat <= ?",
            (start, start + SWEEP_ROWS, now),
        )
        (last,) = connection.execute(
            "SELECT coalesce(max(rowid), 0) FROM resilience_buckets"
        ).fetchone()
        self._sweep_from = 0 if start + SWEEP_ROWS >= last else start + SWEEP_ROWS

    # -- buckets: each operation is a unit of work, run here or on the worker ----------------

    def _take(self, requests: Sequence[BucketRequest], max_wait: float) -> _Work[Decision]:
        rows = [(request.name, encode_key(request.key)) for request in requests]
        costs = [request.cost for request in requests]
        specs = [request.spec for request in requests]

        def work(connection: sqlite3.Connection, now: float) -> Decision:
            old = [_tat(connection, row) for row in rows]
            new, decision = take_all(old, now, costs, specs, max_wait)
            if decision.granted:
                connection.executemany(
                    _PUT_TAT, [(*row, tat) for row, tat in zip(rows, new, strict=True)]
                )
                self._wrote(connection, now)
            return decision

        return work

    def _refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> _Work[None]:
        rows = [(request.name, encode_key(request.key)) for request in requests]

        def work(connection: sqlite3.Connection, now: float) -> None:
            for row, (before, after) in zip(rows, reserved, strict=True):
                found = connection.execute(_GET_TAT, row).fetchone()
                if found is None:
                    continue
                tat = refund(found[0], before, after)
                if math.isfinite(tat):
                    connection.execute(_PUT_TAT, (*row, tat))
                else:
                    connection.execute(_DELETE_TAT, row)

        return work

    def _penalize(
        self, name: str, key: str | None, spec: BucketSpec, seconds: float
    ) -> _Work[None]:
        row = (name, encode_key(key))

        def work(connection: sqlite3.Connection, now: float) -> None:
            connection.execute(
                _PUT_TAT, (*row, penalize(_tat(connection, row), now, seconds, spec))
            )
            self._wrote(connection, now)

        return work

    def _tokens(self, name: str, key: str | None, spec: BucketSpec) -> _Work[float]:
        row = (name, encode_key(key))
        return lambda connection, now: tokens(_tat(connection, row), now, spec)

    def bucket_take(self, requests: Sequence[BucketRequest], max_wait: float = 0.0) -> Decision:
        return self._transaction(self._take(requests, max_wait))

    def bucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        self._transaction(self._refund(requests, reserved))

    def bucket_penalize(self, name: str, key: str | None, spec: BucketSpec, seconds: float) -> None:
        self._transaction(self._penalize(name, key, spec, seconds))

    def bucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        return self._read(self._tokens(name, key, spec))

    async def abucket_take(
        self, requests: Sequence[BucketRequest], max_wait: float = 0.0
    ) -> Decision:
        return await self._arun(self._transaction, self._take(requests, max_wait))

    async def abucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        await self._arun(self._transaction, self._refund(requests, reserved))

    async def abucket_penalize(
        self, name: str, key: str | None, spec: BucketSpec, seconds: float
    ) -> None:
        await self._arun(self._transaction, self._penalize(name, key, spec, seconds))

    async def abucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        return await self._arun(self._read, self._tokens(name, key, spec))

    def bucket_count(self, name: str | None = None) -> int:
        """Rows held (idle buckets not swept yet included), for one limiter or all."""
        args: tuple[str, ...] = ()
        if name is None:
            query = "SELECT count(*) FROM resilience_buckets"
        else:
            query = "SELECT count(*) FROM resilience_buckets WHERE name = ?"
            args = (name,)
        return int(
            self._read(lambda connection, now: connection.execute(query, args).fetchone()[0])
        )

    # -- circuits --------------------------------------------------------------------

    def _load(self, name: str) -> _Work[CircuitSnapshot]:
        return lambda connection, now: snapshot(_circuit(connection, name), now)

    def _move(self, name: str, change: Transition) -> _Work[tuple[bool, CircuitSnapshot]]:
        def work(connection: sqlite3.Connection, now: float) -> tuple[bool, CircuitSnapshot]:
            # The store's clock, not the caller's: every process agrees on the break.
            won, circuit = transition(_circuit(connection, name), _at(change, now))
            if won:
                connection.execute(_PUT_CIRCUIT, _row(name, circuit))
            return won, snapshot(circuit, now)

        return work

    def _acquire(self, name: str, version: int, limit: int, lease: float | None) -> _Work[bool]:
        held = lease_or(lease, self.probe_lease)

        def work(connection: sqlite3.Connection, now: float) -> bool:
            granted, circuit = acquire_probe(_circuit(connection, name), version, limit, held, now)
            if granted:
                probes = (circuit.probes_out, circuit.probes_lapse_at, name)
                connection.execute(_SET_PROBES, probes)
            return granted

        return work

    def _release(self, name: str, version: int, succeeded: bool | None) -> _Work[int]:
        def work(connection: sqlite3.Connection, now: float) -> int:
            successes, circuit = release_probe(_circuit(connection, name), version, succeeded)
            if successes >= 0:
                connection.execute(_PUT_CIRCUIT, _row(name, circuit))
            return successes

        return work

    def breaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return self._read(self._load(name))

    def breaker_transition(self, name: str, change: Transition) -> tuple[bool, CircuitSnapshot]:
        """Apply ``change`` (see the protocol); the store's clock times the break."""
        return self._transaction(self._move(name, change))

    def breaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        """Take a permit (see the protocol); ``now`` is ignored: the store's clock decides
        when permits lapse. ``lease=None`` means :attr:`probe_lease`."""
        return self._transaction(self._acquire(name, version, limit, lease))

    def breaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        return self._transaction(self._release(name, version, succeeded))

    def breaker_watch(self, name: str, callback: SnapshotCallback) -> None:
        """SQLite cannot push changes: breakers poll (see ``breaker_staleness``)."""
        return None

    async def abreaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return await self._arun(self._read, self._load(name))

    async def abreaker_transition(
        self, name: str, change: Transition
    ) -> tuple[bool, CircuitSnapshot]:
        return await self._arun(self._transaction, self._move(name, change))

    async def abreaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        return await self._arun(self._transaction, self._acquire(name, version, limit, lease))

    async def abreaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        return await self._arun(self._transaction, self._release(name, version, succeeded))

    # -- jobs: each call is a unit of work of sqlite_jobs, run here, on the worker, or on
    #    the caller's own connection -------------------------------------------------------

    def _on(self, connection: Any, work: _Work[T]) -> T:
        """Run ``work`` on the caller's connection, inside the caller's transaction: never
        committed or rolled back here, and the caller's busy timeout applies."""
        try:
            with sqlite_jobs.caller(connection, self._file) as checked:
                return work(checked, self._clock.now())
        except sqlite3.Error as error:
            raise self._unavailable(error) from error

    def _job_write(self, work: _Work[T], connection: Any = None) -> T:
        return self._transaction(work) if connection is None else self._on(connection, work)

    async def _ajob_write(self, work: _Work[T], connection: Any = None) -> T:
        if connection is not None:  # a sync object of the caller's thread: used right here
            return self._on(connection, work)
        return await self._arun(self._transaction, work)

    @staticmethod
    def _settled(done: bool, connection: Any, queue: str, job_id: int) -> bool:
        if not done and connection is not None:
            raise LeaseLost(queue, job_id)  # so that the caller's transaction rolls back
        return done

    def _enqueue(self, queue: str, jobs: Sequence[NewJob]) -> _Work[list[tuple[int, bool]]]:
        jobs = list(jobs)
        for new in jobs:
            sqlite_jobs.check_new(new)
        return functools.partial(sqlite_jobs.enqueue, queue=queue, jobs=jobs)

    def _claim(self, queue: str, worker: str, limit: int, lease: float) -> _Work[list[Job]]:
        check_claim(now=0.0, limit=limit, lease=lease)
        return functools.partial(
            sqlite_jobs.claim, queue=queue, worker=worker, limit=limit, lease=float(lease)
        )

    def _heartbeat(
        self, queue: str, worker: str, job_ids: Sequence[int], lease: float
    ) -> _Work[list[int]]:
        lease = check_duration(lease, "lease", positive=True)
        return functools.partial(
            sqlite_jobs.heartbeat, queue=queue, worker=worker, job_ids=list(job_ids), lease=lease
        )

    def _complete(self, queue: str, job_id: int, worker: str) -> _Work[bool]:
        return functools.partial(sqlite_jobs.complete, queue=queue, job_id=job_id, worker=worker)

    def _fail(self, queue: str, job_id: int, worker: str, **decision: Any) -> _Work[bool]:
        return functools.partial(
            sqlite_jobs.fail, queue=queue, job_id=job_id, worker=worker, **decision
        )

    def _defer(self, queue: str, job_id: int, worker: str, delay: float) -> _Work[bool]:
        delay = check_duration(delay, "delay")
        return functools.partial(
            sqlite_jobs.defer, queue=queue, job_id=job_id, worker=worker, delay=delay
        )

    def _purge(self, queue: str, older_than: float) -> _Work[int]:
        older_than = check_duration(older_than, "older_than")
        return functools.partial(sqlite_jobs.purge, queue=queue, older_than=older_than)

    def _listing(self, queue: str, state: JobState | None, limit: int) -> _Work[list[Job]]:
        check_list_arguments(state, limit)
        return functools.partial(sqlite_jobs.listing, queue=queue, state=state, limit=limit)

    def job_enqueue(
        self, queue: str, jobs: Sequence[NewJob], *, connection: Any = None
    ) -> list[tuple[int, bool]]:
        """Add ``jobs`` (all or none); with ``connection``, in your open transaction on
        this store's file (the outbox pattern)."""
        return self._job_write(self._enqueue(queue, jobs), connection)

    def job_claim(self, queue: str, worker: str, limit: int, lease: float) -> list[Job]:
        return self._transaction(self._claim(queue, worker, limit, lease))

    def job_heartbeat(
        self, queue: str, worker: str, job_ids: Sequence[int], lease: float
    ) -> list[int]:
        return self._transaction(self._heartbeat(queue, worker, job_ids, lease))

    def job_complete(self, queue: str, job_id: int, worker: str, *, connection: Any = None) -> bool:
        """Settle the job as done; with ``connection``, in your open transaction on this
        store's file, raising :class:`~resilience.storage.jobs.LeaseLost` if the lease
        is not held (roll back then)."""
        done = self._job_write(self._complete(queue, job_id, worker), connection)
        return self._settled(done, connection, queue, job_id)

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
        work = self._fail(
            queue,
            job_id,
            worker,
            retry=retry,
            delay=delay,
            error_class=error_class,
            reason=reason,
            error=error,
        )
        return self._transaction(work)

    def job_defer(self, queue: str, job_id: int, worker: str, delay: float) -> bool:
        return self._transaction(self._defer(queue, job_id, worker, delay))

    def job_get(self, queue: str, job_id: int) -> Job | None:
        return self._read(functools.partial(sqlite_jobs.get, queue=queue, job_id=job_id))

    def job_list(self, queue: str, state: JobState | None = None, limit: int = 100) -> list[Job]:
        return self._read(self._listing(queue, state, limit))

    def job_stats(self, queue: str) -> QueueStats:
        return self._read(functools.partial(sqlite_jobs.stats, queue=queue))

    def job_replay(self, queue: str, job_id: int) -> bool:
        return self._transaction(functools.partial(sqlite_jobs.replay, queue=queue, job_id=job_id))

    def job_replay_all(self, queue: str) -> int:
        return self._transaction(functools.partial(sqlite_jobs.replay_all, queue=queue))

    def job_purge(self, queue: str, older_than: float) -> int:
        return self._transaction(self._purge(queue, older_than))

    def job_progress(self, queue: str, batch: str) -> BatchProgress:
        return self._read(functools.partial(sqlite_jobs.progress, queue=queue, batch=batch))

    def job_queues(self) -> list[str]:
        return self._read(sqlite_jobs.queues)

    async def ajob_enqueue(
        self, queue: str, jobs: Sequence[NewJob], *, connection: Any = None
    ) -> list[tuple[int, bool]]:
        return await self._ajob_write(self._enqueue(queue, jobs), connection)

    async def ajob_claim(self, queue: str, worker: str, limit: int, lease: float) -> list[Job]:
        return await self._arun(self._transaction, self._claim(queue, worker, limit, lease))

    async def ajob_heartbeat(
        self, queue: str, worker: str, job_ids: Sequence[int], lease: float
    ) -> list[int]:
        work = self._heartbeat(queue, worker, job_ids, lease)
        return await self._arun(self._transaction, work)

    async def ajob_complete(
        self, queue: str, job_id: int, worker: str, *, connection: Any = None
    ) -> bool:
        done = await self._ajob_write(self._complete(queue, job_id, worker), connection)
        return self._settled(done, connection, queue, job_id)

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
        work = self._fail(
            queue,
            job_id,
            worker,
            retry=retry,
            delay=delay,
            error_class=error_class,
            reason=reason,
            error=error,
        )
        return await self._arun(self._transaction, work)

    async def ajob_defer(self, queue: str, job_id: int, worker: str, delay: float) -> bool:
        return await self._arun(self._transaction, self._defer(queue, job_id, worker, delay))

    async def ajob_get(self, queue: str, job_id: int) -> Job | None:
        work = functools.partial(sqlite_jobs.get, queue=queue, job_id=job_id)
        return await self._arun(self._read, work)

    async def ajob_list(
        self, queue: str, state: JobState | None = None, limit: int = 100
    ) -> list[Job]:
        return await self._arun(self._read, self._listing(queue, state, limit))

    async def ajob_stats(self, queue: str) -> QueueStats:
        return await self._arun(self._read, functools.partial(sqlite_jobs.stats, queue=queue))

    async def ajob_replay(self, queue: str, job_id: int) -> bool:
        work = functools.partial(sqlite_jobs.replay, queue=queue, job_id=job_id)
        return await self._arun(self._transaction, work)

    async def ajob_replay_all(self, queue: str) -> int:
        work = functools.partial(sqlite_jobs.replay_all, queue=queue)
        return await self._arun(self._transaction, work)

    async def ajob_purge(self, queue: str, older_than: float) -> int:
        return await self._arun(self._transaction, self._purge(queue, older_than))

    async def ajob_progress(self, queue: str, batch: str) -> BatchProgress:
        work = functools.partial(sqlite_jobs.progress, queue=queue, batch=batch)
        return await self._arun(self._read, work)

    async def ajob_queues(self) -> list[str]:
        return await self._arun(self._read, sqlite_jobs.queues)

    def __getstate__(self) -> dict[str, Any]:
        # Picklable (e.g. handed to a spawned process): the connection stays behind.
        return {
            "path": self.path,
            "timeout": self.timeout,
            "clock": None if isinstance(self._clock, WallClock) else self._clock,
            "breaker_staleness": self.breaker_staleness,
            "probe_lease": self.probe_lease,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["path"],
            timeout=state["timeout"],
            clock=state["clock"],
            breaker_staleness=state["breaker_staleness"],
            probe_lease=state.get("probe_lease", DEFAULT_PROBE_LEASE),
        )

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, timeout={self.timeout!r})"


def _seconds(
    problems: list[tuple[str, str]],
    field: str,
    value: object,
    *,
    positive: bool = False,
    ceiling: float = math.inf,
) -> float:
    """A finite number of seconds (or a ``timedelta``), else a problem naming ``field``."""
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        problems.append((field, f"expected a number of seconds, got {type(value).__name__}"))
        return 0.0
    try:
        seconds = float(value)
    except (OverflowError, ValueError):
        seconds = math.inf
    if not math.isfinite(seconds):
        problems.append((field, f"must be a finite number, got {value!r:.40}"))
    elif positive and not seconds > 0:
        problems.append((field, f"must be > 0, got {value!r}"))
    elif seconds < 0:
        problems.append((field, f"must be >= 0, got {value!r}"))
    elif seconds > ceiling:
        problems.append((field, f"must be <= {ceiling:g}, got {value!r:.40}"))
    return seconds


def _check_path(path: Any, problems: list[tuple[str, str]]) -> tuple[str, str]:
    """``(path as given, absolute path)``; what makes the file unusable is a problem
    now rather than a StoreUnavailable on first use. The file itself is not created."""
    try:
        given = os.fsdecode(os.fspath(path))
    except TypeError:
        problems.append(("path", f"expected a file path, got {type(path).__name__}"))
        return "", ""
    problem = _path_problem(given)
    if problem is not None:
        problems.append(("path", f"{given!r:.200}: {problem}"))
        return given, ""
    return given, os.path.abspath(given)


def _path_problem(given: str) -> str | None:
    if given in ("", ":memory:"):
        return "SQLite needs a file that processes can share; for one process use MemoryStore"
    if "\x00" in given:
        return "contains a NUL character"
    file = os.path.abspath(given)
    folder = os.path.dirname(file)
    if not os.path.isdir(folder):
        return f"directory {folder!r} does not exist"
    if os.path.isdir(file):
        return "is a directory"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"directory {folder!r} is not writable (SQLite creates -wal and -shm files there)"
    if not os.path.exists(file):
        return None
    if not os.access(file, os.R_OK | os.W_OK):
        return "cannot be opened for reading and writing"
    try:
        with open(file, "rb") as opened:
            header = opened.read(16)
    except OSError as error:
        return f"cannot be opened ({error})"
    if len(header) == 16 and header != b"SQLite format 3\x00":
        return "is not an SQLite database"
    return None


def _identity_of(file: str) -> tuple[int, int] | None:
    """The file's ``(st_dev, st_ino)``, ``None`` if nothing is at the path."""
    try:
        found = os.stat(file)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _migrate(connection: sqlite3.Connection) -> None:
    """Add the columns a file made by an older version lacks (once, under the write lock)."""

    def missing() -> list[tuple[str, str, str]]:
        columns: dict[str, set[str]] = {}
        for table, _, _ in _MIGRATIONS:
            if table not in columns:
                rows = connection.execute(f"PRAGMA table_info({table})").fetchall()
                columns[table] = {row[1] for row in rows}
        return [m for m in _MIGRATIONS if m[1] not in columns[m[0]]]

    if not missing():
        return
    connection.execute("BEGIN IMMEDIATE")  # another process may be migrating too
    try:
        for table, column, definition in missing():
            connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _tat(connection: sqlite3.Connection, row: tuple[str, str]) -> float:
    found = connection.execute(_GET_TAT, row).fetchone()
    return FULL if found is None else float(found[0])


def _circuit(connection: sqlite3.Connection, name: str) -> Circuit:
    # A row holding an infinite break (as older versions wrote inf) reads as
    # MAX_BREAK remaining: the snapshot rule never turns it into no break.
    found = connection.execute(_GET_CIRCUIT, (name,)).fetchone()
    if found is None:
        return NEVER_MOVED
    state, version, trips, reason, open_until, out, successes, lapse_at = found
    return Circuit(
        CircuitState(state), version, trips, reason, open_until, out, successes, lapse_at
    )


def _row(name: str, circuit: Circuit) -> tuple[Any, ...]:
    """The parameters of ``_PUT_CIRCUIT`` for ``circuit``."""
    return (
        name,
        circuit.state.value,
        circuit.version,
        circuit.trips,
        circuit.reason,
        circuit.open_until,
        circuit.probes_out,
        circuit.probe_successes,
        circuit.probes_lapse_at,
    )


def _at(change: Transition, now: float) -> Transition:
    return change if change.now == now else dataclasses.replace(change, now=now)

"""SQLite: shared buckets and circuits for several processes on one host.

One database file (stdlib :mod:`sqlite3`, WAL journal) holds two tables,
created on first use: ``resilience_buckets`` (one ``REAL`` per bucket: its
theoretical arrival time) and ``resilience_circuits`` (one row per circuit).

Atomicity
---------
Every state change is one ``BEGIN IMMEDIATE`` transaction: it takes SQLite's
write lock first, reads the rows, reads the clock, applies the *same pure
function* the memory store applies (:func:`resilience._bucket.take_all`,
:func:`~resilience._bucket.refund`, :func:`~resilience._bucket.penalize`, the
breaker's compare-and-set), writes the rows and commits. Writers are serialized
by the file lock, so processes never over-grant and a composite acquisition is
all or nothing. Readers (``bucket_tokens``, ``breaker_load``) never block
writers (WAL).

Time
----
The store reads its own clock inside the transaction: the wall clock
(``time.time``) by default, shared by every process on the host and
meaningful after a restart (the file outlives processes, so a monotonic clock
that restarts at boot would not do). Tests inject a
:class:`~resilience.testing.FakeClock`. The breaker's ``now`` argument is
ignored, as the protocol allows for stores with a clock of their own.

Concurrency and timeouts
------------------------
One connection per store object and process, shared by threads under a lock
(SQLite serializes writers anyway); a forked child opens its own. ``timeout``
bounds both the wait for that lock and SQLite's busy wait for the file lock;
past it, and on any other ``sqlite3`` error, the call raises
:class:`~resilience.StoreUnavailable`. The ``a``-prefixed twins run the sync
call in a worker thread (:func:`asyncio.to_thread`): a local file needs no
async driver, and the event loop never blocks on the file lock.

Idle rows
---------
A bucket that is full again is deleted opportunistically: every
``SWEEP_EVERY`` writes a store deletes the full buckets among the next
``SWEEP_ROWS`` row ids (a bounded range scan, no index needed), so the table
stays proportional to the keys used recently.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from .._breaker_core import CircuitState
from .._bucket import FULL, BucketSpec, Decision, penalize, refund, take_all, tokens
from .._clock import Clock
from ..errors import ConfigurationError, StoreUnavailable
from ._sql import encode_key, snapshot_of
from .breakers import CircuitSnapshot, SnapshotCallback
from .buckets import BucketRequest

__all__ = ["SQLiteStore"]

T = TypeVar("T")

#: Writes between two sweeps of idle buckets (per store object).
SWEEP_EVERY = 64
#: Row ids examined per sweep.
SWEEP_ROWS = 512

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
        probe_successes INTEGER NOT NULL
    )""",
)

_GET_TAT = "SELECT tat FROM resilience_buckets WHERE name = ? AND key = ?"
_PUT_TAT = (
    "INSERT INTO resilience_buckets (name, key, tat) VALUES (?, ?, ?) "
    "ON CONFLICT (name, key) DO UPDATE SET tat = excluded.tat"
)
_DELETE_TAT = "DELETE FROM resilience_buckets WHERE name = ? AND key = ?"
_GET_CIRCUIT = (
    "SELECT state, version, trips, reason, open_until, probes_out, probe_successes "
    "FROM resilience_circuits WHERE name = ?"
)
_PUT_CIRCUIT = (
    "INSERT INTO resilience_circuits "
    "(name, state, version, trips, reason, open_until, probes_out, probe_successes) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
    "state = excluded.state, version = excluded.version, trips = excluded.trips, "
    "reason = excluded.reason, open_until = excluded.open_until, "
    "probes_out = excluded.probes_out, probe_successes = excluded.probe_successes"
)
_SET_PROBES = "UPDATE resilience_circuits SET probes_out = ?, probe_successes = ? WHERE name = ?"

# (state, version, trips, reason, open_until, probes_out, probe_successes)
_Circuit = tuple[str, int, int, str, float, int, int]
_NO_CIRCUIT: _Circuit = (CircuitState.CLOSED.value, 0, 0, "initial state", 0.0, 0, 0)


class _WallClock:
    """The host's wall clock: shared by its processes, and it survives reboots."""

    __slots__ = ()

    now = staticmethod(time.time)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "WallClock()"


class SQLiteStore:
    """Buckets and circuits in one SQLite file, shared by the processes of one host.

    ``path`` is the database file (created if missing; its directory must
    exist). ``timeout`` (seconds) bounds every call's wait for a lock.
    ``clock`` is read inside each transaction (default: the wall clock).
    Breakers poll the file for changes at most ``breaker_staleness`` seconds
    apart (SQLite cannot push changes).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        clock: Clock | None = None,
        breaker_staleness: float = 1.0,
    ) -> None:
        if not timeout > 0 or not math.isfinite(timeout):
            raise ConfigurationError("SQLiteStore", [("timeout", f"must be > 0, got {timeout!r}")])
        if not breaker_staleness >= 0:
            raise ConfigurationError(
                "SQLiteStore",
                [("breaker_staleness", f"must be >= 0, got {breaker_staleness!r}")],
            )
        self.path = os.fspath(path)
        self.url = f"sqlite:///{self.path}"
        self.timeout = float(timeout)
        self.breaker_staleness = float(breaker_staleness)
        self._clock: Clock = _WallClock() if clock is None else clock
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        self._writes = 0
        self._sweep_from = 0

    # -- connection and transactions ---------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                connection.execute(statement)
        except BaseException:
            connection.close()
            raise
        return connection

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        return StoreUnavailable(self.url, f"{type(error).__name__}: {error}")

    @contextmanager
    def _session(self) -> Iterator[sqlite3.Connection]:
        """This process's connection, under the lock; driver errors become StoreUnavailable."""
        if not self._lock.acquire(timeout=self.timeout):
            raise StoreUnavailable(self.url, f"no connection free within {self.timeout}s")
        try:
            try:
                connection = self._connection
                if connection is None or self._pid != os.getpid():
                    # A forked child must not share its parent's connection.
                    self._connection = connection = self._connect()
                    self._pid = os.getpid()
                yield connection
            except sqlite3.Error as error:
                raise self._unavailable(error) from error
        finally:
            self._lock.release()

    def _transaction(self, work: Callable[[sqlite3.Connection, float], T]) -> T:
        """Run ``work(connection, now)`` in one ``BEGIN IMMEDIATE`` transaction."""
        with self._session() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection, self._clock.now())
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return result

    def _read(self, work: Callable[[sqlite3.Connection, float], T]) -> T:
        with self._session() as connection:
            return work(connection, self._clock.now())

    def close(self) -> None:
        """Close this process's connection (the next call reopens it)."""
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None

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

    # -- buckets ---------------------------------------------------------------------

    def bucket_take(self, requests: Sequence[BucketRequest], max_wait: float = 0.0) -> Decision:
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

        return self._transaction(work)

    def bucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
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

        self._transaction(work)

    def bucket_penalize(self, name: str, key: str | None, spec: BucketSpec, seconds: float) -> None:
        row = (name, encode_key(key))

        def work(connection: sqlite3.Connection, now: float) -> None:
            connection.execute(
                _PUT_TAT, (*row, penalize(_tat(connection, row), now, seconds, spec))
            )
            self._wrote(connection, now)

        self._transaction(work)

    def bucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        row = (name, encode_key(key))
        return self._read(lambda connection, now: tokens(_tat(connection, row), now, spec))

    async def abucket_take(
        self, requests: Sequence[BucketRequest], max_wait: float = 0.0
    ) -> Decision:
        return await asyncio.to_thread(self.bucket_take, requests, max_wait)

    async def abucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        await asyncio.to_thread(self.bucket_refund, requests, reserved)

    async def abucket_penalize(
        self, name: str, key: str | None, spec: BucketSpec, seconds: float
    ) -> None:
        await asyncio.to_thread(self.bucket_penalize, name, key, spec, seconds)

    async def abucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        return await asyncio.to_thread(self.bucket_tokens, name, key, spec)

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

    def breaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return self._read(
            lambda connection, clock_now: _snapshot(_circuit(connection, name), clock_now)
        )

    def breaker_transition(
        self,
        name: str,
        expected_version: int,
        state: CircuitState,
        reason: str,
        trips: int,
        break_duration: float,
        now: float,
    ) -> tuple[bool, CircuitSnapshot]:
        def work(connection: sqlite3.Connection, clock_now: float) -> tuple[bool, CircuitSnapshot]:
            current = _circuit(connection, name)
            if current[1] != expected_version:
                return False, _snapshot(current, clock_now)
            open_until = clock_now + break_duration if state is CircuitState.OPEN else 0.0
            new: _Circuit = (state.value, expected_version + 1, trips, reason, open_until, 0, 0)
            connection.execute(_PUT_CIRCUIT, (name, *new))
            return True, _snapshot(new, clock_now)

        return self._transaction(work)

    def breaker_acquire_probe(self, name: str, version: int, limit: int) -> bool:
        def work(connection: sqlite3.Connection, now: float) -> bool:
            state, current, _, _, _, out, successes = _circuit(connection, name)
            if current != version or state != CircuitState.HALF_OPEN.value or out >= limit:
                return False
            connection.execute(_SET_PROBES, (out + 1, successes, name))
            return True

        return self._transaction(work)

    def breaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        def work(connection: sqlite3.Connection, now: float) -> int:
            circuit = _circuit(connection, name)
            if circuit[1] != version:
                return -1
            out = max(0, circuit[5] - 1)
            successes = circuit[6] + (1 if succeeded else 0)
            connection.execute(_PUT_CIRCUIT, (name, *circuit[:5], out, successes))
            return successes

        return self._transaction(work)

    def breaker_watch(self, name: str, callback: SnapshotCallback) -> None:
        """SQLite cannot push changes: breakers poll (see ``breaker_staleness``)."""
        return None

    async def abreaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return await asyncio.to_thread(self.breaker_load, name, now)

    async def abreaker_transition(
        self,
        name: str,
        expected_version: int,
        state: CircuitState,
        reason: str,
        trips: int,
        break_duration: float,
        now: float,
    ) -> tuple[bool, CircuitSnapshot]:
        return await asyncio.to_thread(
            self.breaker_transition,
            name,
            expected_version,
            state,
            reason,
            trips,
            break_duration,
            now,
        )

    async def abreaker_acquire_probe(self, name: str, version: int, limit: int) -> bool:
        return await asyncio.to_thread(self.breaker_acquire_probe, name, version, limit)

    async def abreaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        return await asyncio.to_thread(self.breaker_release_probe, name, version, succeeded)

    def __getstate__(self) -> dict[str, Any]:
        # Picklable (e.g. handed to a spawned process): the connection stays behind.
        return {
            "path": self.path,
            "timeout": self.timeout,
            "clock": None if isinstance(self._clock, _WallClock) else self._clock,
            "breaker_staleness": self.breaker_staleness,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["path"],
            timeout=state["timeout"],
            clock=state["clock"],
            breaker_staleness=state["breaker_staleness"],
        )

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, timeout={self.timeout!r})"


def _tat(connection: sqlite3.Connection, row: tuple[str, str]) -> float:
    found = connection.execute(_GET_TAT, row).fetchone()
    return FULL if found is None else float(found[0])


def _circuit(connection: sqlite3.Connection, name: str) -> _Circuit:
    found = connection.execute(_GET_CIRCUIT, (name,)).fetchone()
    return _NO_CIRCUIT if found is None else tuple(found)


def _snapshot(circuit: _Circuit, now: float) -> CircuitSnapshot:
    state, version, trips, reason, open_until = circuit[:5]
    return snapshot_of((state, version, trips, reason, open_until - now))

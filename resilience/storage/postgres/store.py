"""The :class:`PostgresStore` class: the storage protocols over PostgreSQL.

What each part does and why is told in :mod:`resilience.storage.postgres`. This
module validates the options, writes each operation once (a generator of
statements, run by the sync and the async driver alike), and runs it on a pooled
connection under a client-side deadline, mapping psycopg's errors to
:class:`~resilience.StoreUnavailable` or to the call's :class:`ValueError`. The SQL
(``schema``), the pools (``connections``), the deadline (``watchdog``) and the DSN
(``dsn``) have modules of their own beside it, and so do the job queue's
statements and methods (``jobs``, a mixin of the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeAlias, TypeVar

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolClosed, PoolTimeout

from ..._core.breaker import MAX_BREAK, CircuitState
from ..._core.bucket import FULL, BucketSpec, Decision, tokens
from ...clock import Clock
from ...errors import ConfigurationError, StoreUnavailable
from .._sql import encode_key, snapshot_of
from ..breakers import DEFAULT_PROBE_LEASE, CircuitSnapshot, SnapshotCallback, Transition
from ..buckets import BucketRequest
from .connections import AsyncConnection, Connection, Health, Pools
from .dsn import check_dsn, display
from .jobs import JobQueries, PostgresJobs
from .schema import Query, Schema
from .values import MAX_NAME_BYTES, held_break, name_problem, storable_text
from .watchdog import WATCHDOG, cut_connection

__all__ = ["MAX_NAME_BYTES", "PostgresStore"]

T = TypeVar("T")

#: Acquisitions between two sweeps of idle buckets (per store object).
SWEEP_EVERY = 256
#: Idle bucket rows deleted per sweep, at most.
SWEEP_ROWS = 200
#: The longest ``timeout`` accepted (``statement_timeout`` is an int of milliseconds).
MAX_TIMEOUT = 86_400.0
#: The largest ``pool_size`` accepted (a server's ``max_connections`` is usually 100).
MAX_POOL_SIZE = 1000

#: Deadlocks and serialization failures abort a statement that changed nothing: retry.
_RETRIED = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_ATTEMPTS = 2
#: Errors the server or the driver blames on a call's input: that call's ValueError.
_INPUT_ERRORS = (psycopg.DataError, psycopg.errors.ProgramLimitExceeded, UnicodeError)
#: The schema is gone (dropped under us): re-created by the next call.
_SCHEMA_GONE = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.UndefinedColumn,
)
#: While the server is known down (no connection open, the last attempt failed),
#: a call waits this long at most for one instead of the whole timeout.
_DOWN_WAIT = 0.25

# An operation is a generator: it yields (query, params) and receives the rows.
_Rows: TypeAlias = list[tuple[Any, ...]]
_Op: TypeAlias = Generator[Query, _Rows, T]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


# -- validation ------------------------------------------------------------------------------


def _number(value: object) -> float | None:
    """The value as a float if it is a real number (not a bool, not a string), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


class PostgresStore(PostgresJobs):
    """Buckets, circuits and jobs in PostgreSQL tables, shared by every process that connects.

    ``dsn`` is a libpq connection string or URL (``postgresql://user@host/db``;
    ``postgres://`` is libpq's alias). ``timeout`` (seconds) bounds every
    statement and lock wait on the server, every connection attempt, and every
    wait for a free connection; a call that gets no answer within ``timeout``
    plus a margin (a frozen server) is cut off client-side. ``pool_size``
    connections at most per process (and per event loop for async calls);
    more concurrent callers wait their turn. ``table`` prefixes the tables and
    functions it creates (``<table>_buckets``, ``<table>_circuits``). Breakers
    poll for changes at most ``breaker_staleness`` seconds apart. A half-open
    probe permit is held at most ``probe_lease`` seconds (unless the breaker
    says otherwise) on the server's clock: a probe whose process died cannot
    wedge the circuit. ``synchronous_commit=False`` sets PostgreSQL's
    ``synchronous_commit=off`` for the store's sessions: each acquisition no
    longer waits for its WAL flush (faster), at the price that a server
    *crash* may forget the last fraction of a second of acquisitions (buckets
    then look fuller than they were).

    Jobs (:class:`~resilience.storage.jobs.JobStore`, in ``<table>_jobs``) are
    dated by the server's clock, or by ``job_clock`` when one is given (a
    :class:`~resilience.clock.Clock` whose ``now()`` is seconds since the epoch;
    for tests, a fake clock). ``job_enqueue`` and ``job_complete`` accept the
    caller's own psycopg connection to the same database (``connection=``):
    see :mod:`resilience.storage.postgres.jobs`.
    """

    def __init__(
        self,
        dsn: str,
        *,
        timeout: float = 2.0,
        table: str = "resilience",
        breaker_staleness: float = 1.0,
        synchronous_commit: bool = True,
        pool_size: int = 10,
        probe_lease: float = DEFAULT_PROBE_LEASE,
        job_clock: Clock | None = None,
    ) -> None:
        problems: list[tuple[str, str]] = []
        info, dsn_problem = check_dsn(dsn)
        if dsn_problem is not None:
            problems.append(("dsn", dsn_problem))
        number = _number(timeout)
        if number is None or not 0 < number <= MAX_TIMEOUT:
            problems.append(
                (
                    "timeout",
                    f"must be a number of seconds > 0 and <= {MAX_TIMEOUT:g}, got {timeout!r}",
                )
            )
        if not (isinstance(table, str) and 0 < len(table) <= 40 and name_problem(table) is None):
            problems.append(("table", f"must be a name of 1 to 40 characters, got {table!r}"))
        number = _number(breaker_staleness)
        if number is None or not 0 <= number < math.inf:
            problems.append(
                ("breaker_staleness", f"must be a finite number >= 0, got {breaker_staleness!r}")
            )
        if not isinstance(synchronous_commit, bool):
            problems.append(
                ("synchronous_commit", f"must be True or False, got {synchronous_commit!r}")
            )
        if not (
            isinstance(pool_size, int)
            and not isinstance(pool_size, bool)
            and 1 <= pool_size <= MAX_POOL_SIZE
        ):
            problems.append(
                (
                    "pool_size",
                    f"must be a whole number from 1 to {MAX_POOL_SIZE}, got {pool_size!r}",
                )
            )
        number = _number(probe_lease)
        if number is None or not 0 < number <= MAX_BREAK:
            problems.append(
                ("probe_lease", f"must be a finite number of seconds > 0, got {probe_lease!r}")
            )
        if job_clock is not None and not callable(getattr(job_clock, "now", None)):
            problems.append(
                ("job_clock", f"must be a Clock (with now()) or None, got {job_clock!r}")
            )
        if problems:
            raise ConfigurationError("PostgresStore", problems)
        assert info is not None
        self.dsn = dsn
        self.url = display(info)
        self.timeout = float(timeout)
        self.table = table
        self.breaker_staleness = float(breaker_staleness)
        self.synchronous_commit = synchronous_commit
        self.pool_size = pool_size
        self.probe_lease = float(probe_lease)
        self.job_clock = job_clock
        # An answer may take the server's own timeout, plus a margin for the trip back.
        self._answer_within = self.timeout + min(1.0, 0.1 + self.timeout / 4)
        self._schema = Schema(table)
        self._pools = Pools(
            dsn,
            table=table,
            timeout=self.timeout,
            pool_size=pool_size,
            synchronous_commit=synchronous_commit,
        )
        self._ready = False  # the schema is known to be in place
        self._names: set[str] = set()  # names already checked
        self._takes = 0
        self._queries = self._schema.queries()
        self._job_queries = JobQueries(table, job_clock)

    # -- the schema, created on first use ---------------------------------------------

    def _setup(self, connection: psycopg.Connection[Any]) -> None:
        query, params = self._schema.probe()
        row = connection.execute(query, params).fetchone()
        if row is None or not row[0]:
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
                for statement in self._schema.statements():
                    connection.execute(statement)
        self._ready = True

    async def _asetup(self, connection: psycopg.AsyncConnection[Any]) -> None:
        query, params = self._schema.probe()
        row = await (await connection.execute(query, params)).fetchone()
        if row is None or not row[0]:
            async with connection.transaction():
                await connection.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,)
                )
                for statement in self._schema.statements():
                    await connection.execute(statement)
        self._ready = True

    # -- errors --------------------------------------------------------------------------

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        return StoreUnavailable(self.url, f"{type(error).__name__}: {_first_line(error)}")

    def _no_connection(self, health: Health, waited: float) -> StoreUnavailable:
        error = health.error
        why = "" if error is None else f" ({type(error).__name__}: {_first_line(error)})"
        return StoreUnavailable(self.url, f"no connection within {waited:g}s{why}")

    def _no_answer(self) -> StoreUnavailable:
        return StoreUnavailable(
            self.url,
            f"timeout: no answer within {self._answer_within:g}s (connection closed)",
        )

    def _bad_input(self, error: BaseException) -> ValueError:
        return ValueError(
            f"PostgresStore {self.url}: this call's input cannot be stored "
            f"({type(error).__name__}: {_first_line(error)})"
        )

    def _wait_for_connection(self, health: Health) -> float:
        return min(self.timeout, _DOWN_WAIT) if health.down() else self.timeout

    def _check_name(self, name: str) -> None:
        if name in self._names:
            return
        problem = name_problem(name)
        if problem is not None:
            shown = (
                repr(name[:40]) + ("…" if len(name) > 40 else "") if isinstance(name, str) else ""
            )
            raise ValueError(f"PostgresStore: the policy name {shown} {problem}".replace("  ", " "))
        if len(self._names) >= 4096:
            self._names.clear()
        self._names.add(name)

    # -- running an operation ------------------------------------------------------------

    def _attempt(self, connection: psycopg.Connection[Any], make: Callable[[], _Op[T]]) -> T:
        for attempt in range(_ATTEMPTS):
            try:
                if not self._ready:
                    self._setup(connection)
                return _drive(make(), connection)
            except _RETRIED:
                if attempt + 1 == _ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _aattempt(
        self, connection: psycopg.AsyncConnection[Any], make: Callable[[], _Op[T]]
    ) -> T:
        for attempt in range(_ATTEMPTS):
            try:
                if not self._ready:
                    await self._asetup(connection)
                return await _adrive(make(), connection)
            except _RETRIED:
                if attempt + 1 == _ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _failed(self, error: psycopg.Error, cut: bool) -> StoreUnavailable:
        if isinstance(error, _SCHEMA_GONE):
            self._ready = False  # dropped under us: the next call creates it again
        if cut:
            return self._no_answer()
        return self._unavailable(error)

    def _connection(self) -> tuple[ConnectionPool[Connection], Connection]:
        """A connection from this process's pool, waiting up to ``timeout`` for one."""
        for attempt in range(_ATTEMPTS):
            pool, health = self._pools.sync()
            wait = self._wait_for_connection(health)
            try:
                return pool, pool.getconn(wait)
            except PoolTimeout as error:
                raise self._no_connection(health, wait) from (health.error or error)
            except PoolClosed as error:  # close() ran meanwhile: the next pool serves
                if attempt + 1 == _ATTEMPTS:
                    raise self._unavailable(error) from error
        raise AssertionError("unreachable")  # pragma: no cover

    async def _aconnection(
        self,
    ) -> tuple[AsyncConnectionPool[AsyncConnection], AsyncConnection]:
        loop = asyncio.get_running_loop()
        for attempt in range(_ATTEMPTS):
            pool, health = await self._pools.of_loop(loop)
            wait = self._wait_for_connection(health)
            try:
                return pool, await pool.getconn(wait)
            except PoolTimeout as error:
                raise self._no_connection(health, wait) from (health.error or error)
            except PoolClosed as error:  # aclose() ran meanwhile: the next pool serves
                if attempt + 1 == _ATTEMPTS:
                    raise self._unavailable(error) from error
        raise AssertionError("unreachable")  # pragma: no cover

    def _run(self, make: Callable[[], _Op[T]]) -> T:
        """Run an operation on a pooled connection, bounded client-side too."""
        pool, connection = self._connection()
        cut = False
        try:
            ticket = WATCHDOG.arm(connection, self._answer_within)
            try:
                return self._attempt(connection, make)
            finally:
                cut = not WATCHDOG.disarm(ticket)
        except _INPUT_ERRORS as error:
            raise self._bad_input(error) from error
        except psycopg.Error as error:
            raise self._failed(error, cut) from error
        finally:
            if cut:
                with contextlib.suppress(psycopg.Error):
                    connection.close()  # it may be mid-conversation: never reuse it
            broken = connection.closed
            pool.putconn(connection)  # a closed connection is discarded and replaced
            if broken:
                # The server restarted, or the network failed: the idle ones
                # are likely dead too. Replace them rather than fail on each.
                pool.drain()

    async def _arun(self, make: Callable[[], _Op[T]]) -> T:
        loop = asyncio.get_running_loop()
        pool, connection = await self._aconnection()
        cut = False

        def expire() -> None:
            nonlocal cut
            cut = True
            cut_connection(connection)

        timer = loop.call_later(self._answer_within, expire)
        try:
            return await self._aattempt(connection, make)
        except _INPUT_ERRORS as error:
            raise self._bad_input(error) from error
        except psycopg.Error as error:
            raise self._failed(error, cut) from error
        finally:
            timer.cancel()
            if cut:
                await _aclose_quietly(connection)
            broken = connection.closed
            # Shielded: a task cancelled while it hands the connection back must
            # not lose it (the pool would shrink for good).
            await asyncio.shield(_agive_back(pool, connection, broken))

    def _run_on(self, connection: Any, make: Callable[[], _Op[T]]) -> T:
        """Run an operation on the caller's connection, in its transaction, as it is."""
        if not isinstance(connection, psycopg.Connection):
            raise TypeError(
                "connection= must be a psycopg.Connection to the store's database, "
                f"got {type(connection).__name__}"
            )
        if not self._ready:
            self._run(_nothing)  # the schema, on a pooled connection: not in the caller's work
        try:
            return _drive(make(), connection)
        except _INPUT_ERRORS as error:
            raise self._bad_input(error) from error
        except psycopg.Error as error:
            raise self._failed(error, False) from error

    async def _arun_on(self, connection: Any, make: Callable[[], _Op[T]]) -> T:
        if not isinstance(connection, psycopg.AsyncConnection):
            raise TypeError(
                "connection= must be a psycopg.AsyncConnection to the store's database, "
                f"got {type(connection).__name__}"
            )
        if not self._ready:
            await self._arun(_nothing)
        try:
            return await _adrive(make(), connection)
        except _INPUT_ERRORS as error:
            raise self._bad_input(error) from error
        except psycopg.Error as error:
            raise self._failed(error, False) from error

    def close(self) -> None:
        """Close this process's sync pool (the next call opens a new one)."""
        self._pools.close()

    async def aclose(self) -> None:
        """Close this event loop's async pool, and the sync one."""
        await self._pools.aclose(asyncio.get_running_loop())
        self.close()

    def backend_pids(self) -> list[int]:
        """Server process ids of this store's open connections (for tests and ops)."""
        pids = []
        for health in self._pools.healths():
            for connection in health.open_connections():
                with contextlib.suppress(psycopg.Error):
                    pids.append(connection.info.backend_pid)
        return pids

    # -- operations, written once for both drivers ------------------------------------

    def _take(self, requests: Sequence[BucketRequest], max_wait: float) -> _Op[Decision]:
        for request in requests:
            self._check_name(request.name)
        specs = [request.spec for request in requests]
        self._takes += 1
        sweep = SWEEP_ROWS if self._takes % SWEEP_EVERY == 0 else 0
        params = (
            [request.name for request in requests],
            [encode_key(request.key) for request in requests],
            [request.cost * request.spec.interval for request in requests],
            [request.spec.headroom_for(request.cost) for request in requests],
            [request.spec.capacity - request.cost * request.spec.interval for request in requests],
            [spec.interval for spec in specs],
            [spec.capacity for spec in specs],
            [float(spec.burst) for spec in specs],
            max_wait,
            sweep,
        )
        rows = yield self._queries["take"], params
        granted, wait, retry_after, left, olds, news = rows[0]
        if not granted:
            return Decision(False, 0.0, float(retry_after), float(left))
        reserved = tuple(zip(olds, news, strict=True)) if wait > 0 else ()
        return Decision(True, float(wait), 0.0, float(left), reserved)

    def _refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> _Op[None]:
        for request in requests:
            self._check_name(request.name)
        params = (
            [request.name for request in requests],
            [encode_key(request.key) for request in requests],
            [before for before, _ in reserved],
            [after for _, after in reserved],
        )
        yield self._queries["refund"], params

    def _penalize(self, name: str, key: str | None, spec: BucketSpec, seconds: float) -> _Op[None]:
        self._check_name(name)
        params = (name, encode_key(key), seconds, spec.capacity - spec.interval)
        yield self._queries["penalize"], params

    def _tokens(self, name: str, key: str | None, spec: BucketSpec) -> _Op[float]:
        self._check_name(name)
        rows = yield self._queries["tokens"], (name, encode_key(key))
        now, tat = rows[0]
        return tokens(FULL if tat is None else float(tat), float(now), spec)

    def _load(self, name: str) -> _Op[CircuitSnapshot]:
        self._check_name(name)
        rows = yield self._queries["load"], (name,)
        return snapshot_of(rows[0] if rows else None)

    def _transition(self, name: str, change: Transition) -> _Op[tuple[bool, CircuitSnapshot]]:
        self._check_name(name)
        params = {
            "name": name,
            "expected": change.expected_version,
            "state": change.state.value,
            "reason": storable_text(change.reason),
            "trips": change.trips,
            "open": change.state is CircuitState.OPEN,
            "duration": held_break(float(change.break_duration)),
        }
        query = self._queries["create" if change.expected_version == 0 else "transition"]
        rows = yield query, params
        if rows:
            return True, snapshot_of(rows[0])
        return False, (yield from self._load(name))  # lost the race: a second round trip

    def _acquire_probe(self, name: str, version: int, limit: int, lease: float | None) -> _Op[bool]:
        self._check_name(name)
        seconds = self.probe_lease if lease is None or not lease > 0 else min(lease, MAX_BREAK)
        params = {"name": name, "version": version, "limit": limit, "lease": seconds}
        rows = yield self._queries["acquire"], params
        return bool(rows)

    def _release_probe(self, name: str, version: int, succeeded: bool | None) -> _Op[int]:
        self._check_name(name)
        success = 1 if succeeded else 0
        if version == 0:  # a circuit never moved may have no row yet
            rows = yield self._queries["release0"], (name, success)
        else:
            rows = yield self._queries["release"], (success, name, version)
        return int(rows[0][0]) if rows else -1

    # -- the protocols -------------------------------------------------------------------

    def bucket_take(self, requests: Sequence[BucketRequest], max_wait: float = 0.0) -> Decision:
        return self._run(lambda: self._take(requests, max_wait))

    def bucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        self._run(lambda: self._refund(requests, reserved))

    def bucket_penalize(self, name: str, key: str | None, spec: BucketSpec, seconds: float) -> None:
        self._run(lambda: self._penalize(name, key, spec, seconds))

    def bucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        return self._run(lambda: self._tokens(name, key, spec))

    async def abucket_take(
        self, requests: Sequence[BucketRequest], max_wait: float = 0.0
    ) -> Decision:
        return await self._arun(lambda: self._take(requests, max_wait))

    async def abucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        await self._arun(lambda: self._refund(requests, reserved))

    async def abucket_penalize(
        self, name: str, key: str | None, spec: BucketSpec, seconds: float
    ) -> None:
        await self._arun(lambda: self._penalize(name, key, spec, seconds))

    async def abucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        return await self._arun(lambda: self._tokens(name, key, spec))

    def bucket_count(self, name: str | None = None) -> int:
        """Rows held (idle buckets not swept yet included), for one limiter or all."""

        def count() -> _Op[int]:
            if name is not None:
                self._check_name(name)
            rows = yield self._queries["count"], (name, name)
            return int(rows[0][0])

        return self._run(count)

    def breaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return self._run(lambda: self._load(name))

    def breaker_transition(self, name: str, change: Transition) -> tuple[bool, CircuitSnapshot]:
        """Apply ``change`` (see the protocol); the server's clock times the break."""
        return self._run(lambda: self._transition(name, change))

    def breaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        return self._run(lambda: self._acquire_probe(name, version, limit, lease))

    def breaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        return self._run(lambda: self._release_probe(name, version, succeeded))

    def breaker_watch(self, name: str, callback: SnapshotCallback) -> None:
        """Not pushed (no LISTEN yet): breakers poll, see ``breaker_staleness``."""
        return None

    async def abreaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return await self._arun(lambda: self._load(name))

    async def abreaker_transition(
        self, name: str, change: Transition
    ) -> tuple[bool, CircuitSnapshot]:
        return await self._arun(lambda: self._transition(name, change))

    async def abreaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        return await self._arun(lambda: self._acquire_probe(name, version, limit, lease))

    async def abreaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        return await self._arun(lambda: self._release_probe(name, version, succeeded))

    # -- pickling (hand a store to a spawned process) and display ----------------------

    def __getstate__(self) -> dict[str, Any]:
        return {
            "dsn": self.dsn,
            "timeout": self.timeout,
            "table": self.table,
            "breaker_staleness": self.breaker_staleness,
            "synchronous_commit": self.synchronous_commit,
            "pool_size": self.pool_size,
            "probe_lease": self.probe_lease,
            "job_clock": self.job_clock,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["dsn"],
            timeout=state["timeout"],
            table=state["table"],
            breaker_staleness=state["breaker_staleness"],
            synchronous_commit=state["synchronous_commit"],
            pool_size=state.get("pool_size", 10),
            probe_lease=state.get("probe_lease", DEFAULT_PROBE_LEASE),
            job_clock=state.get("job_clock"),
        )

    def __repr__(self) -> str:
        return (
            f"PostgresStore({self.url!r}, table={self.table!r}, timeout={self.timeout!r}, "
            f"pool_size={self.pool_size!r})"
        )


def _nothing() -> _Op[None]:
    """An operation of no statement (running it creates the schema if need be)."""
    return None
    yield  # pragma: no cover - makes this a generator


def _drive(op: _Op[T], connection: psycopg.Connection[Any]) -> T:
    try:
        query, params = next(op)
        while True:
            # Tuple rows whatever the connection's row factory (the caller's may differ).
            cursor = connection.cursor(row_factory=tuple_row).execute(query, params)
            rows = cursor.fetchall() if cursor.description is not None else []
            query, params = op.send(rows)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def _adrive(op: _Op[T], connection: psycopg.AsyncConnection[Any]) -> T:
    try:
        query, params = next(op)
        while True:
            cursor = await connection.cursor(row_factory=tuple_row).execute(query, params)
            rows = await cursor.fetchall() if cursor.description is not None else []
            query, params = op.send(rows)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def _agive_back(
    pool: AsyncConnectionPool[AsyncConnection], connection: Any, broken: bool
) -> None:
    await pool.putconn(connection)  # a closed connection is discarded and replaced
    if broken:
        await pool.drain()  # see PostgresStore._run


async def _aclose_quietly(connection: psycopg.AsyncConnection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):  # closing a dead connection
        await connection.close()

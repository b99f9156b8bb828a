"""PostgreSQL: shared buckets and circuits for a fleet, through psycopg 3.

Two tables, ``<table>_buckets`` (one ``double precision`` per bucket: its
theoretical arrival time) and ``<table>_circuits`` (one row per circuit), and
three PL/pgSQL functions, are created on first use (``IF NOT EXISTS``, under an
advisory lock so that processes starting together do not race on the DDL).

One round trip per operation
----------------------------
* **Acquisition** is one statement, ``SELECT * FROM <table>_take_v4(...)``: a
  PL/pgSQL function that locks the bucket rows with ``SELECT … FOR UPDATE``,
  one by one in ``(name, key)`` order (one order for every process, so
  composite acquisitions do not deadlock; a bucket never used first gets a
  full row, ``INSERT … ON CONFLICT DO NOTHING``, then is locked), reads the
  server clock (``clock_timestamp()``) *after* taking the locks, applies the
  rule of :func:`resilience._bucket.take_all` in ``float8`` arithmetic (the
  same IEEE operations, in the same order, on the same inputs: the per-request
  constants are computed in Python exactly as the memory store computes
  them), writes the new states and returns the decision. It runs in the
  statement's own transaction (the connection is in autocommit mode), so the
  row locks are held for microseconds, never across a network round trip. A
  function beats a bare ``INSERT … ON CONFLICT DO UPDATE`` here because a
  composite acquisition must see every bucket before changing any; for a
  single bucket it costs the same one round trip.
* **Refund** is one call to ``<table>_refund_v2`` (same lock order), a
  **penalty** one ``INSERT … ON CONFLICT DO UPDATE SET tat = greatest(…)``,
  **tokens** one ``SELECT``.
* **Circuits**: ``breaker_load`` is one ``SELECT``; ``breaker_transition`` one
  ``UPDATE … WHERE version = expected RETURNING`` (an ``INSERT … ON CONFLICT
  DO UPDATE … WHERE version = 0`` for a circuit never moved), plus one
  ``SELECT`` only when the compare-and-set lost; probe permits are one
  conditional ``UPDATE … RETURNING`` each.

Time is the server's (``extract(epoch FROM clock_timestamp())``), so clients
whose clocks disagree share consistent buckets and breaks; answers are relative
seconds. The breaker's ``now`` argument is ignored.

Safety
------
Values are numbers and text bound as parameters; table and function names are
composed with :class:`psycopg.sql.Identifier`, never interpolated as text.
Every connection sets ``statement_timeout`` and ``lock_timeout`` to
``timeout``, a ``connect_timeout``, TCP keepalives and ``tcp_user_timeout``; an
async call is also bounded by the event loop. Any psycopg error becomes
:class:`~resilience.StoreUnavailable` (chained from the original); a broken
connection is dropped and the next call reconnects. A deadlock or
serialization failure (which changed nothing) is retried once.

Connections: one sync connection per store object (shared by threads; psycopg
serializes its use) and one async connection per event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import weakref
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeAlias, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from .._breaker_core import CircuitState
from .._bucket import FULL, BucketSpec, Decision, tokens
from ..errors import ConfigurationError, StoreUnavailable
from ._sql import encode_key, snapshot_of
from .breakers import CircuitSnapshot, SnapshotCallback
from .buckets import BucketRequest

__all__ = ["PostgresStore"]

T = TypeVar("T")

#: Acquisitions between two sweeps of idle buckets (per store object).
SWEEP_EVERY = 256
#: Idle bucket rows deleted per sweep, at most.
SWEEP_ROWS = 200

#: Deadlocks and serialization failures abort a statement that changed nothing: retry.
_RETRIED = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_ATTEMPTS = 2

_NOW = "extract(epoch FROM clock_timestamp())::float8"

# An operation is a generator: it yields (query, params) and receives the rows.
_Query: TypeAlias = tuple[sql.Composed | sql.SQL, Sequence[Any] | dict[str, Any]]
_Rows: TypeAlias = list[tuple[Any, ...]]
_Op: TypeAlias = Generator[_Query, _Rows, T]

_TABLES = """
CREATE TABLE IF NOT EXISTS {buckets} (
    name text NOT NULL,
    key text NOT NULL,
    tat double precision NOT NULL,
    PRIMARY KEY (name, key)
);
CREATE TABLE IF NOT EXISTS {circuits} (
    name text PRIMARY KEY,
    state text NOT NULL,
    version bigint NOT NULL,
    trips integer NOT NULL,
    reason text NOT NULL,
    open_until double precision NOT NULL,
    probes_out integer NOT NULL,
    probe_successes integer NOT NULL
);
"""

_TAKE_FUNCTION = """
CREATE OR REPLACE FUNCTION {take}(
    p_names text[], p_keys text[], p_incs float8[], p_heads float8[], p_leads float8[],
    p_intervals float8[], p_capacities float8[], p_bursts float8[],
    p_max_wait float8, p_sweep integer)
RETURNS TABLE (granted boolean, wait float8, retry_after float8, tokens float8,
               olds float8[], news float8[])
LANGUAGE plpgsql VOLATILE AS $body$
DECLARE
    n integer := cardinality(p_names);
    t float8[] := ARRAY[]::float8[];
    nw float8[] := ARRAY[]::float8[];
    r record;
    now_ float8;
    s float8;
    d float8;
    reached float8;
    lft float8;
    x float8;
BEGIN
    -- Lock every bucket, one row at a time, in one order for everybody (so
    -- composite takes never deadlock); a bucket never used gets a full row first.
    IF n = 1 THEN  -- the common case, inline
        LOOP
            SELECT b.tat INTO x FROM {buckets} AS b
            WHERE b.name = p_names[1] AND b.key = p_keys[1]
            FOR UPDATE;
            EXIT WHEN FOUND;
            INSERT INTO {buckets} (name, key, tat) VALUES (p_names[1], p_keys[1], '-Infinity')
            ON CONFLICT (name, key) DO NOTHING;
        END LOOP;
        t[1] := x;
    ELSE
        FOR r IN
            SELECT u.name, u.key, u.ord
            FROM unnest(p_names, p_keys) WITH ORDINALITY AS u(name, key, ord)
            ORDER BY u.name, u.key
        LOOP
            t[r.ord] := {lock_one}(r.name, r.key);
        END LOOP;
    END IF;
    now_ := extract(epoch FROM clock_timestamp())::float8;
    -- resilience._bucket.take_all, operation for operation.
    s := now_;
    FOR i IN 1..n LOOP
        IF t[i] - p_heads[i] > now_ THEN
            s := greatest(s, t[i] - p_leads[i]);
        END IF;
    END LOOP;
    d := 0;
    IF s > now_ THEN
        d := s - now_;
        LOOP  -- exact_delay: now + d must reach s despite rounding
            reached := now_ + d;
            EXIT WHEN reached >= s;
            d := greatest(d + (s - reached), d + d * 2.220446049250313e-16);
        END LOOP;
    END IF;
    IF d > p_max_wait THEN
        FOR i IN 1..n LOOP
            x := CASE WHEN t[i] <= now_ THEN p_bursts[i]
                      ELSE greatest((p_capacities[i] - (t[i] - now_)) / p_intervals[i], 0) END;
            lft := least(lft, x);
        END LOOP;
        granted := false; wait := 0; retry_after := d; tokens := lft;
        RETURN NEXT;
        RETURN;
    END IF;
    FOR i IN 1..n LOOP
        nw := array_append(nw, greatest(t[i], s) + p_incs[i]);
        x := CASE WHEN nw[i] <= now_ THEN p_bursts[i]
                  ELSE greatest((p_capacities[i] - (nw[i] - now_)) / p_intervals[i], 0) END;
        lft := least(lft, x);
    END LOOP;
    FOR i IN 1..n LOOP
        UPDATE {buckets} SET tat = nw[i] WHERE name = p_names[i] AND key = p_keys[i];
    END LOOP;
    IF p_sweep > 0 THEN
        DELETE FROM {buckets} AS b WHERE b.ctid = ANY (ARRAY(
            SELECT c.ctid FROM {buckets} AS c
            WHERE c.tat <= now_ LIMIT p_sweep FOR UPDATE SKIP LOCKED));
    END IF;
    granted := true; wait := d; retry_after := 0; tokens := lft; olds := t; news := nw;
    RETURN NEXT;
END;
$body$
"""

_LOCK_FUNCTION = """
CREATE OR REPLACE FUNCTION {lock_one}(p_name text, p_key text)
RETURNS float8
LANGUAGE plpgsql VOLATILE AS $body$
DECLARE
    x float8;
BEGIN
    LOOP
        SELECT b.tat INTO x FROM {buckets} AS b
        WHERE b.name = p_name AND b.key = p_key
        FOR UPDATE;
        IF FOUND THEN
            RETURN x;
        END IF;
        -- Never used, or swept meanwhile: a full row, then lock it.
        INSERT INTO {buckets} (name, key, tat) VALUES (p_name, p_key, '-Infinity')
        ON CONFLICT (name, key) DO NOTHING;
    END LOOP;
END;
$body$
"""

_REFUND_FUNCTION = """
CREATE OR REPLACE FUNCTION {refund}(
    p_names text[], p_keys text[], p_befores float8[], p_afters float8[])
RETURNS void
LANGUAGE plpgsql VOLATILE AS $body$
DECLARE
    r record;
BEGIN
    -- The take's lock order; then resilience._bucket.refund: back to before
    -- only if the bucket is still at after.
    FOR r IN
        SELECT u.name, u.key, u.before, u.after
        FROM unnest(p_names, p_keys, p_befores, p_afters) AS u(name, key, before, after)
        ORDER BY u.name, u.key
    LOOP
        UPDATE {buckets} SET tat = r.before
        WHERE name = r.name AND key = r.key AND tat = r.after;
    END LOOP;
END;
$body$
"""


def _quoted(name: str) -> str:
    """A name as a quoted identifier, for to_regclass/to_regproc (which parse text)."""
    return '"' + name.replace('"', '""') + '"'


def _redacted(dsn: str) -> str:
    """``postgresql://user@host:port/db`` for messages: never the password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "postgresql://?"
    user = f"{info['user']}@" if info.get("user") else ""
    host = info.get("host") or "localhost"
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{host}{port}/{info.get('dbname') or ''}"


class PostgresStore:
    """Buckets and circuits in PostgreSQL tables, shared by every process that connects.

    ``dsn`` is a libpq connection string or URL (``postgresql://user@host/db``).
    ``timeout`` (seconds) bounds every statement, lock wait and connection
    attempt. ``table`` prefixes the tables and functions it creates
    (``<table>_buckets``, ``<table>_circuits``). Breakers poll for changes at
    most ``breaker_staleness`` seconds apart. ``synchronous_commit=False``
    sets PostgreSQL's ``synchronous_commit=off`` for the store's sessions:
    each acquisition no longer waits for its WAL flush (faster), at the price
    that a server *crash* may forget the last fraction of a second of
    acquisitions (buckets then look fuller than they were).
    """

    def __init__(
        self,
        dsn: str,
        *,
        timeout: float = 2.0,
        table: str = "resilience",
        breaker_staleness: float = 1.0,
        synchronous_commit: bool = True,
    ) -> None:
        problems: list[tuple[str, str]] = []
        if not (timeout > 0 and math.isfinite(timeout)):
            problems.append(("timeout", f"must be > 0 seconds, got {timeout!r}"))
        if not (isinstance(table, str) and 0 < len(table) <= 40):
            problems.append(("table", f"must be a name of 1 to 40 characters, got {table!r}"))
        if not breaker_staleness >= 0:
            problems.append(("breaker_staleness", f"must be >= 0, got {breaker_staleness!r}"))
        if problems:
            raise ConfigurationError("PostgresStore", problems)
        self.dsn = dsn
        self.url = _redacted(dsn)
        self.timeout = float(timeout)
        self.table = table
        self.breaker_staleness = float(breaker_staleness)
        self.synchronous_commit = bool(synchronous_commit)
        self._buckets = sql.Identifier(f"{table}_buckets")
        self._circuits = sql.Identifier(f"{table}_circuits")
        self._take_fn = sql.Identifier(f"{table}_take_v4")
        self._refund_fn = sql.Identifier(f"{table}_refund_v2")
        self._lock_fn = sql.Identifier(f"{table}_lock_v1")
        self._lock = threading.Lock()
        self._connection: psycopg.Connection[Any] | None = None
        self._pid = 0
        # Per event loop (an async connection belongs to the loop that opened it).
        self._aconnections: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, psycopg.AsyncConnection[Any]
        ] = weakref.WeakKeyDictionary()
        self._alocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._takes = 0
        self._queries = self._build_queries()

    # -- connections -----------------------------------------------------------------

    def _connect_options(self) -> dict[str, Any]:
        ms = max(1, int(self.timeout * 1000))
        seconds = max(2, math.ceil(self.timeout))
        return {
            "autocommit": True,
            "connect_timeout": seconds,
            "options": f"-c statement_timeout={ms} -c lock_timeout={ms}"
            + ("" if self.synchronous_commit else " -c synchronous_commit=off"),
            "keepalives": 1,
            "keepalives_idle": seconds,
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": ms,
            "application_name": "resilience",
        }

    def _schema(self) -> list[sql.Composed]:
        names = {
            "buckets": self._buckets,
            "circuits": self._circuits,
            "take": self._take_fn,
            "refund": self._refund_fn,
            "lock_one": self._lock_fn,
        }
        return [
            sql.SQL(_TABLES).format(**names),
            sql.SQL(_LOCK_FUNCTION).format(**names),
            sql.SQL(_TAKE_FUNCTION).format(**names),
            sql.SQL(_REFUND_FUNCTION).format(**names),
        ]

    def _schema_probe(self) -> _Query:
        """One query: is everything this version of the store needs in place?"""
        return (
            sql.SQL(
                "SELECT to_regproc(%s) IS NOT NULL AND to_regproc(%s) IS NOT NULL "
                "AND to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL"
            ),
            (
                _quoted(f"{self.table}_take_v4"),
                _quoted(f"{self.table}_refund_v2"),
                _quoted(f"{self.table}_buckets"),
                _quoted(f"{self.table}_circuits"),
            ),
        )

    def _setup(self, connection: psycopg.Connection[Any]) -> None:
        query, params = self._schema_probe()
        row = connection.execute(query, params).fetchone()
        if row is not None and row[0]:
            return
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            for statement in self._schema():
                connection.execute(statement)

    async def _asetup(self, connection: psycopg.AsyncConnection[Any]) -> None:
        query, params = self._schema_probe()
        row = await (await connection.execute(query, params)).fetchone()
        if row is not None and row[0]:
            return
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            for statement in self._schema():
                await connection.execute(statement)

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return StoreUnavailable(self.url, f"{type(error).__name__}: {reason}")

    def _run(self, make: Callable[[], _Op[T]]) -> T:
        """Run an operation on this process's connection (reconnecting if needed)."""
        if not self._lock.acquire(timeout=self.timeout):
            raise StoreUnavailable(self.url, f"no connection free within {self.timeout}s")
        try:
            for attempt in range(_ATTEMPTS):
                try:
                    connection = self._connection
                    if connection is None or connection.closed or self._pid != os.getpid():
                        connection = psycopg.connect(self.dsn, **self._connect_options())
                        self._connection, self._pid = connection, os.getpid()
                        self._setup(connection)
                    return _drive(make(), connection)
                except _RETRIED as error:
                    if attempt + 1 == _ATTEMPTS:
                        raise self._unavailable(error) from error
                except psycopg.Error as error:
                    self._drop_if_broken()
                    raise self._unavailable(error) from error
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self._lock.release()

    def _drop_if_broken(self) -> None:
        connection = self._connection
        if connection is not None and (connection.closed or connection.broken):
            self._connection = None
            with contextlib.suppress(psycopg.Error):  # closing a dead connection
                connection.close()

    async def _arun(self, make: Callable[[], _Op[T]]) -> T:
        loop = asyncio.get_running_loop()
        lock = self._alocks.get(loop)
        if lock is None:
            lock = self._alocks.setdefault(loop, asyncio.Lock())
        try:
            async with asyncio.timeout(self.timeout):
                await lock.acquire()
        except TimeoutError as error:
            raise StoreUnavailable(
                self.url, f"no connection free within {self.timeout}s"
            ) from error
        try:
            async with asyncio.timeout(self.timeout + 1.0):
                return await self._arun_locked(make, loop)
        except TimeoutError as error:
            # Interrupted mid-conversation: the connection cannot be trusted.
            connection = self._aconnections.pop(loop, None)
            if connection is not None:
                await _aclose_quietly(connection)
            raise StoreUnavailable(self.url, f"no answer within {self.timeout}s") from error
        finally:
            lock.release()

    async def _arun_locked(self, make: Callable[[], _Op[T]], loop: asyncio.AbstractEventLoop) -> T:
        for attempt in range(_ATTEMPTS):
            try:
                connection = self._aconnections.get(loop)
                if connection is None or connection.closed:
                    connection = await psycopg.AsyncConnection.connect(
                        self.dsn, **self._connect_options()
                    )
                    self._aconnections[loop] = connection
                    await self._asetup(connection)
                return await _adrive(make(), connection)
            except _RETRIED as error:
                if attempt + 1 == _ATTEMPTS:
                    raise self._unavailable(error) from error
            except psycopg.Error as error:
                connection = self._aconnections.get(loop)
                if connection is not None and (connection.closed or connection.broken):
                    del self._aconnections[loop]
                    await _aclose_quietly(connection)
                raise self._unavailable(error) from error
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close the sync connection (the next call reconnects)."""
        with self._lock:
            connection, self._connection = self._connection, None
            if connection is not None and self._pid == os.getpid():
                connection.close()

    async def aclose(self) -> None:
        """Close this event loop's async connection, and the sync one."""
        loop = asyncio.get_running_loop()
        connection = self._aconnections.pop(loop, None)
        self._alocks.pop(loop, None)
        if connection is not None:
            await connection.close()
        self.close()

    def backend_pids(self) -> list[int]:
        """Server process ids of this store's open connections (for tests and ops)."""
        pids = []
        if self._connection is not None and not self._connection.closed:
            pids.append(self._connection.info.backend_pid)
        for connection in self._aconnections.values():
            if not connection.closed:
                pids.append(connection.info.backend_pid)
        return pids

    # -- queries ---------------------------------------------------------------------

    def _build_queries(self) -> dict[str, sql.Composed]:
        names = {"buckets": self._buckets, "circuits": self._circuits, "now": sql.SQL(_NOW)}
        returning = " RETURNING c.state, c.version, c.trips, c.reason, c.open_until - {now}"
        texts = {
            "take": (
                "SELECT * FROM {take}(%s::text[], %s::text[], %s::float8[], %s::float8[], "
                "%s::float8[], %s::float8[], %s::float8[], %s::float8[], %s::float8, %s::int)"
            ),
            "refund": "SELECT {refund}(%s::text[], %s::text[], %s::float8[], %s::float8[])",
            "penalize": (
                "INSERT INTO {buckets} AS b (name, key, tat) VALUES (%s, %s, ({now} + %s) + %s) "
                "ON CONFLICT (name, key) DO UPDATE SET tat = greatest(b.tat, excluded.tat)"
            ),
            "tokens": ("SELECT {now}, (SELECT tat FROM {buckets} WHERE name = %s AND key = %s)"),
            "count": "SELECT count(*) FROM {buckets} WHERE %s::text IS NULL OR name = %s",
            "load": (
                "SELECT state, version, trips, reason, open_until - {now} "
                "FROM {circuits} WHERE name = %s"
            ),
            "create": (
                "INSERT INTO {circuits} AS c (name, state, version, trips, reason, open_until, "
                "probes_out, probe_successes) VALUES (%(name)s, %(state)s, 1, %(trips)s, "
                "%(reason)s, CASE WHEN %(open)s THEN {now} + %(duration)s ELSE 0 END, 0, 0) "
                "ON CONFLICT (name) DO UPDATE SET state = excluded.state, "
                "version = c.version + 1, trips = excluded.trips, reason = excluded.reason, "
                "open_until = excluded.open_until, probes_out = 0, probe_successes = 0 "
                "WHERE c.version = 0" + returning
            ),
            "transition": (
                "UPDATE {circuits} AS c SET state = %(state)s, version = c.version + 1, "
                "trips = %(trips)s, reason = %(reason)s, "
                "open_until = CASE WHEN %(open)s THEN {now} + %(duration)s ELSE 0 END, "
                "probes_out = 0, probe_successes = 0 "
                "WHERE c.name = %(name)s AND c.version = %(expected)s" + returning
            ),
            "acquire": (
                "UPDATE {circuits} SET probes_out = probes_out + 1 WHERE name = %s "
                "AND version = %s AND state = 'half_open' AND probes_out < %s RETURNING 1"
            ),
            "release": (
                "UPDATE {circuits} SET probes_out = greatest(probes_out - 1, 0), "
                "probe_successes = probe_successes + %s WHERE name = %s AND version = %s "
                "RETURNING probe_successes"
            ),
            "release0": (
                "INSERT INTO {circuits} AS c (name, state, version, trips, reason, open_until, "
                "probes_out, probe_successes) VALUES (%s, 'closed', 0, 0, 'initial state', 0, 0, "
                "%s) ON CONFLICT (name) DO UPDATE SET "
                "probes_out = greatest(c.probes_out - 1, 0), "
                "probe_successes = c.probe_successes + excluded.probe_successes "
                "WHERE c.version = 0 RETURNING c.probe_successes"
            ),
        }
        names_all = {**names, "take": self._take_fn, "refund": self._refund_fn}
        return {key: sql.SQL(text).format(**names_all) for key, text in texts.items()}

    # -- operations, written once for both drivers ------------------------------------

    def _take(self, requests: Sequence[BucketRequest], max_wait: float) -> _Op[Decision]:
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
        params = (
            [request.name for request in requests],
            [encode_key(request.key) for request in requests],
            [before for before, _ in reserved],
            [after for _, after in reserved],
        )
        yield self._queries["refund"], params

    def _penalize(self, name: str, key: str | None, spec: BucketSpec, seconds: float) -> _Op[None]:
        params = (name, encode_key(key), seconds, spec.capacity - spec.interval)
        yield self._queries["penalize"], params

    def _tokens(self, name: str, key: str | None, spec: BucketSpec) -> _Op[float]:
        rows = yield self._queries["tokens"], (name, encode_key(key))
        now, tat = rows[0]
        return tokens(FULL if tat is None else float(tat), float(now), spec)

    def _load(self, name: str) -> _Op[CircuitSnapshot]:
        rows = yield self._queries["load"], (name,)
        return snapshot_of(rows[0] if rows else None)

    def _transition(
        self,
        name: str,
        expected_version: int,
        state: CircuitState,
        reason: str,
        trips: int,
        break_duration: float,
    ) -> _Op[tuple[bool, CircuitSnapshot]]:
        params = {
            "name": name,
            "expected": expected_version,
            "state": state.value,
            "reason": reason,
            "trips": trips,
            "open": state is CircuitState.OPEN,
            "duration": break_duration,
        }
        query = self._queries["create" if expected_version == 0 else "transition"]
        rows = yield query, params
        if rows:
            return True, snapshot_of(rows[0])
        return False, (yield from self._load(name))  # lost the race: a second round trip

    def _acquire_probe(self, name: str, version: int, limit: int) -> _Op[bool]:
        rows = yield self._queries["acquire"], (name, version, limit)
        return bool(rows)

    def _release_probe(self, name: str, version: int, succeeded: bool | None) -> _Op[int]:
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
            rows = yield self._queries["count"], (name, name)
            return int(rows[0][0])

        return self._run(count)

    def breaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return self._run(lambda: self._load(name))

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
        return self._run(
            lambda: self._transition(name, expected_version, state, reason, trips, break_duration)
        )

    def breaker_acquire_probe(self, name: str, version: int, limit: int) -> bool:
        return self._run(lambda: self._acquire_probe(name, version, limit))

    def breaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        return self._run(lambda: self._release_probe(name, version, succeeded))

    def breaker_watch(self, name: str, callback: SnapshotCallback) -> None:
        """Not pushed (no LISTEN yet): breakers poll, see ``breaker_staleness``."""
        return None

    async def abreaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return await self._arun(lambda: self._load(name))

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
        return await self._arun(
            lambda: self._transition(name, expected_version, state, reason, trips, break_duration)
        )

    async def abreaker_acquire_probe(self, name: str, version: int, limit: int) -> bool:
        return await self._arun(lambda: self._acquire_probe(name, version, limit))

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
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["dsn"],
            timeout=state["timeout"],
            table=state["table"],
            breaker_staleness=state["breaker_staleness"],
            synchronous_commit=state["synchronous_commit"],
        )

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r}, table={self.table!r}, timeout={self.timeout!r})"


def _drive(op: _Op[T], connection: psycopg.Connection[Any]) -> T:
    try:
        query, params = next(op)
        while True:
            cursor = connection.execute(query, params)
            rows = cursor.fetchall() if cursor.description is not None else []
            query, params = op.send(rows)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def _adrive(op: _Op[T], connection: psycopg.AsyncConnection[Any]) -> T:
    try:
        query, params = next(op)
        while True:
            cursor = await connection.execute(query, params)
            rows = await cursor.fetchall() if cursor.description is not None else []
            query, params = op.send(rows)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def _aclose_quietly(connection: psycopg.AsyncConnection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):  # closing a dead connection
        await connection.close()

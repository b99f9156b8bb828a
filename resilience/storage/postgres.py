"""PostgreSQL: shared buckets and circuits for a fleet, through psycopg 3.

Two tables, ``<table>_buckets`` (one ``double precision`` per bucket: its
theoretical arrival time) and ``<table>_circuits`` (one row per circuit), and
three PL/pgSQL functions, are created on first use (``IF NOT EXISTS``, under an
advisory lock so that processes starting together do not race on the DDL);
columns added since are added to an existing table (``ADD COLUMN IF NOT
EXISTS``).

One round trip per operation
----------------------------
* **Acquisition** is one statement, ``SELECT * FROM <table>_take_v4(...)``: a
  PL/pgSQL function that locks the bucket rows with ``SELECT … FOR UPDATE``,
  one by one in ``(name, key)`` order (one order for every process, so
  composite acquisitions do not deadlock; a bucket never used first gets a
  full row, ``INSERT … ON CONFLICT DO NOTHING``, then is locked), reads the
  server clock (``clock_timestamp()``) *after* taking the locks, applies the
  rule of :func:`resilience._core.bucket.take_all` in ``float8`` arithmetic (the
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
  conditional ``UPDATE … RETURNING`` each. Permits are leased
  (:func:`resilience._core.breaker.take_probe`, on the server's clock): they
  lapse together ``lease`` seconds after the last one was handed out.

Time is the server's (``extract(epoch FROM clock_timestamp())``), so clients
whose clocks disagree share consistent buckets and breaks; answers are relative
seconds. The breaker's ``now`` argument is ignored. Every time is a ``float8``
(no ``interval`` that could overflow); a break duration that is not a finite
number is held as :data:`~resilience._core.breaker.MAX_BREAK`.

Keys and names
--------------
Keys go through :func:`resilience.storage._sql.encode_key`: every ``str`` has
a row (a key the column cannot hold, or a long one, is stored as a digest). A
policy name the server cannot store (a NUL, a lone surrogate, more than
:data:`MAX_NAME_BYTES` UTF-8 bytes) raises :class:`ValueError` for that call;
so does any other error the server or the driver blames on a call's input
(``DataError``, ``ProgramLimitExceeded``): a bad input is never an outage.

Safety
------
Values are numbers and text bound as parameters; table and function names are
composed with :class:`psycopg.sql.Identifier`, never interpolated as text.
Every connection sets ``statement_timeout`` and ``lock_timeout`` to
``timeout``, a ``connect_timeout``, TCP keepalives and ``tcp_user_timeout``.
Those cannot help when the server's host still acknowledges packets but the
server does not answer (a frozen process, a stopped VM): so every call also
has a client-side deadline, ``timeout`` plus a margin, after which its socket
is shut down, the call raises :class:`~resilience.StoreUnavailable` and the
connection is discarded (sync calls: one watchdog thread per process; async
calls: a timer on the event loop). Any other psycopg error becomes
:class:`~resilience.StoreUnavailable` (chained from the original); a broken
connection makes the pool replace its idle connections. A deadlock or
serialization failure (which changed nothing) is retried once.

Connections: a :class:`psycopg_pool.ConnectionPool` per store object and
process, and an :class:`psycopg_pool.AsyncConnectionPool` per event loop (an
asyncio connection belongs to its loop), each of at most ``pool_size``
connections. Callers beyond that wait their turn, first come first served, up
to ``timeout``: a busy pool is back-pressure, not an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeAlias, TypeVar
from urllib.parse import quote

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.rows import TupleRow
    from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolClosed, PoolTimeout
except ImportError as _missing:  # pragma: no cover - exercised in a test with the modules hidden
    raise ImportError(
        "PostgresStore needs psycopg 3 and psycopg-pool: "
        f"pip install 'resilience[postgres]' ({_missing})",
        name=_missing.name,
    ) from _missing

from .._core.breaker import MAX_BREAK, CircuitState
from .._core.bucket import FULL, BucketSpec, Decision, tokens
from ..errors import ConfigurationError, StoreUnavailable
from ._sql import encode_key, snapshot_of
from .breakers import DEFAULT_PROBE_LEASE, CircuitSnapshot, SnapshotCallback, Transition
from .buckets import BucketRequest

__all__ = ["MAX_NAME_BYTES", "PostgresStore"]

T = TypeVar("T")

#: Acquisitions between two sweeps of idle buckets (per store object).
SWEEP_EVERY = 256
#: Idle bucket rows deleted per sweep, at most.
SWEEP_ROWS = 200
#: The longest policy name (UTF-8 bytes) a row can hold: with the longest
#: encoded key, well inside a B-tree index entry (2704 bytes).
MAX_NAME_BYTES = 2000
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
    probe_successes integer NOT NULL,
    probes_lapse_at double precision NOT NULL DEFAULT 0
);
ALTER TABLE {circuits} ADD COLUMN IF NOT EXISTS
    probes_lapse_at double precision NOT NULL DEFAULT 0;
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
    -- resilience._core.bucket.take_all, operation for operation.
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
    -- The take's lock order; then resilience._core.bucket.refund: back to before
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


# -- the DSN: checked at construction, shown without its password ------------------------------

_NAMING = ("host", "hostaddr", "port", "dbname", "user", "service")


def _check_dsn(dsn: object) -> tuple[dict[str, Any] | None, str | None]:
    """``(libpq's parse, None)``, or ``(None, what is wrong)`` (never quoting the DSN)."""
    if not isinstance(dsn, str):
        return None, f"expected a libpq connection string or URL, got {type(dsn).__name__}"
    if not dsn.strip():
        return None, "is empty: give a postgresql:// URL or a key=value connection string"
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.Error:
        # libpq's message quotes pieces of the string, which may hold a password.
        return None, "is not a libpq connection string or URL (postgresql://user@host/db)"
    if not any(info.get(field) for field in _NAMING):
        return None, "names no server or database (no host, port, dbname, user or service)"
    for port in str(info.get("port") or "").split(","):
        if port and not (port.isdigit() and port.isascii() and 0 < int(port) < 65536):
            return None, "has a port that is not a number from 1 to 65535"
    return info, None


def _display(info: dict[str, Any]) -> str:
    """``postgresql://user@host:port/db`` for messages and reprs: never the password.

    A part the DSN does not give stays empty (libpq's own defaults then apply:
    a Unix socket, the user's name); nothing is made up.
    """
    user = f"{quote(str(info['user']), safe='')}@" if info.get("user") else ""
    host = str(info.get("host") or info.get("hostaddr") or "")
    port = str(info.get("port") or "")
    hosts = host.split(",") if host else [""]
    ports = port.split(",") if port else [""]
    if len(ports) == 1:
        ports = ports * len(hosts)
    netloc = ",".join(
        (f"[{h}]" if ":" in h else quote(h, safe="")) + (f":{p}" if p else "")
        for h, p in zip(hosts, ports, strict=False)
    )
    dbname = quote(str(info.get("dbname") or ""), safe="")
    service = f"?service={quote(str(info['service']), safe='')}" if info.get("service") else ""
    return f"postgresql://{user}{netloc}/{dbname}{service}"


# -- validation ------------------------------------------------------------------------------


def _number(value: object) -> float | None:
    """The value as a float if it is a real number (not a bool, not a string), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a row's name, or None."""
    if not isinstance(name, str):
        return f"must be a str, got {type(name).__name__}"
    if "\x00" in name:
        return "contains a NUL character, which PostgreSQL text cannot hold"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode (it contains a lone surrogate)"
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long in UTF-8; at most {MAX_NAME_BYTES} fit"
    return None


def _text(value: str) -> str:
    """Free text (a transition's reason) as something a text column can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value.replace("\x00", "\ufffd")


def _held(duration: float) -> float:
    """A break duration to store: one that is not a finite number holds the longest break."""
    if math.isnan(duration) or math.isinf(duration):
        return MAX_BREAK
    return max(0.0, duration)


# -- connections: the pool's, with what their attempts tell ------------------------------------


class _Health:
    """One pool's connections as its attempts made them: the live ones, the last failure."""

    __slots__ = ("__weakref__", "_lock", "error", "live")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.error: psycopg.Error | None = None
        self.live: weakref.WeakSet[Any] = weakref.WeakSet()

    def connected(self, connection: Any) -> None:
        with self._lock:
            self.live.add(connection)
            self.error = None

    def failed(self, error: psycopg.Error) -> None:
        self.error = error

    def open_connections(self) -> list[Any]:
        with self._lock:
            return [connection for connection in self.live if not connection.closed]

    def down(self) -> bool:
        """True while no connection is open and the last attempt to open one failed."""
        return self.error is not None and not self.open_connections()


_HEALTH = "resilience_health"  # the key that hands a pool's _Health to its connect()


class _Connection(psycopg.Connection[TupleRow]):
    """A pooled sync connection that reports its connection attempts."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> _Connection:
        health: _Health = kwargs.pop(_HEALTH)
        try:
            connection = super().connect(conninfo, **kwargs)
        except psycopg.Error as error:
            health.failed(error)
            raise
        health.connected(connection)
        return connection


class _AsyncConnection(psycopg.AsyncConnection[TupleRow]):
    """A pooled async connection that reports its connection attempts."""

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> _AsyncConnection:
        health: _Health = kwargs.pop(_HEALTH)
        try:
            connection = await super().connect(conninfo, **kwargs)
        except psycopg.Error as error:
            health.failed(error)
            raise
        health.connected(connection)
        return connection


def _cut(connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Shut the connection's socket down: a call waiting on it wakes with an error at once.

    (Closing the descriptor would not wake a thread blocked on it, and could hand
    its number to another file; a shutdown on a duplicate acts on the socket.)
    """
    try:
        duplicate = os.dup(connection.fileno())
    except (psycopg.Error, OSError):
        return
    try:
        with socket.socket(fileno=duplicate) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


_LINGER = 5.0  # seconds the watchdog thread stays awake with nothing to watch


class _Watchdog:
    """Cuts the connection of a sync call still waiting for its answer at its deadline.

    One daemon thread per process, started on first use. Arming and disarming
    take a lock for a dict operation; the thread sleeps until the earliest
    deadline in flight (or for good when there has been none for a while), so a
    steady stream of calls wakes it about once per deadline span, not per call.
    A cut happens under the lock, so a call that disarms knows for sure whether
    its connection was cut (and must then be discarded, not pooled).
    """

    def __init__(self) -> None:
        self._reinit()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reinit)

    def _reinit(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._calls: dict[int, tuple[float, psycopg.Connection[Any]]] = {}
        self._tickets = itertools.count(1)
        self._next = math.inf
        self._running = False

    def arm(self, connection: psycopg.Connection[Any], seconds: float) -> int:
        deadline = time.monotonic() + seconds
        with self._lock:
            ticket = next(self._tickets)
            self._calls[ticket] = (deadline, connection)
            if not self._running:
                self._running = True
                threading.Thread(
                    target=self._run, name="resilience-postgres-watchdog", daemon=True
                ).start()
            elif deadline < self._next:
                self._wake.notify()
        return ticket

    def disarm(self, ticket: int) -> bool:
        """False if the deadline passed first and the connection was cut."""
        with self._lock:
            return self._calls.pop(ticket, None) is not None

    def _run(self) -> None:
        lingered = False
        with self._lock:
            while True:
                now = time.monotonic()
                for ticket in [t for t, (deadline, _) in self._calls.items() if deadline <= now]:
                    _cut(self._calls.pop(ticket)[1])
                if self._calls:
                    self._next = min(deadline for deadline, _ in self._calls.values())
                    lingered = False
                elif not lingered:
                    self._next = now + _LINGER
                    lingered = True
                else:
                    self._next = math.inf
                self._wake.wait(None if self._next == math.inf else self._next - now)


_WATCHDOG = _Watchdog()


class PostgresStore:
    """Buckets and circuits in PostgreSQL tables, shared by every process that connects.

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
    ) -> None:
        problems: list[tuple[str, str]] = []
        info, dsn_problem = _check_dsn(dsn)
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
        if not (isinstance(table, str) and 0 < len(table) <= 40 and _name_problem(table) is None):
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
        if problems:
            raise ConfigurationError("PostgresStore", problems)
        assert info is not None
        self.dsn = dsn
        self.url = _display(info)
        self.timeout = float(timeout)
        self.table = table
        self.breaker_staleness = float(breaker_staleness)
        self.synchronous_commit = synchronous_commit
        self.pool_size = pool_size
        self.probe_lease = float(probe_lease)
        # An answer may take the server's own timeout, plus a margin for the trip back.
        self._answer_within = self.timeout + min(1.0, 0.1 + self.timeout / 4)
        self._buckets = sql.Identifier(f"{table}_buckets")
        self._circuits = sql.Identifier(f"{table}_circuits")
        self._take_fn = sql.Identifier(f"{table}_take_v4")
        self._refund_fn = sql.Identifier(f"{table}_refund_v2")
        self._lock_fn = sql.Identifier(f"{table}_lock_v1")
        self._pool_lock = threading.Lock()
        self._pool: ConnectionPool[_Connection] | None = None
        self._health = _Health()
        self._pid = 0
        self._abandoned: list[Any] = []  # a parent's pools, never touched in a child
        # Per event loop (an asyncio connection belongs to the loop that opened it).
        self._apools: dict[
            asyncio.AbstractEventLoop, tuple[AsyncConnectionPool[_AsyncConnection], _Health]
        ] = {}
        self._ready = False  # the schema is known to be in place
        self._names: set[str] = set()  # names already checked
        self._takes = 0
        self._queries = self._build_queries()

    # -- connections -----------------------------------------------------------------

    def _connect_options(self, health: _Health) -> dict[str, Any]:
        ms = max(1, int(self.timeout * 1000))
        seconds = max(2, math.ceil(self.timeout))
        return {
            _HEALTH: health,
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

    def _pool_options(self, health: _Health) -> dict[str, Any]:
        return {
            "kwargs": self._connect_options(health),
            "min_size": 0,  # connections are opened on demand, kept while in use
            "max_size": self.pool_size,
            "open": False,
            "name": f"resilience:{self.table}",
            "timeout": self.timeout,
            # A failing attempt gives up soon: the next caller starts a fresh one,
            # so a server that comes back is found at once, not after a long backoff.
            "reconnect_timeout": max(1.0, self.timeout),
            "num_workers": 2,
        }

    def _sync_pool(self) -> tuple[ConnectionPool[_Connection], _Health]:
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            return pool, self._health
        with self._pool_lock:
            if self._pool is not None and self._pid != os.getpid():
                # Forked: the parent's connections are not ours to use, or to close.
                self._abandoned.append(self._pool)
                self._pool = None
            if self._pool is None:
                self._health = _Health()
                pool = ConnectionPool(
                    self.dsn, connection_class=_Connection, **self._pool_options(self._health)
                )
                pool.open()
                self._pool, self._pid = pool, os.getpid()
            return self._pool, self._health

    async def _async_pool(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[AsyncConnectionPool[_AsyncConnection], _Health]:
        entry = self._apools.get(loop)
        if entry is None:
            for other, _ in list(self._apools.items()):
                if other.is_closed():  # its loop is gone, and its pool with it
                    self._apools.pop(other, None)
            health = _Health()
            pool = AsyncConnectionPool(
                self.dsn, connection_class=_AsyncConnection, **self._pool_options(health)
            )
            entry = self._apools.setdefault(loop, (pool, health))
        if entry[0].closed:
            await entry[0].open()  # idempotent: tasks racing here open it once
        return entry

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
                "AND to_regclass(%s) IS NOT NULL AND EXISTS (SELECT 1 FROM pg_attribute "
                "WHERE attrelid = to_regclass(%s) AND attname = 'probes_lapse_at' "
                "AND NOT attisdropped)"
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
        if row is None or not row[0]:
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
                for statement in self._schema():
                    connection.execute(statement)
        self._ready = True

    async def _asetup(self, connection: psycopg.AsyncConnection[Any]) -> None:
        query, params = self._schema_probe()
        row = await (await connection.execute(query, params)).fetchone()
        if row is None or not row[0]:
            async with connection.transaction():
                await connection.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,)
                )
                for statement in self._schema():
                    await connection.execute(statement)
        self._ready = True

    # -- errors --------------------------------------------------------------------------

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        return StoreUnavailable(self.url, f"{type(error).__name__}: {_first_line(error)}")

    def _no_connection(self, health: _Health, waited: float) -> StoreUnavailable:
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

    def _wait_for_connection(self, health: _Health) -> float:
        return min(self.timeout, _DOWN_WAIT) if health.down() else self.timeout

    def _check_name(self, name: str) -> None:
        if name in self._names:
            return
        problem = _name_problem(name)
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

    def _connection(self) -> tuple[ConnectionPool[_Connection], _Connection]:
        """A connection from this process's pool, waiting up to ``timeout`` for one."""
        for attempt in range(_ATTEMPTS):
            pool, health = self._sync_pool()
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
    ) -> tuple[AsyncConnectionPool[_AsyncConnection], _AsyncConnection]:
        loop = asyncio.get_running_loop()
        for attempt in range(_ATTEMPTS):
            pool, health = await self._async_pool(loop)
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
            ticket = _WATCHDOG.arm(connection, self._answer_within)
            try:
                return self._attempt(connection, make)
            finally:
                cut = not _WATCHDOG.disarm(ticket)
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
            _cut(connection)

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

    def close(self) -> None:
        """Close this process's sync pool (the next call opens a new one)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close(timeout=self.timeout)

    async def aclose(self) -> None:
        """Close this event loop's async pool, and the sync one."""
        entry = self._apools.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[0].close(timeout=self.timeout)
        self.close()

    def backend_pids(self) -> list[int]:
        """Server process ids of this store's open connections (for tests and ops)."""
        healths = [self._health, *(health for _, health in list(self._apools.values()))]
        pids = []
        for health in healths:
            for connection in health.open_connections():
                with contextlib.suppress(psycopg.Error):
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
                "probes_out, probe_successes, probes_lapse_at) VALUES (%(name)s, %(state)s, 1, "
                "%(trips)s, %(reason)s, CASE WHEN %(open)s THEN {now} + %(duration)s::float8 "
                "ELSE 0 END, 0, 0, 0) "
                "ON CONFLICT (name) DO UPDATE SET state = excluded.state, "
                "version = c.version + 1, trips = excluded.trips, reason = excluded.reason, "
                "open_until = excluded.open_until, probes_out = 0, probe_successes = 0, "
                "probes_lapse_at = 0 WHERE c.version = 0" + returning
            ),
            "transition": (
                "UPDATE {circuits} AS c SET state = %(state)s, version = c.version + 1, "
                "trips = %(trips)s, reason = %(reason)s, "
                "open_until = CASE WHEN %(open)s THEN {now} + %(duration)s::float8 ELSE 0 END, "
                "probes_out = 0, probe_successes = 0, probes_lapse_at = 0 "
                "WHERE c.name = %(name)s AND c.version = %(expected)s" + returning
            ),
            # resilience._core.breaker.take_probe, on the server's clock (read once).
            "acquire": (
                "UPDATE {circuits} AS c SET "
                "probes_out = CASE WHEN c.probes_lapse_at <= n.t THEN 0 "
                "ELSE c.probes_out END + 1, "
                "probes_lapse_at = n.t + %(lease)s::float8 "
                "FROM (SELECT {now} AS t) AS n "
                "WHERE c.name = %(name)s AND c.version = %(version)s "
                "AND c.state = 'half_open' AND CASE WHEN c.probes_lapse_at <= n.t THEN 0 "
                "ELSE c.probes_out END < %(limit)s RETURNING 1"
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
            "reason": _text(change.reason),
            "trips": change.trips,
            "open": change.state is CircuitState.OPEN,
            "duration": _held(float(change.break_duration)),
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
        )

    def __repr__(self) -> str:
        return (
            f"PostgresStore({self.url!r}, table={self.table!r}, timeout={self.timeout!r}, "
            f"pool_size={self.pool_size!r})"
        )


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


async def _agive_back(
    pool: AsyncConnectionPool[_AsyncConnection], connection: Any, broken: bool
) -> None:
    await pool.putconn(connection)  # a closed connection is discarded and replaced
    if broken:
        await pool.drain()  # see PostgresStore._run


async def _aclose_quietly(connection: psycopg.AsyncConnection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):  # closing a dead connection
        await connection.close()

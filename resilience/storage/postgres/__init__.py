"""PostgreSQL: shared buckets, circuits and durable jobs for a fleet, through psycopg 3.

Three tables, ``<table>_buckets`` (one ``double precision`` per bucket: its
theoretical arrival time), ``<table>_circuits`` (one row per circuit) and
``<table>_jobs`` (one row per job, see :mod:`.jobs`), and three PL/pgSQL
functions, are created on first use (``IF NOT EXISTS``, under an
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
* **Jobs**: enqueue (a batch of any size), claim and each settling call are
  one statement each; see :mod:`.jobs`.

Time is the server's (``extract(epoch FROM clock_timestamp())``), so clients
whose clocks disagree share consistent buckets and breaks; answers are relative
seconds. The breaker's ``now`` argument is ignored. Every time is a ``float8``
(no ``interval`` that could overflow); a break duration that is not a finite
number is held as :data:`~resilience._core.breaker.MAX_BREAK`. Jobs are dated by
the server's clock too, unless the store is given a ``job_clock`` (for tests).

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

Modules
-------
``store`` (:class:`PostgresStore`), ``schema`` (the tables, functions and
statements), ``jobs`` (the jobs table, its statements and the job queue's
methods), ``connections`` (the pools and their session settings),
``watchdog`` (the client-side deadline) and ``dsn`` (checking and showing the
connection string).
"""

from __future__ import annotations

# The drivers first, here: a missing one is reported on importing this package even
# when a submodule is already loaded (store_from_url names the extra to install).
try:
    import psycopg  # noqa: F401
    import psycopg_pool  # noqa: F401
except ImportError as _missing:  # pragma: no cover - exercised in a test with the modules hidden
    raise ImportError(
        "PostgresStore needs psycopg 3 and psycopg-pool: "
        f"pip install 'resilience[postgres]' ({_missing})",
        name=_missing.name,
    ) from _missing

from .store import MAX_NAME_BYTES, PostgresStore

__all__ = ["MAX_NAME_BYTES", "PostgresStore"]

# The class goes by its public path (in pickles, docs and reprs), wherever it is defined.
PostgresStore.__module__ = __name__

"""The job queue of a :class:`~resilience.storage.sqlite.SQLiteStore`: the
``resilience_jobs`` table, its statements, and each ``job_*`` call as a unit of work.

Every function here is ``(connection, now, ...) -> answer``: the store runs it in
one ``BEGIN IMMEDIATE`` transaction (writes) or one statement's snapshot (reads),
with ``now`` read once from its clock, or on the caller's own connection
(``connection=``). SQL selects the rows; the per-job transitions of
:mod:`resilience._core.jobs` (``taken``, ``lapsed_dead``, ``renewed``,
``completed``, ``failed``, ``deferred``, ``replayed``) compute what each row
becomes, so the store follows the core by construction.

* **Enqueue** reads the holders of the batch's keys, then inserts the new jobs with
  one ``executemany``. Ids are given here, counting on from the table's
  ``AUTOINCREMENT`` sequence (never reused after a purge). In the store's own
  transaction the write lock is held from the first read, so nobody takes them
  meanwhile; in a caller's transaction that has only read so far, a write by
  another connection since then makes SQLite refuse the insert (busy), never
  duplicate an id or a key.
* **Claim** dead-letters the lapsed last attempts, then reads the best ``limit``
  due pending jobs (partial index by ``(queue, priority, next_attempt_at, id)``)
  and the best ``limit`` lapsed running ones (partial index by ``(queue,
  lease_until)``), and takes the best ``limit`` of both.
* **Settling** reads the job, checks the lease with :func:`~resilience._core.jobs.holds_lease`
  and writes the new row only if the row still holds the lease it was read with
  (a compare-and-set: on the caller's connection the read and the write need not
  share the write lock).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from .._core import jobs as core
from .._core.jobs import BatchProgress, Job, JobState, QueueStats
from .jobs import JOB_STATES, NewJob

__all__ = [
    "MIGRATIONS",
    "SCHEMA",
    "caller",
    "check_new",
    "claim",
    "complete",
    "defer",
    "enqueue",
    "fail",
    "get",
    "heartbeat",
    "listing",
    "progress",
    "purge",
    "queues",
    "replay",
    "replay_all",
    "stats",
]

TABLE: Final = "resilience_jobs"

#: The range of SQLite's ``INTEGER``: a job id or ``max_attempts`` outside it cannot be stored.
_MIN_INT, _MAX_INT = -(2**63), 2**63 - 1
#: Keys looked up per statement (well below SQLite's limit on bound parameters).
_KEYS_PER_QUERY = 500

SCHEMA: Final = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        handler TEXT NOT NULL,
        payload TEXT NOT NULL,
        key TEXT,
        priority INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')),
        attempts INTEGER NOT NULL,
        max_attempts INTEGER,
        next_attempt_at REAL NOT NULL,
        created_at REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL,
        last_error TEXT,
        last_error_class TEXT,
        finished_at REAL,
        batch TEXT,
        reason TEXT,
        trace TEXT
    )""",
    f"CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_keys ON {TABLE} (queue, key) WHERE key IS NOT NULL",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_claim ON {TABLE} (queue, priority, next_attempt_at, id) "
    "WHERE state = 'pending'",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_leases ON {TABLE} (queue, lease_until) "
    "WHERE state = 'running'",
    # By state, then id (the rowid every index ends with): counts, listings.
    f"CREATE INDEX IF NOT EXISTS {TABLE}_states ON {TABLE} (queue, state)",
    # Purges and the dead letters, by finish time (then id).
    f"CREATE INDEX IF NOT EXISTS {TABLE}_finished ON {TABLE} (queue, state, finished_at) "
    "WHERE finished_at IS NOT NULL",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_batches ON {TABLE} (queue, batch, state) "
    "WHERE batch IS NOT NULL",
)
"""The table and its indexes (each statement can run again: ``IF NOT EXISTS``)."""

MIGRATIONS: Final[tuple[tuple[str, str, str], ...]] = ()
"""Columns added to ``resilience_jobs`` since its first schema: (table, column, definition)."""

# The columns in the order of Job's fields, so that a row is Job(*row).
_COLUMNS = (
    "id, queue, handler, payload, key, priority, state, attempts, max_attempts, "
    "next_attempt_at, created_at, lease_owner, lease_until, last_error, last_error_class, "
    "finished_at, batch, reason, trace"
)
_SELECT = f"SELECT {_COLUMNS} FROM {TABLE}"

_INSERT = (
    f"INSERT INTO {TABLE} (id, queue, handler, payload, key, priority, state, attempts, "
    "max_attempts, next_attempt_at, created_at, batch, trace) "
    "VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?)"
)
_NEXT_ID = (
    "SELECT max("
    f"(SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = '{TABLE}'), "
    f"(SELECT coalesce(max(id), 0) FROM {TABLE})) + 1"
)
# What a transition may change, by id.
_UPDATE = (
    f"UPDATE {TABLE} SET state = ?, attempts = ?, next_attempt_at = ?, lease_owner = ?, "
    "lease_until = ?, last_error = ?, last_error_class = ?, finished_at = ?, reason = ? "
    "WHERE id = ?"
)
# ... and only while the row holds the lease it was read with.
_SETTLE = _UPDATE + " AND state = 'running' AND lease_owner = ? AND lease_until = ?"

# The literal states below let SQLite use the partial indexes.
_LAPSED_LAST = (
    f"{_SELECT} INDEXED BY {TABLE}_leases WHERE queue = ? AND state = 'running' "
    "AND lease_until <= ? AND attempts >= max_attempts"
)
_DUE_PENDING = (
    f"{_SELECT} INDEXED BY {TABLE}_claim WHERE queue = ? AND state = 'pending' "
    "AND next_attempt_at <= ? ORDER BY priority, next_attempt_at, id LIMIT ?"
)
_DUE_RUNNING = (
    f"{_SELECT} INDEXED BY {TABLE}_leases WHERE queue = ? AND state = 'running' "
    "AND lease_until <= ? AND (max_attempts IS NULL OR attempts < max_attempts) "
    "ORDER BY priority, next_attempt_at, id LIMIT ?"
)
_GET = f"{_SELECT} WHERE id = ? AND queue = ?"
_LIST_STATE = (
    f"{_SELECT} INDEXED BY {TABLE}_states WHERE queue = :queue AND state = :state "
    "ORDER BY id LIMIT :limit"
)
# The first ``limit`` of each state (each an index range, in id order), merged: never a
# sort of the whole queue.
_LIST = (
    "SELECT * FROM ("
    + " UNION ALL ".join(
        f"SELECT * FROM ({_LIST_STATE.replace(':state', repr(state))})" for state in JOB_STATES
    )
    + ") ORDER BY id LIMIT :limit"
)
_LIST_DEAD = (
    f"{_SELECT} INDEXED BY {TABLE}_finished WHERE queue = :queue AND state = 'dead' "
    "AND finished_at IS NOT NULL ORDER BY finished_at, id LIMIT :limit"
)
_DEAD = f"{_SELECT} INDEXED BY {TABLE}_states WHERE queue = ? AND state = 'dead'"
# One statement (one snapshot), each part through its own index.
_STATS = f"""SELECT p.total, r.total, d.total, x.total, p.due + r.due, p.oldest
FROM (SELECT count(*) AS total,
             coalesce(sum(next_attempt_at <= :now), 0) AS due,
             min(CASE WHEN next_attempt_at <= :now THEN next_attempt_at END) AS oldest
      FROM {TABLE} INDEXED BY {TABLE}_claim WHERE queue = :queue AND state = 'pending') AS p,
     (SELECT count(*) AS total, coalesce(sum(lease_until <= :now), 0) AS due
      FROM {TABLE} INDEXED BY {TABLE}_leases WHERE queue = :queue AND state = 'running') AS r,
     (SELECT count(*) AS total FROM {TABLE} INDEXED BY {TABLE}_states
      WHERE queue = :queue AND state = 'done') AS d,
     (SELECT count(*) AS total FROM {TABLE} INDEXED BY {TABLE}_states
      WHERE queue = :queue AND state = 'dead') AS x"""
_PURGE = (
    f"DELETE FROM {TABLE} INDEXED BY {TABLE}_finished "
    "WHERE queue = ? AND state IN ('done', 'dead') AND finished_at < ?"
)
_PROGRESS = (
    f"SELECT state, count(*) FROM {TABLE} INDEXED BY {TABLE}_batches "
    "WHERE queue = ? AND batch = ? AND batch IS NOT NULL GROUP BY state"
)
# A skip scan of the states index: one seek per queue, not a read of every job.
_QUEUES = f"""WITH RECURSIVE found(name) AS (
    SELECT min(queue) FROM {TABLE} INDEXED BY {TABLE}_states
    UNION ALL
    SELECT (SELECT min(queue) FROM {TABLE} INDEXED BY {TABLE}_states WHERE queue > found.name)
    FROM found WHERE found.name IS NOT NULL
)
SELECT name FROM found WHERE name IS NOT NULL"""


# -- checks done before any transaction ------------------------------------------------------


def check_new(new: NewJob) -> None:
    """Refuse a new job the core refuses, or one SQLite cannot store."""
    new.check()
    if new.max_attempts is not None and new.max_attempts > _MAX_INT:
        raise ValueError(f"max_attempts must be at most {_MAX_INT}, got {new.max_attempts!r}")


@contextmanager
def caller(connection: object, file: str) -> Iterator[sqlite3.Connection]:
    """The caller's connection, checked (open on ``file``, inside a transaction) and
    holding the jobs table, with the default row and text factories until the end of
    the block (the caller's own are restored then)."""
    if not isinstance(connection, sqlite3.Connection):
        raise TypeError(f"connection must be a sqlite3.Connection, got {type(connection).__name__}")
    saved = connection.row_factory, connection.text_factory
    connection.row_factory, connection.text_factory = None, str
    try:
        _check_connection(connection, file)
        _ensure_schema(connection)
        yield connection
    finally:
        connection.row_factory, connection.text_factory = saved


def _check_connection(connection: sqlite3.Connection, file: str) -> None:
    try:
        rows = connection.execute("PRAGMA database_list").fetchall()
    except sqlite3.ProgrammingError as error:  # closed, or another thread's
        raise ValueError(f"connection cannot be used here: {error}") from error
    main = next((str(row[2]) for row in rows if row[1] == "main"), "")
    if not main or not _same_file(main, file):
        opened = repr(main) if main else "an in-memory database"
        raise ValueError(f"connection must be open on the store's file {file!r}, not {opened}")
    if not connection.in_transaction:
        # Outside a transaction the statement would commit at once: not exactly once.
        raise ValueError(
            "connection must be inside your open transaction (connection.in_transaction "
            "is False): begin it, or make your own write first"
        )


def _ensure_schema(connection: sqlite3.Connection) -> None:
    """Create the jobs table on the caller's connection if the file has none yet (the
    store itself may never have opened the file): inside the caller's transaction, as
    the caller's first write may hold the write lock the store's own connection needs."""
    found = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
    ).fetchone()
    if found is None:
        for statement in SCHEMA:
            connection.execute(statement)


def _same_file(one: str, other: str) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:
        return os.path.realpath(one) == os.path.realpath(other)


# -- rows --------------------------------------------------------------------------------------


def _storable(job_id: object) -> bool:
    """Whether ``job_id`` could name a row (any other value names no job)."""
    return isinstance(job_id, int) and _MIN_INT <= job_id <= _MAX_INT


def _job(row: Sequence[Any]) -> Job:
    return Job(*row)


def _changes(job: Job) -> tuple[Any, ...]:
    """The parameters of ``_UPDATE`` that write ``job``."""
    return (
        job.state,
        job.attempts,
        job.next_attempt_at,
        job.lease_owner,
        job.lease_until,
        job.last_error,
        job.last_error_class,
        job.finished_at,
        job.reason,
        job.id,
    )


def _read_job(connection: sqlite3.Connection, queue: str, job_id: int) -> Job | None:
    if not _storable(job_id):
        return None
    row = connection.execute(_GET, (job_id, queue)).fetchone()
    return None if row is None else _job(row)


def _held(
    connection: sqlite3.Connection, queue: str, job_id: int, worker: str, now: float
) -> Job | None:
    job = _read_job(connection, queue, job_id)
    return job if job is not None and core.holds_lease(job, worker, now) else None


def _settle(connection: sqlite3.Connection, before: Job, after: Job) -> bool:
    """Write ``after`` if the row still holds ``before``'s lease."""
    guard = (before.lease_owner, before.lease_until)
    return connection.execute(_SETTLE, (*_changes(after), *guard)).rowcount == 1


# -- enqueue -----------------------------------------------------------------------------------


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _holders(connection: sqlite3.Connection, queue: str, keys: Sequence[str]) -> dict[str, int]:
    """The ids of the jobs of ``queue`` holding any of ``keys``."""
    held: dict[str, int] = {}
    for chunk in _chunks(sorted(set(keys)), _KEYS_PER_QUERY):
        marks = ", ".join("?" * len(chunk))
        query = f"SELECT key, id FROM {TABLE} WHERE queue = ? AND key IN ({marks})"
        held.update(connection.execute(query, (queue, *chunk)).fetchall())
    return held


def enqueue(
    connection: sqlite3.Connection, now: float, *, queue: str, jobs: Sequence[NewJob]
) -> list[tuple[int, bool]]:
    """Insert the jobs whose key is free: ``(id, created)`` for each, in order."""
    held = _holders(connection, queue, [new.key for new in jobs if new.key is not None])
    (next_id,) = connection.execute(_NEXT_ID).fetchone()
    rows: list[tuple[Any, ...]] = []
    answers: list[tuple[int, bool]] = []
    for new in jobs:
        if new.key is not None and new.key in held:
            answers.append((held[new.key], False))
            continue
        job_id, next_id = next_id, next_id + 1
        if new.key is not None:
            held[new.key] = job_id  # a repeat later in the list gets this job
        rows.append(
            (
                job_id,
                queue,
                new.handler,
                new.payload,
                new.key,
                new.priority,
                new.max_attempts,
                now + new.delay,
                now,
                new.batch,
                new.trace,
            )
        )
        answers.append((job_id, True))
    connection.executemany(_INSERT, rows)
    return answers


# -- claim and settling ------------------------------------------------------------------------


def claim(
    connection: sqlite3.Connection, now: float, *, queue: str, worker: str, limit: int, lease: float
) -> list[Job]:
    """Dead-letter the lapsed last attempts, then lease the best ``limit`` due jobs."""
    lapsed = [_job(row) for row in connection.execute(_LAPSED_LAST, (queue, now))]
    buried = [core.lapsed_dead(job, now) for job in lapsed if core.lapsed(job)]
    connection.executemany(_UPDATE, [_changes(job) for job in buried])
    due = [
        _job(row)
        for statement in (_DUE_PENDING, _DUE_RUNNING)
        for row in connection.execute(statement, (queue, now, limit))
    ]
    due.sort(key=core.claim_order)
    claimed = [core.taken(job, worker, now, lease) for job in due[:limit]]
    connection.executemany(_UPDATE, [_changes(job) for job in claimed])
    return claimed


def heartbeat(
    connection: sqlite3.Connection,
    now: float,
    *,
    queue: str,
    worker: str,
    job_ids: Sequence[int],
    lease: float,
) -> list[int]:
    """Renew the leases ``worker`` holds among ``job_ids``: their ids."""
    renewed: list[int] = []
    for job_id in job_ids:
        job = _held(connection, queue, job_id, worker, now)
        if job is not None and _settle(connection, job, core.renewed(job, now, lease)):
            renewed.append(job_id)
    return renewed


def complete(
    connection: sqlite3.Connection, now: float, *, queue: str, job_id: int, worker: str
) -> bool:
    job = _held(connection, queue, job_id, worker, now)
    return job is not None and _settle(connection, job, core.completed(job, now))


def fail(
    connection: sqlite3.Connection,
    now: float,
    *,
    queue: str,
    job_id: int,
    worker: str,
    retry: bool,
    delay: float | None,
    error_class: str | None,
    reason: str | None,
    error: str | None,
) -> bool:
    job = _held(connection, queue, job_id, worker, now)
    if job is None:
        return False
    settled = core.failed(
        job, now, retry=retry, delay=delay, error_class=error_class, reason=reason, error=error
    )
    return _settle(connection, job, settled)


def defer(
    connection: sqlite3.Connection,
    now: float,
    *,
    queue: str,
    job_id: int,
    worker: str,
    delay: float,
) -> bool:
    job = _held(connection, queue, job_id, worker, now)
    return job is not None and _settle(connection, job, core.deferred(job, now, now + delay))


# -- operator calls ----------------------------------------------------------------------------


def replay(connection: sqlite3.Connection, now: float, *, queue: str, job_id: int) -> bool:
    job = _read_job(connection, queue, job_id)
    if job is None or job.state != "dead":
        return False
    connection.execute(_UPDATE, _changes(core.replayed(job, now)))
    return True


def replay_all(connection: sqlite3.Connection, now: float, *, queue: str) -> int:
    dead = [_job(row) for row in connection.execute(_DEAD, (queue,))]
    connection.executemany(_UPDATE, [_changes(core.replayed(job, now)) for job in dead])
    return len(dead)


def purge(connection: sqlite3.Connection, now: float, *, queue: str, older_than: float) -> int:
    """Remove the done and dead jobs finished before ``now - older_than`` (freeing keys)."""
    return connection.execute(_PURGE, (queue, now - older_than)).rowcount


# -- reads (each one statement: one snapshot) --------------------------------------------------


def get(connection: sqlite3.Connection, now: float, *, queue: str, job_id: int) -> Job | None:
    return _read_job(connection, queue, job_id)


def listing(
    connection: sqlite3.Connection, now: float, *, queue: str, state: JobState | None, limit: int
) -> list[Job]:
    statement = _LIST if state is None else _LIST_DEAD if state == "dead" else _LIST_STATE
    rows = connection.execute(statement, {"queue": queue, "state": state, "limit": limit})
    return [_job(row) for row in rows]


def stats(connection: sqlite3.Connection, now: float, *, queue: str) -> QueueStats:
    row = connection.execute(_STATS, {"queue": queue, "now": now}).fetchone()
    pending, running, done, dead, due, oldest = row
    lag = 0.0 if oldest is None else max(0.0, now - oldest)
    return QueueStats(pending, running, done, dead, due, lag)


def progress(
    connection: sqlite3.Connection, now: float, *, queue: str, batch: str
) -> BatchProgress:
    counts = dict.fromkeys(JOB_STATES, 0)
    counts.update(connection.execute(_PROGRESS, (queue, batch)).fetchall())
    done, dead = counts["done"], counts["dead"]
    pending = counts["pending"] + counts["running"]
    total = done + dead + pending
    percent = 100.0 if total == 0 else 100.0 * (done + dead) / total
    return BatchProgress(total, done, dead, pending, percent)


def queues(connection: sqlite3.Connection, now: float) -> list[str]:
    return sorted(row[0] for row in connection.execute(_QUEUES))

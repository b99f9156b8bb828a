"""The durable job queue's throughput beside procrastinate (PostgreSQL), RQ and arq (Redis).

No-op jobs, each measurement on a fresh namespace (its own tables, key prefix,
queue name or PostgreSQL schema), in jobs per second, as ratios ours / anchor
(above 1: ours is faster):

* enqueue, one call per job, and in one batch where the library has a batch
  API (procrastinate ``batch_defer``, RQ ``enqueue_many`` on a pipeline; arq
  has none);
* claim, run and settle every waiting job until the queue is empty, one job at
  a time: ours as a ``run_once(limit=100)`` loop (claims 100 per round trip)
  and as ``work(until_empty=True)`` (claims as many as it has free slots, so
  one at a time, as the anchors do); procrastinate ``run_worker_async(wait=False)``,
  RQ's ``SimpleWorker`` in burst mode, arq's burst ``Worker(max_jobs=1)``;
* the same with 8 jobs at a time on an event loop (``awork(concurrency=8)``
  with an async no-op, procrastinate ``concurrency=8``, arq ``max_jobs=8``).

Batch enqueues use BATCH_JOBS (10,000) jobs; the per-job rows use PER_JOB jobs
(1,000 by default, so that a run of 3 repeats stays near 3 minutes: RQ's and
arq's workers need several milliseconds a job). ``RESILIENCE_BENCH_JOBS=10000``
runs every row on 10,000 jobs (about ten times longer).

.venv/bin/python benchmarks/run.py jobs

Against ``RESILIENCE_TEST_POSTGRES_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``) and ``RESILIENCE_BENCH_REDIS_URL``
(default db 13 on 127.0.0.1:6379: the tests use db 15); a store whose server
does not answer is skipped with the reason. Tables, schemas and keys are
removed afterwards.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import _job_anchors as anchors
import psycopg
import redis

from resilience.jobs import JobQueue
from resilience.storage.postgres import PostgresStore
from resilience.storage.redis import RedisStore

Store = PostgresStore | RedisStore

DSN = os.environ.get("RESILIENCE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RESILIENCE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
BATCH_JOBS = 10_000
PER_JOB = int(os.environ.get("RESILIENCE_BENCH_JOBS", "1000"))
REPEAT = 3
CONCURRENT = 8
RUN_ONCE_LIMIT = 100
PREFIX = "rbjobs"  # every table, schema and key this module makes starts with it


def noop() -> None:
    return None


async def anoop() -> None:
    return None


# -- ours --------------------------------------------------------------------------------


@contextmanager
def _queue(make_store: Callable[[str], Store], tag: str) -> Iterator[tuple[JobQueue, Store]]:
    store = make_store(tag)
    queue = JobQueue("bench", store=store, retention=None)
    queue.handler(noop)
    queue.handler(anoop)
    queue.stats()  # connects and creates the tables before any timing
    try:
        yield queue, store
    finally:
        store.close()


def _check_done(queue: JobQueue, number: int) -> None:
    stats = queue.stats()
    assert (stats.done, stats.pending, stats.running) == (number, 0, 0), stats


def ours_enqueue(
    make_store: Callable[[str], Store], number: int, how: str
) -> Callable[[str], float]:
    def measure(tag: str) -> float:
        with _queue(make_store, tag) as (queue, store):
            start = time.perf_counter()
            if how == "batch":
                queue.enqueue_batch(noop, [{}] * number)
            elif how == "async":
                asyncio.run(_aenqueue(queue, store, number))
            else:
                for _ in range(number):
                    queue.enqueue(noop)
            seconds = time.perf_counter() - start
            assert queue.stats().pending == number
            return seconds

    return measure


async def _aenqueue(queue: JobQueue, store: Store, number: int) -> None:
    try:
        for _ in range(number):
            await queue.aenqueue(anoop)
    finally:
        await store.aclose()


def ours_run(make_store: Callable[[str], Store], number: int, how: str) -> Callable[[str], float]:
    """Seconds to run ``number`` waiting jobs: a ``run_once`` loop, ``work`` or ``awork``."""

    def measure(tag: str) -> float:
        with _queue(make_store, tag) as (queue, store):
            handler = anoop if how.startswith("awork") else noop
            queue.enqueue_batch(handler, [{}] * number)
            start = time.perf_counter()
            if how == "run_once":
                while queue.run_once(limit=RUN_ONCE_LIMIT).claimed:
                    pass
            elif how == "work":
                queue.work(concurrency=1, until_empty=True)
            else:
                concurrency = 1 if how == "awork" else CONCURRENT
                asyncio.run(_awork(queue, store, concurrency))
            seconds = time.perf_counter() - start
            _check_done(queue, number)
            return seconds

    return measure


async def _awork(queue: JobQueue, store: Store, concurrency: int) -> None:
    try:
        await queue.awork(concurrency=concurrency, until_empty=True)
    finally:
        await store.aclose()


# -- the table ----------------------------------------------------------------------------


@dataclass
class Row:
    store: str
    operation: str
    jobs: int
    ours: Callable[[str], float]
    anchor_name: str
    anchor: Callable[[str], float]
    # Rows that share an anchor measure it once per repeat.
    anchor_key: str
    ours_rates: list[float] = field(default_factory=list)
    anchor_rates: list[float] = field(default_factory=list)


def postgres_rows() -> list[Row]:
    def store(tag: str) -> Store:
        return PostgresStore(DSN, table=tag)

    def enqueue(batch: bool, number: int) -> Callable[[str], float]:
        return lambda tag: anchors.procrastinate_enqueue(DSN, tag, number, batch=batch)

    def work(concurrency: int) -> Callable[[str], float]:
        return lambda tag: anchors.procrastinate_work(DSN, tag, PER_JOB, concurrency=concurrency)

    n, b, c = PER_JOB, BATCH_JOBS, CONCURRENT
    p = "procrastinate"
    return [
        Row(
            "PostgreSQL",
            "enqueue, one by one",
            n,
            ours_enqueue(store, n, "one"),
            f"{p} defer",
            enqueue(False, n),
            "pe1",
        ),
        Row(
            "PostgreSQL",
            "enqueue, batch",
            b,
            ours_enqueue(store, b, "batch"),
            f"{p} batch_defer",
            enqueue(True, b),
            "peb",
        ),
        Row(
            "PostgreSQL",
            f"run, run_once(limit={RUN_ONCE_LIMIT}) loop",
            n,
            ours_run(store, n, "run_once"),
            f"{p} worker, concurrency 1",
            work(1),
            "pw1",
        ),
        Row(
            "PostgreSQL",
            "run, work(concurrency=1)",
            n,
            ours_run(store, n, "work"),
            f"{p} worker, concurrency 1",
            work(1),
            "pw1",
        ),
        Row(
            "PostgreSQL",
            f"run, awork(concurrency={c})",
            n,
            ours_run(store, n, "awork8"),
            f"{p} worker, concurrency {c}",
            work(c),
            "pw8",
        ),
    ]


def redis_rows() -> list[Row]:
    def store(tag: str) -> Store:
        return RedisStore(REDIS_URL, prefix=tag)

    n, b, c, url = PER_JOB, BATCH_JOBS, CONCURRENT, REDIS_URL
    return [
        Row(
            "Redis",
            "enqueue, one by one",
            n,
            ours_enqueue(store, n, "one"),
            "RQ enqueue",
            lambda t: anchors.rq_enqueue(url, t, n, batch=False),
            "re1",
        ),
        Row(
            "Redis",
            "enqueue, batch",
            b,
            ours_enqueue(store, b, "batch"),
            "RQ enqueue_many, pipeline",
            lambda t: anchors.rq_enqueue(url, t, b, batch=True),
            "reb",
        ),
        Row(
            "Redis",
            "aenqueue, one by one",
            n,
            ours_enqueue(store, n, "async"),
            "arq enqueue_job",
            lambda t: anchors.arq_enqueue(url, t, n),
            "ae1",
        ),
        Row(
            "Redis",
            f"run, run_once(limit={RUN_ONCE_LIMIT}) loop",
            n,
            ours_run(store, n, "run_once"),
            "RQ SimpleWorker, burst",
            lambda t: anchors.rq_work(url, t, n),
            "rw",
        ),
        Row(
            "Redis",
            "run, work(concurrency=1)",
            n,
            ours_run(store, n, "work"),
            "RQ SimpleWorker, burst",
            lambda t: anchors.rq_work(url, t, n),
            "rw",
        ),
        Row(
            "Redis",
            "run, awork(concurrency=1)",
            n,
            ours_run(store, n, "awork"),
            "arq worker, max_jobs=1",
            lambda t: anchors.arq_work(url, t, n, concurrency=1),
            "aw1",
        ),
        Row(
            "Redis",
            f"run, awork(concurrency={c})",
            n,
            ours_run(store, n, "awork8"),
            f"arq worker, max_jobs={c}",
            lambda t: anchors.arq_work(url, t, n, concurrency=c),
            "aw8",
        ),
    ]


def _tags() -> Iterator[str]:
    run = uuid.uuid4().hex[:8]
    for i in range(10**6):
        yield f"{PREFIX}_{run}_{i}"


def measure(rows: list[Row]) -> None:
    """REPEAT rounds; in each, every row's ours then its anchor (shared anchors once),
    so that a disturbance elsewhere on the machine hits both sides alike."""
    tags = _tags()
    for _ in range(REPEAT):
        done: dict[str, float] = {}
        for row in rows:
            row.ours_rates.append(row.jobs / row.ours(next(tags)))
            if row.anchor_key not in done:
                done[row.anchor_key] = row.jobs / row.anchor(next(tags))
            row.anchor_rates.append(done[row.anchor_key])


def _span(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def print_rows(rows: list[Row]) -> None:
    print(
        f"\n## Job queue throughput, jobs/s: median (min-max) of {REPEAT} runs; "
        "ratio = ours / anchor, paired run by run\n"
    )
    header = ["store", "operation", "jobs", "ours jobs/s", "anchor", "anchor jobs/s", "ours/anchor"]
    lines = []
    for row in rows:
        ratios = [o / a for o, a in zip(row.ours_rates, row.anchor_rates, strict=True)]
        ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        lines.append(
            [
                row.store,
                row.operation,
                f"{row.jobs:,}",
                _span(row.ours_rates),
                row.anchor_name,
                _span(row.anchor_rates),
                ratio,
            ]
        )
    widths = [max(len(x) for x in column) for column in zip(header, *lines, strict=True)]
    right = {2, 3, 5, 6}

    def fmt(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    print(fmt(header))
    print(
        "|"
        + "|".join("-" * (w + 1) + (":" if i in right else "-") for i, w in enumerate(widths))
        + "|"
    )
    for line in lines:
        print(fmt(line))


# -- services and cleanup -------------------------------------------------------------------


def _postgres_problem() -> str | None:
    try:
        psycopg.connect(DSN, connect_timeout=3).close()
    except psycopg.Error as error:
        return str(error).strip()
    return None


def _redis_problem() -> str | None:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as error:
        return str(error)
    finally:
        client.close()
    return None


def postgres_cleanup() -> None:
    """Drop the tables and functions of our stores and procrastinate's schemas."""
    like = f"{PREFIX}\\_%"
    with psycopg.connect(DSN, autocommit=True) as connection:
        statements = connection.execute(
            "SELECT format('DROP SCHEMA %%I CASCADE', nspname) FROM pg_namespace"
            " WHERE nspname LIKE %s"
            " UNION ALL SELECT format('DROP TABLE IF EXISTS %%I.%%I CASCADE', schemaname, tablename)"
            " FROM pg_tables WHERE tablename LIKE %s"
            " UNION ALL SELECT format('DROP FUNCTION IF EXISTS %%s CASCADE', oid::regprocedure)"
            " FROM pg_proc WHERE proname LIKE %s",
            (like, like, like),
        ).fetchall()
        for (statement,) in statements:
            connection.execute(statement)


def redis_cleanup() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        anchors.redis_cleanup(client, f"*{PREFIX}_*")
        for member in client.smembers("rq:queues"):
            if PREFIX.encode() in member:
                client.srem("rq:queues", member)
        client.delete("rq:clean_groups")  # RQ workers' lock (this db is the benchmark's own)
    finally:
        client.close()


def main() -> None:
    warnings.simplefilter("ignore")
    rows: list[Row] = []
    cleanups: list[Callable[[], None]] = []
    for name, problem, make, cleanup in (
        ("PostgreSQL", _postgres_problem(), postgres_rows, postgres_cleanup),
        ("Redis", _redis_problem(), redis_rows, redis_cleanup),
    ):
        if problem is not None:
            print(f"\n## Job queue, {name}: skipped ({problem})")
            continue
        rows += make()
        cleanups.append(cleanup)
    if not rows:
        return
    start = time.perf_counter()
    try:
        measure(rows)
    finally:
        for cleanup in cleanups:
            cleanup()
    print_rows(rows)
    print(
        f"\n({time.perf_counter() - start:.0f} s; per-job rows on {PER_JOB:,} jobs, batches on {BATCH_JOBS:,})"
    )


if __name__ == "__main__":
    main()

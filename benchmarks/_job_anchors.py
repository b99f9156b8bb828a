"""The job queues measured beside ours: procrastinate (PostgreSQL), RQ and arq (Redis).

Each function runs one measurement on a fresh namespace (its own PostgreSQL
schema, or its own queue name and job ids under ``tag`` in Redis), checks that
every job was really processed, and returns the seconds it took; it removes
what it created before returning. Handlers live here so that their import path
is stable (RQ and procrastinate name a task by its module).

Each library runs with its defaults, but for what would otherwise measure a
sleep rather than the library: arq's ``poll_delay`` (0.5 s between polls by
default) is 0, and signal handlers are left alone. procrastinate gets an
``async`` no-op (a sync task would run on a thread per job); arq only takes
coroutines; RQ runs a plain function in a ``SimpleWorker`` (no fork per job).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import arq
import arq.connections
import arq.worker
import procrastinate
import psycopg
import redis
import rq
from psycopg import conninfo, sql

__all__ = [
    "arq_enqueue",
    "arq_work",
    "procrastinate_enqueue",
    "procrastinate_work",
    "rq_enqueue",
    "rq_work",
    "redis_cleanup",
]

QUEUE = "bench"


def rq_noop() -> None:
    return None


async def async_noop(*_: Any) -> None:
    return None


def _quiet() -> None:
    # Per-job INFO lines would measure the terminal, not the queue.
    for name in ("rq", "rq.worker", "arq", "arq.worker", "arq.jobs", "procrastinate"):
        logging.getLogger(name).setLevel(logging.WARNING)


# -- procrastinate (PostgreSQL) ---------------------------------------------------------


class _Schema:
    """A PostgreSQL schema of its own for one procrastinate app (its tables have fixed
    names), dropped on exit."""

    def __init__(self, dsn: str, name: str) -> None:
        self.dsn, self.name = dsn, name
        self.conninfo = conninfo.make_conninfo(dsn, options=f"-c search_path={name}")

    def __enter__(self) -> procrastinate.App:
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.name)))
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=self.conninfo))
        with app.open():
            app.schema_manager.apply_schema()
        self.app = app
        return app

    def __exit__(self, *_: object) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.name))
            )


def _procrastinate_task(app: procrastinate.App) -> Any:
    return app.task(queue=QUEUE, name="noop")(async_noop)


def _count_done(app: procrastinate.App) -> int:
    rows = app.connector.get_sync_connector().execute_query_all(
        query="SELECT count(*) AS n FROM procrastinate_jobs WHERE status = 'succeeded'"
    )
    return int(rows[0]["n"])


def procrastinate_enqueue(dsn: str, tag: str, number: int, *, batch: bool) -> float:
    """Seconds to defer ``number`` jobs, one ``defer`` each or one ``batch_defer``."""
    with _Schema(dsn, tag) as app:
        task = _procrastinate_task(app)
        with app.open():
            start = time.perf_counter()
            if batch:
                task.batch_defer(*([{}] * number))
            else:
                for _ in range(number):
                    task.defer()
            seconds = time.perf_counter() - start
            count = app.connector.get_sync_connector().execute_query_all(
                query="SELECT count(*) AS n FROM procrastinate_jobs"
            )[0]["n"]
        assert count == number, (count, number)
    return seconds


def procrastinate_work(dsn: str, tag: str, number: int, *, concurrency: int) -> float:
    """Seconds for one worker (``wait=False``) to run ``number`` waiting jobs."""
    with _Schema(dsn, tag) as app:
        task = _procrastinate_task(app)
        with app.open():
            task.batch_defer(*([{}] * number))

        async def run() -> float:
            async with app.open_async():
                start = time.perf_counter()
                await app.run_worker_async(
                    queues=[QUEUE],
                    wait=False,
                    concurrency=concurrency,
                    install_signal_handlers=False,
                )
                return time.perf_counter() - start

        seconds = asyncio.run(run())
        with app.open():
            done = _count_done(app)
        assert done == number, (done, number)
    return seconds


# -- RQ (Redis) -------------------------------------------------------------------------


def redis_cleanup(client: redis.Redis, *patterns: str) -> None:
    for pattern in patterns:
        keys = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])


def _rq_cleanup(client: redis.Redis, queue: rq.Queue, tag: str) -> None:
    client.srem("rq:queues", queue.key)
    redis_cleanup(client, f"*{tag}*")


def rq_enqueue(url: str, tag: str, number: int, *, batch: bool) -> float:
    """Seconds to enqueue ``number`` jobs: ``enqueue`` each, or ``enqueue_many`` on a pipeline."""
    client = redis.Redis.from_url(url)
    queue = rq.Queue(tag, connection=client)
    try:
        start = time.perf_counter()
        if batch:
            with client.pipeline() as pipe:
                queue.enqueue_many(
                    [rq.Queue.prepare_data(rq_noop, job_id=f"{tag}-{i}") for i in range(number)],
                    pipeline=pipe,
                )
                pipe.execute()
        else:
            for i in range(number):
                queue.enqueue(rq_noop, job_id=f"{tag}-{i}")
        seconds = time.perf_counter() - start
        assert queue.count == number, (queue.count, number)
        return seconds
    finally:
        _rq_cleanup(client, queue, tag)
        client.close()


def rq_work(url: str, tag: str, number: int) -> float:
    """Seconds for a ``SimpleWorker`` in burst mode to run ``number`` waiting jobs."""
    _quiet()
    client = redis.Redis.from_url(url)
    queue = rq.Queue(tag, connection=client)
    try:
        with client.pipeline() as pipe:
            queue.enqueue_many(
                [rq.Queue.prepare_data(rq_noop, job_id=f"{tag}-{i}") for i in range(number)],
                pipeline=pipe,
            )
            pipe.execute()
        worker = rq.SimpleWorker([queue], connection=client, name=f"{tag}-worker")
        start = time.perf_counter()
        worker.work(burst=True, logging_level="WARNING")
        seconds = time.perf_counter() - start
        done = queue.finished_job_registry.count
        assert done == number, (done, number)
        return seconds
    finally:
        _rq_cleanup(client, queue, tag)
        client.close()


# -- arq (Redis) ------------------------------------------------------------------------


def _arq_settings(url: str) -> arq.connections.RedisSettings:
    return arq.connections.RedisSettings.from_dsn(url)


async def _arq_fill(pool: arq.ArqRedis, tag: str, number: int) -> None:
    for i in range(number):
        await pool.enqueue_job("noop", _job_id=f"{tag}-{i}", _queue_name=tag)


def _arq_run(url: str, tag: str, body: Callable[[arq.ArqRedis], Any]) -> float:
    async def run() -> float:
        pool = await arq.create_pool(_arq_settings(url), default_queue_name=tag)
        try:
            seconds: float = await body(pool)
            return seconds
        finally:
            await pool.aclose()

    try:
        return asyncio.run(run())
    finally:
        client = redis.Redis.from_url(url)
        redis_cleanup(client, f"*{tag}*")
        client.close()


def arq_enqueue(url: str, tag: str, number: int) -> float:
    """Seconds to ``enqueue_job`` ``number`` jobs one by one (arq has no batch)."""

    async def body(pool: arq.ArqRedis) -> float:
        start = time.perf_counter()
        await _arq_fill(pool, tag, number)
        seconds = time.perf_counter() - start
        queued = await pool.zcard(tag)
        assert queued == number, (queued, number)
        return seconds

    return _arq_run(url, tag, body)


def arq_work(url: str, tag: str, number: int, *, concurrency: int) -> float:
    """Seconds for a burst ``Worker`` (``max_jobs=concurrency``) to run ``number`` jobs."""
    _quiet()

    async def body(pool: arq.ArqRedis) -> float:
        await _arq_fill(pool, tag, number)
        worker = arq.Worker(
            functions=[arq.worker.func(async_noop, name="noop")],
            redis_pool=pool,
            queue_name=tag,
            burst=True,
            max_jobs=concurrency,
            poll_delay=0,
            handle_signals=False,
        )
        start = time.perf_counter()
        await worker.async_run()
        seconds = time.perf_counter() - start
        assert worker.jobs_complete == number, (worker.jobs_complete, number)
        return seconds

    return _arq_run(url, tag, body)

"""Every job store, built fresh for one test on a given clock (the conformance suite's stores).

Each factory returns ``(store, cleanup)``. The SQL and Redis stores get a table
or key prefix of their own, removed by ``cleanup``, so tests never see each
other's jobs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resilience.clock import Clock
from resilience.storage.jobs import MemoryJobStore

from .backends import STORE_TIMEOUT, require_postgres, require_redis

Factory = Callable[[Clock, Path], tuple[Any, Callable[[], None]]]


def _nothing() -> None:
    pass


def memory(clock: Clock, tmp: Path) -> tuple[Any, Callable[[], None]]:
    return MemoryJobStore(clock), _nothing


def sqlite(clock: Clock, tmp: Path) -> tuple[Any, Callable[[], None]]:
    from resilience.storage.sqlite import SQLiteStore

    store = SQLiteStore(tmp / f"jobs-{uuid.uuid4().hex[:8]}.db", clock=clock, timeout=STORE_TIMEOUT)
    return store, store.close


def postgres(clock: Clock, tmp: Path) -> tuple[Any, Callable[[], None]]:
    from resilience.storage.postgres import PostgresStore

    from .backends import drop_postgres_tables

    dsn = require_postgres()
    table = f"jc_{uuid.uuid4().hex[:10]}"
    store = PostgresStore(dsn, table=table, job_clock=clock, timeout=STORE_TIMEOUT)  # type: ignore[call-arg]

    def cleanup() -> None:
        store.close()
        drop_postgres_tables(dsn, table)

    return store, cleanup


def redis(clock: Clock, tmp: Path) -> tuple[Any, Callable[[], None]]:
    import redis as redis_py

    from resilience.storage.redis import RedisStore

    url = require_redis()
    prefix = f"jc_{uuid.uuid4().hex[:10]}"
    store = RedisStore(url, prefix=prefix, job_clock=clock, timeout=STORE_TIMEOUT)  # type: ignore[call-arg]

    def cleanup() -> None:
        store.close()
        client = redis_py.Redis.from_url(url)
        try:
            names = list(client.scan_iter(match=f"*{prefix}*", count=1000))
            if names:
                client.delete(*names)
        finally:
            client.close()

    return store, cleanup


FACTORIES: dict[str, Factory] = {
    "memory": memory,
    "sqlite": sqlite,
    "postgres": postgres,
    "redis": redis,
}

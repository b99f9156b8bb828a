"""Per-acquisition latency of the SQLite and PostgreSQL stores.

SQLite: one ``BEGIN IMMEDIATE`` transaction per acquisition on a temp file
(WAL), side by side with the memory store. PostgreSQL: one function call per
acquisition, as a ratio to a plain ``SELECT 1`` round trip on the same kind of
connection (the floor for any design that makes one round trip), next to a
plain one-row ``INSERT … ON CONFLICT DO UPDATE`` (the floor for one durable
write), with and without ``synchronous_commit``. Every bucket is large enough never to refuse.

.venv/bin/python benchmarks/run.py stores
PostgreSQL is skipped (with the reason) when no server answers at
``RESILIENCE_TEST_POSTGRES_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from _harness import print_table, time_sync

from resilience._core.bucket import BucketSpec
from resilience.errors import StoreUnavailable
from resilience.storage import MemoryStore
from resilience.storage.buckets import BucketRequest
from resilience.storage.sqlite import SQLiteStore

DSN = os.environ.get("RESILIENCE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
HUGE = BucketSpec.of(rate=1e9, per=1.0, burst=10**9)  # never refuses
REPEAT = 3
# The floor of any durable single-statement acquisition: one row written and committed.
UPSERT = (
    "INSERT INTO resilience_bench_buckets AS b (name, key, tat) VALUES (%s, 'upsert', 0) "
    "ON CONFLICT (name, key) DO UPDATE SET tat = b.tat + 1 RETURNING tat"
)


def _interleaved(cases: dict[str, Callable[[], object]], number: int) -> dict[str, float]:
    """Microseconds per call of each case: best of REPEAT rounds, the cases taking
    turns within each round (so a burst of load elsewhere hits them alike)."""
    for fn in cases.values():  # warm up: connections, prepared statements
        for _ in range(min(50, number)):
            fn()
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(REPEAT):
        for label, fn in cases.items():
            best[label] = min(best[label], time_sync(fn, number) * 1e6)
    return best


async def _ainterleaved(
    cases: dict[str, Callable[[], Awaitable[object]]], number: int
) -> dict[str, float]:
    for make in cases.values():
        for _ in range(min(50, number)):
            await make()
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(REPEAT):
        for label, make in cases.items():
            start = time.perf_counter()
            for _ in range(number):
                await make()
            best[label] = min(best[label], (time.perf_counter() - start) / number * 1e6)
    return best


def _requests(name: str, keys: int = 1) -> list[BucketRequest]:
    return [BucketRequest(name, f"k{i}" if keys > 1 else None, 1, HUGE) for i in range(keys)]


def bench_sqlite() -> None:
    with tempfile.TemporaryDirectory() as folder:
        sqlite = SQLiteStore(Path(folder) / "bench.db")
        memory = MemoryStore()
        one, two = _requests(f"b-{uuid.uuid4().hex}"), _requests(f"b-{uuid.uuid4().hex}", 2)
        results = _interleaved(
            {
                "memory bucket_take": lambda: memory.bucket_take(one),
                "sqlite bucket_take": lambda: sqlite.bucket_take(one),
                "sqlite bucket_take, 2 buckets": lambda: sqlite.bucket_take(two),
                "sqlite bucket_tokens (read)": lambda: sqlite.bucket_tokens(
                    one[0].name, None, HUGE
                ),
                "sqlite breaker_load (read)": lambda: sqlite.breaker_load("b", 0.0),
            },
            2_000,
        )
        results.update(
            asyncio.run(
                _ainterleaved(
                    {"sqlite abucket_take (to_thread)": lambda: sqlite.abucket_take(one)}, 500
                )
            )
        )
        sqlite.close()
    print_table(
        "SQLite store: per operation (temp file, WAL)",
        results,
        baseline="sqlite bucket_take",
        unit="us",
    )


def bench_postgres() -> None:
    try:
        import psycopg

        from resilience.storage.postgres import PostgresStore
    except ImportError as error:  # pragma: no cover - psycopg is a dev dependency
        print(f"\n## PostgreSQL store: skipped ({error})")
        return
    table = "resilience_bench"
    store = PostgresStore(DSN, table=table)
    relaxed = PostgresStore(DSN, table=table, synchronous_commit=False)
    try:
        store.bucket_count("probe")  # connects and creates the tables
        relaxed.bucket_count("probe")
        plain = psycopg.connect(DSN, autocommit=True)
    except (StoreUnavailable, psycopg.Error) as error:
        print(f"\n## PostgreSQL store: skipped (no server at {store.url}: {error})")
        return
    one, two = _requests(f"b-{uuid.uuid4().hex}"), _requests(f"b-{uuid.uuid4().hex}", 2)
    number = 800
    results = _interleaved(
        {
            "SELECT 1 (psycopg)": lambda: plain.execute("SELECT 1").fetchall(),
            "plain 1-row upsert (psycopg)": lambda: plain.execute(
                UPSERT, (one[0].name,)
            ).fetchall(),
            "bucket_take": lambda: store.bucket_take(one),
            "bucket_take, 2 buckets": lambda: store.bucket_take(two),
            "bucket_take, synchronous_commit=off": lambda: relaxed.bucket_take(one),
            "bucket_tokens (read)": lambda: store.bucket_tokens(one[0].name, None, HUGE),
            "breaker_load (read)": lambda: store.breaker_load("b", 0.0),
        },
        number,
    )
    plain.close()

    async def async_cases() -> dict[str, float]:
        aplain = await psycopg.AsyncConnection.connect(DSN, autocommit=True)

        async def select_one() -> None:
            await (await aplain.execute("SELECT 1")).fetchall()

        out = await _ainterleaved(
            {
                "async SELECT 1 (psycopg)": select_one,
                "async abucket_take": lambda: store.abucket_take(one),
            },
            number,
        )
        await aplain.close()
        await store.aclose()
        return out

    results.update(asyncio.run(async_cases()))
    relaxed.close()
    print_table(
        f"PostgreSQL store: per operation ({store.url})",
        results,
        baseline="SELECT 1 (psycopg)",
        unit="us",
    )


def main() -> None:
    bench_sqlite()
    bench_postgres()


if __name__ == "__main__":
    main()

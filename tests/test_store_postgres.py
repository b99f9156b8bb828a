"""PostgreSQL specifics: quoting, timeouts, sweeping, concurrency, pickling."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
import uuid

import psycopg
import pytest

import resilience as rs
from resilience._core.bucket import BucketSpec, Decision
from resilience.storage.buckets import BucketRequest
from resilience.storage.postgres import PostgresStore
from resilience.storage.postgres import store as postgres_module

from .backends import drop_postgres_tables, require_postgres

pytestmark = pytest.mark.backend

SPEC = BucketSpec.of(rate=1, per=3600.0, burst=5)


@pytest.fixture
def dsn() -> str:
    return require_postgres()


def fresh() -> str:
    return f"pg-{uuid.uuid4().hex}"


def test_names_are_identifiers_and_values_are_parameters(dsn: str) -> None:
    table = 'Odd "Table"; --'
    store = PostgresStore(dsn, table=table)
    name = "x'); DROP TABLE resilience_test_buckets; --"
    try:
        assert store.bucket_take([BucketRequest(name, "k'\"", 1, SPEC)]).granted
        assert store.bucket_tokens(name, "k'\"", SPEC) == pytest.approx(4.0, abs=0.01)
        assert store.breaker_load(name, 0.0).version == 0
    finally:
        store.close()
        drop_postgres_tables(dsn, table)


def test_a_locked_row_times_out_then_the_store_recovers(dsn: str) -> None:
    store = PostgresStore(dsn, table="resilience_test", timeout=0.3)
    name = fresh()
    one = [BucketRequest(name, None, 1, SPEC)]
    try:
        assert store.bucket_take(one).granted
        with psycopg.connect(dsn) as blocker:  # holds the row in an open transaction
            blocker.execute(
                "SELECT 1 FROM resilience_test_buckets WHERE name = %s FOR UPDATE", (name,)
            )
            started = time.monotonic()
            with pytest.raises(rs.StoreUnavailable) as caught:
                store.bucket_take(one)
            assert time.monotonic() - started < 2.0
            assert "timeout" in caught.value.reason  # statement_timeout or lock_timeout
        assert store.bucket_take(one).granted  # same connection, still usable
        assert store.bucket_tokens(name, None, SPEC) == pytest.approx(3.0, abs=0.01)
    finally:
        store.close()


def test_idle_buckets_are_swept(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_module, "SWEEP_EVERY", 10)
    # A table of its own: a sweep deletes idle rows of the whole table, at most
    # SWEEP_ROWS of them, so other tests' idle rows would compete for the slots.
    table = f"resilience_sweep_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(dsn, table=table)
    name = fresh()
    quick = BucketSpec.of(rate=1000, per=1.0, burst=1)  # full again after 1 ms
    try:
        for key in range(30):
            store.bucket_take([BucketRequest(name, str(key), 1, quick)])
        time.sleep(0.01)
        for key in range(30, 60):
            store.bucket_take([BucketRequest(name, str(key), 1, quick)])
        assert store.bucket_count(name) < 60
    finally:
        store.close()
        with psycopg.connect(dsn, autocommit=True) as connection:
            for suffix in ("buckets", "circuits"):
                connection.execute(f'DROP TABLE IF EXISTS "{table}_{suffix}"')
            connection.execute(f'DROP FUNCTION IF EXISTS "{table}_take_v4"')
            connection.execute(f'DROP FUNCTION IF EXISTS "{table}_refund_v2"')
            connection.execute(f'DROP FUNCTION IF EXISTS "{table}_lock_v1"')


def test_composite_takes_in_opposite_orders_never_deadlock(dsn: str) -> None:
    store = PostgresStore(dsn, table="resilience_test")
    other = PostgresStore(dsn, table="resilience_test")
    name = fresh()
    big = BucketSpec.of(rate=1e6, per=1.0, burst=10**6)
    ab = [BucketRequest(name, "a", 1, big), BucketRequest(name, "b", 1, big)]
    ba = list(reversed(ab))
    errors: list[BaseException] = []

    def hammer(store: PostgresStore, requests: list[BucketRequest]) -> None:
        try:
            for _ in range(150):
                assert store.bucket_take(requests).granted
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [
        threading.Thread(target=hammer, args=(store, ab)),
        threading.Thread(target=hammer, args=(other, ba)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    other.close()
    assert not errors, errors


async def test_one_async_connection_per_event_loop(dsn: str) -> None:
    store = PostgresStore(dsn, table="resilience_test")
    name = fresh()
    one = [BucketRequest(name, None, 1, SPEC)]
    results = await asyncio.gather(*(store.abucket_take(one) for _ in range(8)))
    assert sum(d.granted for d in results) == 5
    # Another event loop (another thread) gets its own connection.
    other: list[Decision] = []
    thread = threading.Thread(target=lambda: other.append(asyncio.run(_in_new_loop(store, one))))
    thread.start()
    thread.join()
    assert not other[0].granted
    await store.aclose()


async def _in_new_loop(store: PostgresStore, one: list[BucketRequest]) -> Decision:
    decision = await store.abucket_take(one)
    await store.aclose()
    return decision


def test_a_store_pickles_without_its_connection(dsn: str) -> None:
    store = PostgresStore(
        dsn,
        table="resilience_test",
        timeout=1.5,
        synchronous_commit=False,
        pool_size=3,
        probe_lease=7.5,
    )
    copy = pickle.loads(pickle.dumps(store))
    assert (
        copy.dsn,
        copy.timeout,
        copy.table,
        copy.synchronous_commit,
        copy.pool_size,
        copy.probe_lease,
    ) == (dsn, 1.5, "resilience_test", False, 3, 7.5)
    assert copy.breaker_load(fresh(), 0.0).version == 0
    copy.close()

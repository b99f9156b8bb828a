"""PostgreSQL job store specifics: concurrent claims, big batches, the caller's
connection (exactly once, the outbox), failures and the schema.

The behaviour every job store shares is in ``test_jobs_conformance.py``.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

import resilience as rs
from resilience.storage.jobs import LeaseLost, NewJob, WallClock
from resilience.storage.postgres import PostgresStore
from resilience.testing import FakeClock

from .backends import STORE_TIMEOUT, drop_postgres_tables, require_postgres

pytestmark = pytest.mark.backend

FAR = 1_700_000_000.25


@pytest.fixture
def dsn() -> str:
    return require_postgres()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(FAR)


@pytest.fixture
def table(dsn: str) -> Iterator[str]:
    name = f"jp_{uuid.uuid4().hex[:10]}"
    yield name
    drop_postgres_tables(dsn, name)


@pytest.fixture
def store(dsn: str, table: str, clock: FakeClock) -> Iterator[PostgresStore]:
    built = PostgresStore(dsn, table=table, job_clock=clock, timeout=STORE_TIMEOUT)
    yield built
    built.close()


@pytest.fixture
def user_table(dsn: str, table: str) -> Iterator[sql.Identifier]:
    """A table of the application's own, beside the store's."""
    name = sql.Identifier(f"{table}_orders")
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE TABLE {} (job_id bigint)").format(name))
    yield name
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))


def rows_in(dsn: str, name: sql.Identifier) -> list[int]:
    with psycopg.connect(dsn) as reader:
        return [row[0] for row in reader.execute(sql.SQL("SELECT job_id FROM {}").format(name))]


def new(**options: Any) -> NewJob:
    return NewJob(handler="h", payload="{}", **options)


def one(store: PostgresStore, queue: str = "q", **options: Any) -> int:
    [(job_id, created)] = store.job_enqueue(queue, [new(**options)])
    assert created
    return job_id


# -- claiming ----------------------------------------------------------------------------------


def test_concurrent_claimers_never_get_the_same_job(dsn: str, table: str) -> None:
    store = PostgresStore(dsn, table=table, timeout=STORE_TIMEOUT)  # the server's clock
    try:
        ids = {job_id for job_id, _ in store.job_enqueue("q", [new() for _ in range(2000)])}
        claimed: list[list[int]] = [[] for _ in range(4)]
        start = threading.Barrier(4)

        def claimer(mine: list[int]) -> None:
            start.wait()
            while batch := store.job_claim("q", f"w{len(mine)}", 25, 300.0):
                mine.extend(job.id for job in batch)

        threads = [threading.Thread(target=claimer, args=(mine,)) for mine in claimed]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        every = [job_id for mine in claimed for job_id in mine]
        assert len(every) == len(set(every)) == 2000
        assert set(every) == ids
        assert store.job_stats("q").running == 2000
    finally:
        store.close()


def test_a_claim_of_500_from_10000_takes_the_first_in_claim_order(
    store: PostgresStore, clock: FakeClock
) -> None:
    jobs = [new(priority=1 + i % 3, delay=float(i % 7)) for i in range(10_000)]
    answers = store.job_enqueue("q", jobs)
    clock.advance(10.0)
    claimed = store.job_claim("q", "w", 500, 30.0)
    order = sorted(
        (job.priority, FAR + job.delay, job_id)
        for job, (job_id, _) in zip(jobs, answers, strict=True)
    )
    assert [job.id for job in claimed] == [job_id for _, _, job_id in order[:500]]
    assert all(job.state == "running" and job.lease_owner == "w" for job in claimed)
    assert store.job_stats("q").pending == 9500


def test_a_lapsed_job_locked_by_an_open_transaction_is_skipped_not_waited_for(
    store: PostgresStore, dsn: str, clock: FakeClock
) -> None:
    job_id = one(store)
    store.job_claim("q", "w", 1, 5.0)
    with psycopg.connect(dsn) as handler:
        store.job_complete("q", job_id, "w", connection=handler)  # holds the row lock
        clock.advance(10.0)  # the lease lapsed meanwhile
        assert store.job_claim("q", "other", 10, 5.0) == []
        handler.commit()
    assert store.job_get("q", job_id).state == "done"  # type: ignore[union-attr]


# -- enqueue -----------------------------------------------------------------------------------


def test_a_batch_of_10000_keyed_jobs_is_one_statement(store: PostgresStore) -> None:
    earlier = one(store, key="k-5")
    statements = 0
    queries = store._job_queries
    plain = queries.query

    def counted(name: str, **params: Any) -> Any:
        nonlocal statements
        statements += 1
        return plain(name, **params)

    queries.query = counted  # type: ignore[method-assign]
    jobs = [new(key=f"k-{i}", batch="b") for i in range(10_000)] + [new(key="k-7"), new()]
    answers = store.job_enqueue("q", jobs)
    assert statements == 1
    assert answers[5] == (earlier, False)  # held before the call
    assert answers[10_000] == (answers[7][0], False)  # repeated within the call
    created = [job_id for job_id, fresh in answers if fresh]
    assert len(created) == 10_000 and created == sorted(created)
    assert created[0] > earlier
    assert store.job_progress("q", "b").total == 9_999
    assert store.job_stats("q").pending == 10_001


def test_a_failing_batch_adds_nothing(store: PostgresStore) -> None:
    with pytest.raises(ValueError, match="cannot be stored"):
        store.job_enqueue("q", [new(key="a"), NewJob(handler="nul\x00", payload="{}")])
    assert store.job_stats("q").total == 0
    assert store.job_enqueue("q", [new(key="a")])[0][1]  # the key was never taken


def test_times_are_the_servers_without_a_job_clock(dsn: str, table: str) -> None:
    store = PostgresStore(dsn, table=table, timeout=STORE_TIMEOUT)
    try:
        before = time.time()
        job = store.job_get("q", one(store, delay=60.0))
        assert job is not None
        # The server's clock is this machine's: generous bounds, no waiting.
        assert before - 5.0 < job.created_at < before + 5.0
        assert job.next_attempt_at == job.created_at + 60.0
    finally:
        store.close()


# -- the caller's connection -------------------------------------------------------------------


def test_complete_in_the_callers_transaction_is_exactly_once(
    store: PostgresStore, dsn: str, user_table: sql.Identifier
) -> None:
    job_id = one(store)
    store.job_claim("q", "w", 1, 30.0)
    insert = sql.SQL("INSERT INTO {} (job_id) VALUES (%s)").format(user_table)
    with psycopg.connect(dsn, row_factory=dict_row) as handler:  # any row factory
        handler.execute(insert, (job_id,))
        assert store.job_complete("q", job_id, "w", connection=handler)
        handler.rollback()
    assert store.job_get("q", job_id).state == "running"  # type: ignore[union-attr]
    assert rows_in(dsn, user_table) == []
    with psycopg.connect(dsn) as handler, handler.transaction():
        handler.execute(insert, (job_id,))
        assert store.job_complete("q", job_id, "w", connection=handler)
    assert store.job_get("q", job_id).state == "done"  # type: ignore[union-attr]
    assert rows_in(dsn, user_table) == [job_id]


def test_a_lapsed_lease_raises_lease_lost_and_the_callers_work_rolls_back(
    store: PostgresStore, dsn: str, clock: FakeClock, user_table: sql.Identifier
) -> None:
    job_id = one(store)
    store.job_claim("q", "w", 1, 5.0)
    clock.advance(5.0)
    insert = sql.SQL("INSERT INTO {} (job_id) VALUES (%s)").format(user_table)
    with psycopg.connect(dsn) as handler:
        with pytest.raises(LeaseLost) as lost, handler.transaction():
            handler.execute(insert, (job_id,))
            store.job_complete("q", job_id, "w", connection=handler)
        assert (lost.value.queue, lost.value.job_id) == ("q", job_id)
    assert rows_in(dsn, user_table) == []
    assert store.job_get("q", job_id).state == "running"  # type: ignore[union-attr]


def test_enqueue_in_the_callers_transaction_is_an_outbox(store: PostgresStore, dsn: str) -> None:
    with psycopg.connect(dsn) as app:
        [(job_id, created)] = store.job_enqueue("q", [new(key="once")], connection=app)
        assert created and store.job_get("q", job_id) is None  # not committed yet
        app.rollback()
        [(job_id, created)] = store.job_enqueue("q", [new(key="once")], connection=app)
        app.commit()
    assert created and store.job_get("q", job_id) is not None


def test_the_async_twins_take_the_callers_async_connection(
    store: PostgresStore, dsn: str, clock: FakeClock, user_table: sql.Identifier
) -> None:
    insert = sql.SQL("INSERT INTO {} (job_id) VALUES (%s)").format(user_table)

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as app:
            [(job_id, _)] = await store.ajob_enqueue("q", [new()], connection=app)
            await app.commit()
            await store.ajob_claim("q", "w", 1, 5.0)
            async with app.transaction():
                await app.execute(insert, (job_id,))
                assert await store.ajob_complete("q", job_id, "w", connection=app)
            assert await store.ajob_complete("q", job_id, "w") is False
            [(second, _)] = await store.ajob_enqueue("q", [new()])
            await store.ajob_claim("q", "w", 1, 5.0)
            clock.advance(5.0)
            with pytest.raises(LeaseLost):
                async with app.transaction():
                    await app.execute(insert, (second,))
                    await store.ajob_complete("q", second, "w", connection=app)
        await store.aclose()

    asyncio.run(main())
    assert rows_in(dsn, user_table) == [store.job_list("q", "done")[0].id]


def test_a_connection_of_the_wrong_kind_is_refused(store: PostgresStore, dsn: str) -> None:
    with pytest.raises(TypeError, match=r"psycopg\.Connection"):
        store.job_enqueue("q", [new()], connection=object())

    async def main() -> None:
        with (
            psycopg.connect(dsn) as sync_connection,
            pytest.raises(TypeError, match="AsyncConnection"),
        ):
            await store.ajob_complete("q", 1, "w", connection=sync_connection)

    asyncio.run(main())


# -- failures, options and the schema -------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_server_is_store_unavailable_without_the_password() -> None:
    dsn = f"postgresql://postgres:s3cret-pw@127.0.0.1:{closed_port()}/test"
    store = PostgresStore(dsn, table="jp_down", timeout=0.3)
    try:
        with pytest.raises(rs.StoreUnavailable) as caught:
            store.job_enqueue("q", [new()])
        assert "s3cret-pw" not in str(caught.value) and "s3cret-pw" not in repr(store)
        with pytest.raises(rs.StoreUnavailable):
            store.job_claim("q", "w", 1, 30.0)

        async def main() -> None:
            with pytest.raises(rs.StoreUnavailable) as failed:
                await store.ajob_stats("q")
            assert "s3cret-pw" not in str(failed.value)
            await store.aclose()

        asyncio.run(main())
    finally:
        store.close()


def test_the_schema_is_created_on_first_use(dsn: str, table: str) -> None:
    def exists() -> bool:
        with psycopg.connect(dsn) as reader:
            row = reader.execute("SELECT to_regclass(%s)", (f'"{table}_jobs"',)).fetchone()
            return row is not None and row[0] is not None

    assert not exists()
    store = PostgresStore(dsn, table=table, timeout=STORE_TIMEOUT)
    try:
        assert store.job_queues() == []
        assert exists()
        with psycopg.connect(dsn, autocommit=True) as admin:  # a store of an older release
            admin.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(f"{table}_jobs")))
        later = PostgresStore(dsn, table=table, timeout=STORE_TIMEOUT)
        try:
            assert later.job_enqueue("q", [new()])[0][1]
            assert later.job_queues() == ["q"]
        finally:
            later.close()
    finally:
        store.close()


def test_job_clock_is_validated_and_pickled(dsn: str) -> None:
    with pytest.raises(rs.ConfigurationError, match="job_clock"):
        PostgresStore(dsn, job_clock=object())  # type: ignore[arg-type]
    copy = pickle.loads(pickle.dumps(PostgresStore(dsn, job_clock=WallClock())))
    assert isinstance(copy.job_clock, WallClock)
    assert pickle.loads(pickle.dumps(PostgresStore(dsn))).job_clock is None
    assert PostgresStore.job_transactional is True


def test_ids_the_column_cannot_hold_name_no_job(store: PostgresStore) -> None:
    huge = 2**70
    assert store.job_get("q", huge) is None
    assert store.job_complete("q", huge, "w") is False
    assert store.job_heartbeat("q", "w", [huge], 5.0) == []
    assert store.job_replay("q", huge) is False

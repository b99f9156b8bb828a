"""SQLite's job store specifics: processes sharing a file, big batches and claims, a
reopened file, failures, the async twins, and exactly-once on the caller's connection.

What every job store does is in ``test_jobs_conformance.py``; here is what only a
file shared by processes and the caller's own ``sqlite3`` connection add.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import resilience as rs
from resilience.jobs import JobQueue, current
from resilience.storage import sqlite_jobs
from resilience.storage.jobs import LeaseLost, NewJob, TransactionalJobStore
from resilience.storage.sqlite import SQLiteStore
from resilience.testing import FakeClock

FAR = 1_700_000_000.25
PROCESSES = 4
SHARED_JOBS = 400


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(FAR)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def store(path: Path, clock: FakeClock) -> Iterator[SQLiteStore]:
    built = SQLiteStore(path, clock=clock)
    yield built
    built.close()


def new(handler: str = "h", **options: Any) -> NewJob:
    return NewJob(handler=handler, payload=options.pop("payload", "{}"), **options)


def user_connection(path: Path) -> sqlite3.Connection:
    """The handler's own connection to the store's file, with a user table."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("CREATE TABLE IF NOT EXISTS sent (job INTEGER PRIMARY KEY)")
    return connection


def sent(connection: sqlite3.Connection) -> list[int]:
    return [row[0] for row in connection.execute("SELECT job FROM sent ORDER BY job")]


# -- the file and its schema ---------------------------------------------------------------


def test_the_jobs_table_and_its_indexes_appear_beside_the_others(
    store: SQLiteStore, path: Path
) -> None:
    assert isinstance(store, TransactionalJobStore) and store.job_transactional
    assert store.job_queues() == []
    with sqlite3.connect(path) as raw:
        names = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
    assert {"resilience_buckets", "resilience_circuits", "resilience_jobs"} <= names
    indexes = {"keys", "claim", "leases", "states", "finished", "batches"}
    assert {f"resilience_jobs_{index}" for index in indexes} <= names


def test_a_file_made_before_jobs_gains_the_table(path: Path, clock: FakeClock) -> None:
    with sqlite3.connect(path) as raw:  # an older version's file, with a bucket in it
        raw.execute(
            "CREATE TABLE resilience_buckets "
            "(name TEXT NOT NULL, key TEXT NOT NULL, tat REAL NOT NULL, PRIMARY KEY (name, key))"
        )
        raw.execute("INSERT INTO resilience_buckets VALUES ('l', '', 1.0)")
    raw.close()
    store = SQLiteStore(path, clock=clock)
    [(job_id, created)] = store.job_enqueue("q", [new()])
    assert created and store.job_get("q", job_id) is not None
    assert store.bucket_count("l") == 1
    store.close()


def test_a_reopened_file_has_the_jobs_leases_and_keys(path: Path, clock: FakeClock) -> None:
    first = SQLiteStore(path, clock=clock)
    answers = first.job_enqueue("q", [new(key="a"), new(key="b"), new()])
    [running] = first.job_claim("q", "w1", 1, 30.0)
    first.close()
    again = SQLiteStore(path, clock=clock)
    assert [job.id for job in again.job_list("q")] == [job_id for job_id, _ in answers]
    assert again.job_enqueue("q", [new(key="a")]) == [(answers[0][0], False)]
    assert again.job_get("q", running.id) == running
    assert [job.id for job in again.job_claim("q", "w2", 5, 30.0)] == [answers[1][0], answers[2][0]]
    assert again.job_complete("q", running.id, "w1")  # the lease lives in the file
    [(later, _)] = again.job_enqueue("q", [new()])
    assert later > answers[-1][0]
    again.close()


def test_ids_are_never_reused_after_the_newest_job_is_purged(
    store: SQLiteStore, clock: FakeClock
) -> None:
    [(job_id, _)] = store.job_enqueue("q", [new(key="k")])
    store.job_claim("q", "w", 1, 30.0)
    store.job_complete("q", job_id, "w")
    clock.advance(1.0)
    assert store.job_purge("q", 0.5) == 1
    [(fresh, created)] = store.job_enqueue("q", [new(key="k")])
    assert created and fresh > job_id


# -- size ------------------------------------------------------------------------------------


def test_a_batch_of_ten_thousand_with_keys(store: SQLiteStore) -> None:
    store.job_enqueue("q", [new(key=f"k{i}") for i in range(0, 10_000, 2)])  # half held already
    held = {job.key: job.id for job in store.job_list("q", "pending", 10_000)}
    batch = [new(key=f"k{i}") for i in range(10_000)] + [new(key="k1"), new()]
    answers = store.job_enqueue("q", batch)
    assert len(answers) == 10_002
    for i, (job_id, created) in enumerate(answers[:10_000]):
        assert created == (i % 2 == 1)
        if not created:
            assert job_id == held[f"k{i}"]
    fresh = [job_id for job_id, created in answers if created]
    assert fresh == sorted(fresh) and min(fresh) > max(held.values())
    assert answers[10_000] == (answers[1][0], False)  # a key repeated later in the batch
    assert answers[10_001][1]
    assert store.job_stats("q").pending == 10_001
    assert store.job_enqueue("q", batch[:10_000]) == [
        (job_id, False) for job_id, _ in answers[:10_000]
    ]


def test_claim_500_of_ten_thousand_in_order(store: SQLiteStore, clock: FakeClock) -> None:
    jobs = [new(priority=1 + i % 7, delay=float(i % 5)) for i in range(10_000)]
    ids = [job_id for job_id, _ in store.job_enqueue("q", jobs)]
    clock.advance(2.0)  # the jobs delayed 3 and 4 seconds are not due
    due = [
        (job.priority, FAR + job.delay, job_id)
        for job, job_id in zip(jobs, ids, strict=True)
        if job.delay <= 2.0
    ]
    claimed = store.job_claim("q", "w", 500, 30.0)
    assert [(j.priority, j.next_attempt_at, j.id) for j in claimed] == sorted(due)[:500]
    assert all(j.state == "running" and j.lease_owner == "w" for j in claimed)
    stats = store.job_stats("q")
    assert (stats.pending, stats.running, stats.due) == (9_500, 500, len(due) - 500)
    second = store.job_claim("q", "w2", 500, 30.0)
    assert not {j.id for j in claimed} & {j.id for j in second}


def test_claims_read_through_the_partial_indexes(store: SQLiteStore, path: Path) -> None:
    store.job_queues()
    with sqlite3.connect(path) as raw:
        for statement, index in (
            (sqlite_jobs._DUE_PENDING, "resilience_jobs_claim"),
            (sqlite_jobs._DUE_RUNNING, "resilience_jobs_leases"),
            (sqlite_jobs._LAPSED_LAST, "resilience_jobs_leases"),
        ):
            params = ("q", FAR, 10)[: statement.count("?")]
            plan = " ".join(
                row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {statement}", params)
            )
            assert f"INDEX {index}" in plan, plan
    raw.close()


# -- processes sharing the file ------------------------------------------------------------


def _claim_until_empty(barrier: Any, results: Any, store: SQLiteStore, worker: str) -> None:
    try:
        store.job_stats("q")  # connect before the start line
        barrier.wait()
        mine: list[int] = []
        while claimed := store.job_claim("q", worker, 7, 300.0):
            for job in claimed:
                assert store.job_complete("q", job.id, worker), job
                mine.append(job.id)
        results.put(mine)
    except BaseException as error:  # reported, not lost in the child
        results.put(f"{worker}: {error!r}")


def test_processes_claiming_from_one_file_never_share_a_job(path: Path) -> None:
    store = SQLiteStore(path)
    ids = [job_id for job_id, _ in store.job_enqueue("q", [new() for _ in range(SHARED_JOBS)])]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    processes = [
        context.Process(target=_claim_until_empty, args=(barrier, results, store, f"w{i}"))
        for i in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    collected = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert not [item for item in collected if isinstance(item, str)], collected
    everything = [job_id for mine in collected for job_id in mine]
    assert sorted(everything) == ids  # each job claimed once, by one process
    assert store.job_stats("q").done == SHARED_JOBS
    store.close()


# -- failures ------------------------------------------------------------------------------


def test_a_corrupt_file_is_unavailable(path: Path, clock: FakeClock) -> None:
    store = SQLiteStore(path, clock=clock, timeout=0.5)
    store.job_enqueue("q", [new()])
    store.close()
    with open(path, "r+b") as file:  # garbage over the header, after the store was built
        file.write(b"definitely not SQLite" * 10)
    for call in (
        lambda: store.job_enqueue("q", [new()]),
        lambda: store.job_claim("q", "w", 1, 30.0),
        lambda: store.job_stats("q"),
    ):
        with pytest.raises(rs.StoreUnavailable) as caught:
            call()
        assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(rs.StoreUnavailable):
        asyncio.run(store.ajob_claim("q", "w", 1, 30.0))
    store.close()


def test_a_locked_file_is_unavailable_and_nothing_half_done(path: Path, clock: FakeClock) -> None:
    store = SQLiteStore(path, clock=clock, timeout=0.2)
    [(job_id, _)] = store.job_enqueue("q", [new()])
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with pytest.raises(rs.StoreUnavailable, match="locked"):
        store.job_claim("q", "w", 1, 30.0)
    with pytest.raises(rs.StoreUnavailable, match="locked"):
        store.job_enqueue("q", [new()])
    assert store.job_stats("q").pending == 1  # reads never wait for writers
    blocker.execute("ROLLBACK")
    blocker.close()
    assert [job.id for job in store.job_claim("q", "w", 5, 30.0)] == [job_id]
    store.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_file_is_unavailable(path: Path, clock: FakeClock) -> None:
    store = SQLiteStore(path, clock=clock, timeout=0.5)
    store.job_enqueue("q", [new()])
    store.close()
    path.chmod(0o400)
    try:
        with pytest.raises(rs.StoreUnavailable):
            store.job_enqueue("q", [new()])
    finally:
        path.chmod(0o600)
        store.close()


def test_a_job_store_can_hold_what_sqlite_cannot_refuses_it(store: SQLiteStore) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        store.job_enqueue("q", [new(), new(max_attempts=2**63)])
    assert store.job_queues() == []
    assert store.job_get("q", 2**70) is None
    assert not store.job_complete("q", -(2**70), "w")
    assert store.job_heartbeat("q", "w", [2**64], 1.0) == []


# -- async -----------------------------------------------------------------------------------


def test_async_claims_never_overlap(store: SQLiteStore) -> None:
    async def main() -> None:
        await store.ajob_enqueue("q", [new() for _ in range(60)])
        claims = await asyncio.gather(*(store.ajob_claim("q", f"w{i}", 7, 30.0) for i in range(10)))
        ids = [job.id for claimed in claims for job in claimed]
        assert len(ids) == len(set(ids)) == 60
        done = await asyncio.gather(
            *(
                store.ajob_complete("q", job.id, job.lease_owner or "")
                for claimed in claims
                for job in claimed
            )
        )
        assert all(done)
        assert (await store.ajob_stats("q")).done == 60

    asyncio.run(main())


# -- the caller's connection: exactly once, the outbox ---------------------------------------


def handled(connection: sqlite3.Connection, store: SQLiteStore, job_id: int, worker: str) -> None:
    """A handler's transaction: its own write, and the job's completion, together."""
    connection.execute("BEGIN")
    connection.execute("INSERT INTO sent (job) VALUES (?)", (job_id,))
    store.job_complete("q", job_id, worker, connection=connection)


def test_a_rolled_back_handler_leaves_the_job_running_and_no_row(
    store: SQLiteStore, path: Path
) -> None:
    [(job_id, _)] = store.job_enqueue("q", [new()])
    store.job_claim("q", "w", 1, 30.0)
    mine = user_connection(path)
    handled(mine, store, job_id, "w")
    mine.execute("ROLLBACK")
    job = store.job_get("q", job_id)
    assert job is not None and (job.state, job.lease_owner) == ("running", "w")
    assert sent(mine) == []
    handled(mine, store, job_id, "w")  # the same worker tries again, and commits
    mine.execute("COMMIT")
    job = store.job_get("q", job_id)
    assert job is not None and job.state == "done" and job.finished_at == FAR
    assert sent(mine) == [job_id]
    mine.close()


def test_a_lapsed_lease_raises_lease_lost_and_the_users_write_rolls_back(
    store: SQLiteStore, path: Path, clock: FakeClock
) -> None:
    [(job_id, _)] = store.job_enqueue("q", [new()])
    store.job_claim("q", "w", 1, 30.0)
    clock.advance(30.0)  # the lease lapsed: another worker may hold the job now
    mine = user_connection(path)
    with pytest.raises(LeaseLost) as caught:
        handled(mine, store, job_id, "w")
    assert caught.value.job_id == job_id and mine.in_transaction
    mine.execute("ROLLBACK")
    assert sent(mine) == []
    job = store.job_get("q", job_id)
    assert job is not None and job.state == "running"
    [again] = store.job_claim("q", "w2", 1, 30.0)
    assert again.id == job_id and again.attempts == 2
    mine.close()


def test_the_outbox_enqueues_only_if_the_callers_transaction_commits(
    store: SQLiteStore, path: Path
) -> None:
    mine = user_connection(path)  # the store has not opened the file: no jobs table yet
    for outcome in ("ROLLBACK", "COMMIT"):
        mine.execute("BEGIN")
        mine.execute("INSERT INTO sent (job) VALUES (0)")
        answers = store.job_enqueue("q", [new(key="order-7"), new(key="order-7")], connection=mine)
        assert answers[1] == (answers[0][0], False)
        mine.execute(outcome)
    [job] = store.job_list("q")
    assert job.key == "order-7" and sent(mine) == [0]
    mine.close()


def test_the_async_twins_use_the_callers_connection_on_its_own_thread(
    store: SQLiteStore, path: Path
) -> None:
    mine = user_connection(path)  # check_same_thread: another thread could not use it

    async def main() -> None:
        mine.execute("BEGIN")
        [(job_id, _)] = await store.ajob_enqueue("q", [new()], connection=mine)
        mine.execute("COMMIT")
        await store.ajob_claim("q", "w", 1, 30.0)
        mine.execute("BEGIN")
        mine.execute("INSERT INTO sent (job) VALUES (?)", (job_id,))
        assert await store.ajob_complete("q", job_id, "w", connection=mine)
        with pytest.raises(LeaseLost):  # done already: settled once
            await store.ajob_complete("q", job_id, "w", connection=mine)
        mine.execute("COMMIT")
        job = await store.ajob_get("q", job_id)
        assert job is not None and job.state == "done"

    asyncio.run(main())
    assert len(sent(mine)) == 1
    mine.close()


def test_the_callers_row_and_text_factories_are_left_as_they_were(
    store: SQLiteStore, path: Path
) -> None:
    mine = user_connection(path)
    mine.row_factory, mine.text_factory = sqlite3.Row, bytes
    mine.execute("BEGIN")
    [(job_id, created)] = store.job_enqueue("q", [new(key="k")], connection=mine)
    assert created
    assert store.job_enqueue("q", [new(key="k")], connection=mine) == [(job_id, False)]
    mine.execute("COMMIT")
    store.job_claim("q", "w", 1, 30.0)
    mine.execute("BEGIN")
    assert store.job_complete("q", job_id, "w", connection=mine)
    mine.execute("COMMIT")
    assert (mine.row_factory, mine.text_factory) == (sqlite3.Row, bytes)
    assert mine.execute("SELECT state FROM resilience_jobs").fetchone()["state"] == b"done"
    mine.close()


def test_a_connection_elsewhere_is_refused(store: SQLiteStore, path: Path, tmp_path: Path) -> None:
    [(job_id, _)] = store.job_enqueue("q", [new()])
    other = sqlite3.connect(tmp_path / "other.db", isolation_level=None)
    other.execute("BEGIN")
    memory = sqlite3.connect(":memory:", isolation_level=None)
    memory.execute("BEGIN")
    for connection, message in ((other, "other.db"), (memory, "in-memory")):
        with pytest.raises(ValueError, match=message):
            store.job_complete("q", job_id, "w", connection=connection)
        with pytest.raises(ValueError, match="store's file"):
            store.job_enqueue("q", [new()], connection=connection)
    idle = user_connection(path)  # the right file, but no transaction open
    with pytest.raises(ValueError, match="in_transaction"):
        store.job_enqueue("q", [new()], connection=idle)
    idle.close()
    with pytest.raises(ValueError, match="connection"):
        store.job_enqueue("q", [new()], connection=idle)  # closed
    with pytest.raises(TypeError, match=r"sqlite3\.Connection"):
        store.job_complete("q", job_id, "w", connection=object())
    assert store.job_stats("q").total == 1
    other.close()
    memory.close()


def test_a_handler_completes_its_job_in_its_own_transaction(store: SQLiteStore, path: Path) -> None:
    queue = JobQueue("q", store=store)
    user_connection(path).close()

    @queue.handler
    def send(n: int) -> None:
        mine = sqlite3.connect(path, isolation_level=None)  # on the handler's thread
        try:
            mine.execute("BEGIN")
            mine.execute("INSERT INTO sent (job) VALUES (?)", (n,))
            current().complete(mine)
            mine.execute("COMMIT")
        finally:
            mine.close()

    queue.enqueue(send, n=41)
    counts = queue.run_once()
    assert (counts.claimed, counts.done) == (1, 1)
    assert [job.state for job in queue.jobs()] == ["done"]
    with sqlite3.connect(path) as check:
        assert sent(check) == [41]
    check.close()

"""Where sync handlers run: on the caller's thread at concurrency 1, on a pool above."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from resilience.jobs import JobQueue, current
from resilience.storage.sqlite import SQLiteStore
from resilience.testing import FakeClock


def test_one_at_a_time_runs_on_the_callers_thread(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    queue = JobQueue("q", store=SQLiteStore(path, clock=FakeClock(1_700_000_000.0)))
    connection = sqlite3.connect(path, isolation_level=None)  # opened on this thread
    connection.execute("CREATE TABLE effects (n INTEGER)")
    threads: list[threading.Thread] = []

    @queue.handler
    def effect(n: int) -> None:
        threads.append(threading.current_thread())
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO effects VALUES (?)", (n,))
        current().complete(connection=connection)
        connection.execute("COMMIT")

    queue.enqueue_batch(effect, [{"n": n} for n in range(3)])
    assert queue.run_once().done == 3
    assert queue.work(until_empty=True).claimed == 0
    assert threads == [threading.current_thread()] * 3
    assert connection.execute("SELECT count(*) FROM effects").fetchone() == (3,)


def test_concurrent_runs_use_a_pool(tmp_path: Path) -> None:
    queue = JobQueue("q", store=SQLiteStore(tmp_path / "jobs.db"))
    threads: set[str] = set()
    lock = threading.Lock()

    @queue.handler
    def task(n: int) -> None:
        with lock:
            threads.add(threading.current_thread().name)

    queue.enqueue_batch(task, [{"n": n} for n in range(8)])
    assert queue.run_once(concurrency=4).done == 8
    assert all(name.startswith("resilience-job") for name in threads)


def test_a_queue_closes_the_store_it_built(tmp_path: Path) -> None:
    with JobQueue("q", store=f"sqlite:///{tmp_path / 'jobs.db'}") as queue:
        assert queue.stats().total == 0
        store = queue.store
    assert isinstance(store, SQLiteStore) and store._connection is None
    given = SQLiteStore(tmp_path / "given.db")
    with JobQueue("q", store=given) as queue:
        queue.stats()
    assert given._connection is not None  # its owner's to close
    given.close()

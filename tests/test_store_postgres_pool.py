"""PostgreSQL: a pool of connections, and more callers than connections (issue 11, item 15).

A busy pool is back-pressure: callers wait their turn (first come, first
served) up to the store's ``timeout``; they are never told the store is down,
and a limiter never grants more than its rate allows. Every figure is measured
on the real server; the only real time spent is the load itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid

import psycopg
import pytest

import resilience as rs
from resilience._core.bucket import BucketSpec
from resilience.storage.buckets import BucketRequest
from resilience.storage.postgres import PostgresStore

from .backends import require_postgres

pytestmark = pytest.mark.backend

MODES = ["fail_closed", "fail_open", "local"]
RATE, BURST = 100.0, 10  # tokens per second, and at once
RUN = 1.0  # seconds of load per case
POOL = 4  # connections: far fewer than the callers


@pytest.fixture
def dsn() -> str:
    return require_postgres()


def fresh() -> str:
    return f"pool-{uuid.uuid4().hex}"


def bound(elapsed: float) -> float:
    """The most a GCRA limiter may grant in ``elapsed`` seconds from a full bucket."""
    return BURST + RATE * elapsed


def _store(dsn: str) -> PostgresStore:
    # synchronous_commit off: the same logic, less time per acquisition, so a
    # second of load puts many more acquisitions through the pool.
    return PostgresStore(
        dsn, table="resilience_test", timeout=2.0, pool_size=POOL, synchronous_commit=False
    )


@pytest.mark.parametrize("mode", MODES)
def test_150_threads_share_a_small_pool_without_outage_or_over_granting(
    dsn: str, mode: str, outages: list[logging.LogRecord], capsys: pytest.CaptureFixture[str]
) -> None:
    store = _store(dsn)
    limiter = rs.RateLimiter(
        fresh(), rate=RATE, per=1.0, burst=BURST, store=store, on_store_failure=mode
    )
    granted, calls, errors = [0], [0], []
    lock = threading.Lock()
    start = threading.Barrier(151)
    stop: list[float] = []

    def caller() -> None:
        start.wait()
        mine = made = 0
        try:
            while time.monotonic() < stop[0]:
                made += 1
                if limiter.try_acquire():
                    mine += 1
        except BaseException as error:  # reported below
            errors.append(error)
        with lock:
            granted[0] += mine
            calls[0] += made

    threads = [threading.Thread(target=caller) for _ in range(150)]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    stop.append(began + RUN)
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    store.close()
    with capsys.disabled():
        print(
            f"\n[pool] sync  {mode:11} 150 threads, pool {POOL}: granted {granted[0]} "
            f"<= bound {bound(elapsed):.1f} ({calls[0]} calls in {elapsed:.2f}s)"
        )
    assert not errors, errors[:3]
    assert not outages, [r.getMessage() for r in outages]
    assert BURST <= granted[0] <= bound(elapsed)


@pytest.mark.parametrize("mode", MODES)
async def test_500_tasks_share_a_small_pool_without_outage_or_over_granting(
    dsn: str, mode: str, outages: list[logging.LogRecord], capsys: pytest.CaptureFixture[str]
) -> None:
    store = _store(dsn)
    limiter = rs.RateLimiter(
        fresh(), rate=RATE, per=1.0, burst=BURST, store=store, on_store_failure=mode
    )
    granted = calls = 0
    errors: list[BaseException] = []
    began = time.monotonic()
    stop = began + RUN

    async def caller() -> None:
        nonlocal granted, calls
        while time.monotonic() < stop:
            calls += 1
            try:
                await limiter.aacquire(timeout=0)
            except rs.RateLimitExceeded:
                continue
            except BaseException as error:  # reported below
                errors.append(error)
                return
            granted += 1

    await asyncio.gather(*(caller() for _ in range(500)))
    elapsed = time.monotonic() - began
    await store.aclose()
    with capsys.disabled():
        print(
            f"\n[pool] async {mode:11} 500 tasks, pool {POOL}: granted {granted} "
            f"<= bound {bound(elapsed):.1f} ({calls} calls in {elapsed:.2f}s)"
        )
    assert not errors, errors[:3]
    assert not outages, [r.getMessage() for r in outages]
    assert BURST <= granted <= bound(elapsed)


def test_a_slow_call_holds_one_connection_not_the_whole_process(dsn: str) -> None:
    """A call waiting on a row lock must not make every other thread wait behind it."""
    store = PostgresStore(dsn, table="resilience_test", timeout=1.0, pool_size=POOL)
    spec = BucketSpec.of(rate=1, per=3600.0, burst=100)
    slow, quick = [BucketRequest(fresh(), None, 1, spec)], [BucketRequest(fresh(), None, 1, spec)]
    assert store.bucket_take(slow).granted  # the row exists
    outcome: list[object] = []
    try:
        with psycopg.connect(dsn) as blocker:  # holds the slow bucket's row
            blocker.execute(
                "SELECT 1 FROM resilience_test_buckets WHERE name = %s FOR UPDATE",
                (slow[0].name,),
            )
            thread = threading.Thread(target=lambda: outcome.append(store.bucket_take(slow)))
            thread.start()
            _until_waiting_on_a_lock(dsn)
            began = time.monotonic()
            for _ in range(5):  # other buckets, other threads' connections: at once
                assert store.bucket_take(quick).granted
            assert time.monotonic() - began < 0.5
            blocker.rollback()
        thread.join()
        assert len(outcome) == 1 and getattr(outcome[0], "granted", False)
    finally:
        store.close()


def _until_waiting_on_a_lock(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as watcher:
        give_up = time.monotonic() + 5.0
        while time.monotonic() < give_up:
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'resilience' "
                "AND wait_event_type = 'Lock'"
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            time.sleep(0.01)
    raise AssertionError("the slow call never reached the row lock")


def test_the_pool_grows_on_demand_up_to_pool_size(dsn: str) -> None:
    store = PostgresStore(dsn, table="resilience_test", pool_size=3)
    try:
        assert store.backend_pids() == []  # nothing opened before the first call
        store.breaker_load(fresh(), 0.0)
        assert len(store.backend_pids()) == 1  # sequential calls: one connection
        barrier = threading.Barrier(8)

        def call() -> None:
            barrier.wait()
            for _ in range(20):
                store.breaker_load(fresh(), 0.0)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert 1 <= len(store.backend_pids()) <= 3
    finally:
        store.close()
    assert store.backend_pids() == []


@pytest.mark.parametrize("size", [0, -1, 1.5, True, "4", None, 10**6])
def test_pool_size_is_validated(size: object) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        PostgresStore("postgresql://app@db.invalid/app", pool_size=size)  # type: ignore[arg-type]
    assert caught.value.fields == ("pool_size",)

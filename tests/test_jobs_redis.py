"""RedisStore's job queues on the real test Redis: what the conformance suite cannot see.

Concurrent claims, batches in the thousands, exact times and priorities in claim
order, keys shared by a queue's slot, outages, lost scripts, a clock that goes
back. Every test has a key prefix of its own, removed afterwards.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

import resilience as rs
from resilience._core.jobs import MAX_PRIORITY
from resilience.storage.jobs import NewJob
from resilience.storage.redis import RedisStore
from resilience.storage.redis import jobs as redis_jobs
from resilience.testing import FakeClock

from .backends import STORE_TIMEOUT, require_redis
from .test_store_redis_cluster import cluster_url  # noqa: F401 (a fixture)
from .test_store_redis_faults import free_port

FAR = 1_700_000_000.25
ODD = ["a b", "{brace}", "}{", "x:y:z", "é漢字 \U0001f600", "", "q{tag}:1", "\\ 'q' \"x\""]


class SettableClock:
    """A job clock a test sets, backwards too (a stepped server clock)."""

    def __init__(self, now: float) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


def drop(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        names = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(names), 1000):
            client.delete(*names[start : start + 1000])
    finally:
        client.close()


@pytest.fixture
def url() -> str:
    return require_redis()


@pytest.fixture
def prefix(url: str) -> Iterator[str]:
    made = f"tj-{uuid.uuid4().hex[:12]}"
    yield made
    drop(url, made)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(FAR)


@pytest.fixture
def store(url: str, prefix: str, clock: FakeClock) -> Iterator[RedisStore]:
    made = RedisStore(url, prefix=prefix, job_clock=clock, timeout=STORE_TIMEOUT)
    yield made
    made.close()


def new(**options: Any) -> NewJob:
    return NewJob(handler="h", payload="{}", **options)


def keys_of(url: str, prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return sorted(client.scan_iter(match=f"{prefix}:*", count=1000))
    finally:
        client.close()


def test_concurrent_claims_never_share_a_job(url: str, prefix: str) -> None:
    # Several stores (several pools, as in several processes), on the server's clock.
    stores = [RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT) for _ in range(6)]
    total = 3000
    stores[0].job_enqueue("q", [new() for _ in range(total)])
    taken: list[list[int]] = [[] for _ in stores]
    start = threading.Barrier(len(stores))

    def work(index: int) -> None:
        start.wait()
        while claimed := stores[index].job_claim("q", f"w{index}", 25, 60.0):
            taken[index] += [job.id for job in claimed]
            assert all(job.lease_owner == f"w{index}" for job in claimed)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [job_id for ids in taken for job_id in ids]
    assert len(every) == len(set(every)) == total
    assert sum(1 for ids in taken if ids) > 1  # they did compete
    assert stores[0].job_stats("q").running == total
    for made in stores:
        made.close()


def test_claim_500_of_10000_in_claim_order(store: RedisStore, clock: FakeClock) -> None:
    # Priorities and due times mixed so that claim order is neither id nor time order.
    jobs = [
        new(priority=1 + (index * 7) % 5, delay=(index * 13) % 11 * 0.5) for index in range(10_000)
    ]
    answers = store.job_enqueue("q", jobs)
    assert [job_id for job_id, _ in answers] == sorted(job_id for job_id, _ in answers)
    clock.advance(10.0)
    claimed = store.job_claim("q", "w", 500, 30.0)
    assert len(claimed) == 500
    order = [(job.priority, job.next_attempt_at, job.id) for job in claimed]
    assert order == sorted(order)
    assert {job.priority for job in claimed} == {1}
    every_first = sorted(
        (new_job.priority, FAR + new_job.delay, job_id)
        for new_job, (job_id, _) in zip(jobs, answers, strict=True)
    )[:500]
    assert order == every_first
    stats = store.job_stats("q")
    assert (stats.pending, stats.running, stats.due) == (9500, 500, 9500)


def test_batch_enqueue_of_10000_with_keys(store: RedisStore) -> None:
    jobs = [new(key=f"order-{index}", batch="import") for index in range(10_000)]
    first = store.job_enqueue("q", jobs)
    assert all(created for _, created in first) and len({i for i, _ in first}) == 10_000
    again = store.job_enqueue("q", jobs)
    assert again == [(job_id, False) for job_id, _ in first]
    assert store.job_stats("q").pending == 10_000
    assert store.job_progress("q", "import").total == 10_000


def test_a_key_repeated_across_chunks_gives_the_first_id(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_jobs, "ENQUEUE_CHUNK", 3)
    answers = store.job_enqueue("q", [new(key=str(index % 4)) for index in range(10)])
    ids = [job_id for job_id, _ in answers]
    assert [created for _, created in answers] == [True] * 4 + [False] * 6
    assert ids == ids[:4] * 2 + ids[:2]
    assert ids[:4] == sorted(ids[:4])


def test_exact_times_and_priorities_keep_claim_order(store: RedisStore, clock: FakeClock) -> None:
    top = MAX_PRIORITY
    # Enqueued latest-due first, so that ids go against due times.
    late = store.job_enqueue("q", [new(priority=top, delay=2e-6)])[0][0]
    middle = store.job_enqueue("q", [new(priority=top, delay=1e-6)])[0][0]
    early = store.job_enqueue("q", [new(priority=top)])[0][0]
    urgent_late = store.job_enqueue("q", [new(priority=top - 1, delay=2e-6)])[0][0]
    same_time = store.job_enqueue("q", [new(priority=top)])[0][0]
    first = store.job_enqueue("q", [new(priority=1, delay=2e-6)])[0][0]
    assert store.job_get("q", middle).next_attempt_at == FAR + 1e-6  # type: ignore[union-attr]
    assert FAR + 1e-6 != FAR and FAR + 2e-6 != FAR + 1e-6
    clock.advance(1.0)
    claimed = store.job_claim("q", "w", 10, 30.0)
    assert [job.id for job in claimed] == [first, urgent_late, early, same_time, middle, late]
    assert claimed[0].lease_until == FAR + 1.0 + 30.0


def test_times_round_trip_exactly(store: RedisStore, clock: FakeClock) -> None:
    clock.advance(0.1 + 0.2)  # an inexact sum: every bit must survive
    delay = 1 / 3
    [(job_id, _)] = store.job_enqueue("q", [new(delay=delay)])
    job = store.job_get("q", job_id)
    assert job is not None
    assert job.created_at == FAR + (0.1 + 0.2)
    assert job.next_attempt_at == clock.now() + delay


def test_the_server_clock_dates_jobs_without_a_job_clock(url: str, prefix: str) -> None:
    made = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT)
    client = redis.Redis.from_url(url)
    try:
        seconds, micros = client.time()
        before = seconds + micros / 1e6
        [(job_id, _)] = made.job_enqueue("q", [new(delay=0.5)])
        seconds, micros = client.time()
        after = seconds + micros / 1e6
        job = made.job_get("q", job_id)
        assert job is not None and before - 0.001 <= job.created_at <= after + 0.001
        assert job.next_attempt_at == job.created_at + 0.5
        assert made.job_claim("q", "w", 1, 30.0) == []  # not due for half a second
    finally:
        client.close()
        made.close()


def test_an_unreachable_server_is_store_unavailable_without_the_password() -> None:
    port = free_port()
    made = RedisStore(f"redis://user:s3cret-pw@127.0.0.1:{port}/0", timeout=0.2)
    with pytest.raises(rs.StoreUnavailable) as caught:
        made.job_enqueue("q", [new()])
    assert "s3cret-pw" not in str(caught.value) and "s3cret-pw" not in repr(caught.value)
    with pytest.raises(rs.StoreUnavailable):
        made.job_claim("q", "w", 1, 30.0)

    async def main() -> None:
        with pytest.raises(rs.StoreUnavailable) as failed:
            await made.ajob_stats("q")
        assert "s3cret-pw" not in str(failed.value)

    asyncio.run(main())
    made.close()


def test_scripts_flushed_from_the_server_are_loaded_again(
    store: RedisStore, url: str, clock: FakeClock
) -> None:
    [(job_id, _)] = store.job_enqueue("q", [new()])
    client = redis.Redis.from_url(url)
    try:
        client.script_flush()
    finally:
        client.close()
    [job] = store.job_claim("q", "w", 1, 30.0)
    assert job.id == job_id
    assert store.job_complete("q", job_id, "w")


def test_odd_names_keep_a_queue_in_one_slot(store: RedisStore, url: str, prefix: str) -> None:
    for queue in ODD:
        [(job_id, _)] = store.job_enqueue(queue, [new(key=f"k {queue}", batch=f"b {queue}")])
        assert store.job_enqueue(queue, [new(key=f"k {queue}")]) == [(job_id, False)]
        [job] = store.job_claim(queue, "w", 5, 30.0)
        assert (job.id, job.queue, job.key, job.batch) == (
            job_id,
            queue,
            f"k {queue}",
            f"b {queue}",
        )
        assert store.job_complete(queue, job_id, "w")
        assert store.job_progress(queue, f"b {queue}").done == 1
    assert store.job_queues() == sorted(ODD)
    bases = {queue: store._keys.job_base(queue) for queue in ODD}
    assert len(set(bases.values())) == len(ODD)
    for queue, base in bases.items():
        slot = key_slot(base)
        mine = [name for name in keys_of(url, prefix) if name.startswith(base + b":")]
        assert len(mine) >= 6, queue  # the job, its indexes, its key and batch
        assert {key_slot(name) for name in mine} == {slot}, queue


def test_purge_frees_every_key_of_the_queue(
    store: RedisStore, url: str, prefix: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_jobs, "SWEEP_CHUNK", 4)
    answers = store.job_enqueue("q", [new(key=str(i), batch="b") for i in range(10)])
    ids = [job_id for job_id, _ in answers]
    store.job_claim("q", "w", 10, 30.0)
    for job_id in ids:
        store.job_fail(
            "q", job_id, "w", retry=False, delay=None, error_class=None, reason=None, error="x"
        )
    assert store.job_replay_all("q") == 10  # in chunks of 4
    store.job_claim("q", "w", 10, 30.0)
    for job_id in ids[:5]:
        assert store.job_complete("q", job_id, "w")
    for job_id in ids[5:]:
        store.job_fail(
            "q", job_id, "w", retry=False, delay=None, error_class=None, reason="gone", error="x"
        )
    clock.advance(10.0)
    assert store.job_purge("q", 5.0) == 10
    assert store.job_queues() == []
    assert store.job_stats("q").total == 0
    assert store.job_progress("q", "b").total == 0
    assert keys_of(url, prefix) == [f"{prefix}:jobs:ids".encode()]


def test_a_clock_that_goes_back_loses_no_job(url: str, prefix: str) -> None:
    clock = SettableClock(FAR)
    made = RedisStore(url, prefix=prefix, job_clock=clock, timeout=STORE_TIMEOUT)
    try:
        store_claim = made.job_claim  # every claim below: which jobs it took
        [(early, _)] = made.job_enqueue("q", [new()])
        assert [job.id for job in store_claim("q", "w", 5, 30.0)] == [early]
        clock.t = FAR - 100.0  # stepped back, past the claim's watermark
        [(now_due, _), (later, _)] = made.job_enqueue("q", [new(), new(delay=50.0)])
        [taken] = store_claim("q", "w", 5, 10.0)
        assert taken.id == now_due  # `later` is not due yet, `early` still leased
        clock.t = FAR - 89.0  # `now_due`'s lease (to FAR - 90) lapsed
        assert [job.id for job in store_claim("q", "w2", 5, 10.0)] == [now_due]
        clock.t = FAR - 50.0
        assert {job.id for job in store_claim("q", "w3", 5, 100.0)} == {later, now_due}
        clock.t = FAR + 31.0
        assert {job.id for job in store_claim("q", "w4", 5, 100.0)} == {early}
    finally:
        made.close()


def test_a_job_clock_needs_now(url: str) -> None:
    with pytest.raises(rs.ConfigurationError, match="job_clock"):
        RedisStore(url, job_clock=object())  # type: ignore[arg-type]


def test_the_store_is_no_transactional_store(store: RedisStore) -> None:
    from resilience.storage.jobs import JobStore, TransactionalJobStore

    assert isinstance(store, JobStore)
    assert not isinstance(store, TransactionalJobStore)
    assert not hasattr(store, "job_transactional")


def test_the_async_client_shares_the_queue(store: RedisStore, clock: FakeClock) -> None:
    async def main() -> None:
        answers = await store.ajob_enqueue("q", [new(priority=2), new(priority=1)])
        claimed = await store.ajob_claim("q", "w", 5, 30.0)
        assert [job.id for job in claimed] == [answers[1][0], answers[0][0]]
        assert await store.ajob_heartbeat("q", "w", [answers[0][0]], 60.0) == [answers[0][0]]
        await store.aclose()

    asyncio.run(main())
    assert store.job_stats("q").running == 2


def test_queues_on_a_cluster(cluster_url: str) -> None:  # noqa: F811 (the fixture)
    clock = FakeClock(FAR)
    made = RedisStore.from_url(cluster_url, prefix=f"tj-{uuid.uuid4().hex[:12]}", job_clock=clock)
    try:
        queues = [f"queue-{index}" for index in range(6)] + ["{odd}"]  # on several nodes
        ids = []
        for queue in queues:
            [(job_id, created)] = made.job_enqueue(queue, [new(key="k", batch="b")])
            assert created and made.job_enqueue(queue, [new(key="k")]) == [(job_id, False)]
            ids.append(job_id)
        assert ids == sorted(ids)  # one counter for every queue
        assert made.job_queues() == sorted(queues)
        for queue, job_id in zip(queues, ids, strict=True):
            [job] = made.job_claim(queue, "w", 5, 30.0)
            assert job.id == job_id and made.job_complete(queue, job_id, "w")
            assert made.job_progress(queue, "b").done == 1
        clock.advance(1.0)
        assert [made.job_purge(queue, 0.5) for queue in queues[:3]] == [1, 1, 1]
        assert made.job_queues() == sorted(queues[3:])  # empty queues left out

        async def main() -> None:
            [(job_id, _)] = await made.ajob_enqueue("async", [new()])
            [job] = await made.ajob_claim("async", "w", 5, 30.0)
            assert job.id == job_id > ids[-1] and await made.ajob_complete("async", job_id, "w")
            assert "async" in await made.ajob_queues()
            await made.aclose()

        asyncio.run(main())
    finally:
        made.close()

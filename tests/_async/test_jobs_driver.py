"""The job queue's drivers: enqueue, run, settle, gates, leases, telemetry.

Written once, async; scripts/unasync.py generates the sync twin in tests/_sync.
Every test runs on a fake clock far from zero (the store's clock), on the memory
store and on SQLite, so a 24-hour schedule passes in milliseconds; the fleet
stores run the same rules through the conformance suite.
"""

from __future__ import annotations

import asyncio  # unasync: async only
import threading
from pathlib import Path
from typing import Any

import pytest

import resilience as rs
from resilience.classify import Classification, ErrorClass
from resilience.jobs import JobQueue, current
from resilience.storage import MemoryStore
from resilience.testing import FakeClock

T0 = 1_700_000_000.25


class Throttled(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"slow down for {retry_after}s")
        self.retry_after = retry_after


def throttled(error: BaseException) -> Classification | None:
    if isinstance(error, Throttled):
        return Classification(ErrorClass.RATE_LIMITED, error.retry_after)
    if isinstance(error, LookupError):
        return Classification(ErrorClass.PERMANENT)
    return None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> Any:
    if request.param == "memory":
        return MemoryStore(clock)
    from resilience.storage.sqlite import SQLiteStore

    return SQLiteStore(tmp_path / "jobs.db", clock=clock)


def queue_on(store: Any, **options: Any) -> JobQueue:
    backoff = rs.Backoff.exponential(1.0, 3600.0)  # a cap of an hour: Retry-After honoured up to it
    options.setdefault("retry", rs.Retry(attempts=3, backoff=backoff, classifier=throttled))
    return JobQueue("q", store=store, **options)


async def test_a_job_runs_once_and_is_done(store: Any) -> None:
    queue = queue_on(store)
    seen: list[dict[str, Any]] = []

    @queue.handler
    async def send(to: str, subject: str) -> None:
        seen.append({"to": to, "subject": subject, "attempt": current().attempt})

    job_id = await queue.aenqueue(send, to="a@example.com", subject="hi")
    counts = await queue.arun_once(limit=10)
    assert (counts.claimed, counts.done) == (1, 1)
    assert seen == [{"to": "a@example.com", "subject": "hi", "attempt": 1}]
    job = await queue.ajob(job_id)
    assert job is not None and job.state == "done" and job.attempts == 1
    assert (await queue.arun_once()).claimed == 0


async def test_sync_handlers_run_too(store: Any) -> None:
    queue = queue_on(store)
    threads: list[str] = []

    @queue.handler(name="plain")
    def plain(n: int) -> None:
        assert current().job.handler == "plain"
        threads.append(threading.current_thread().name)

    await queue.aenqueue(plain, n=1)
    await queue.aenqueue("plain", n=2)  # by name too
    assert (await queue.arun_once()).done == 2
    assert len(threads) == 2


async def test_the_schedule_is_stored_never_slept(store: Any, clock: FakeClock) -> None:
    schedule = rs.Backoff.schedule([1, 5, 30, 300, 1800])
    queue = queue_on(store, retry=rs.Retry(attempts=6, backoff=schedule))
    attempts: list[float] = []

    @queue.handler
    async def flaky() -> None:
        attempts.append(clock.now() - T0)
        raise ConnectionError("smtp down")

    job_id = await queue.aenqueue(flaky)
    for step in [0, 1, 5, 30, 300, 1800]:
        clock.advance(step)
        counts = await queue.arun_once()
        assert counts.claimed == 1
        clock.advance(0.0)
        assert (await queue.arun_once()).claimed == 0  # not due again until the next step
    assert attempts == [0, 1, 6, 36, 336, 2136]
    job = await queue.ajob(job_id)
    assert job is not None
    assert (job.state, job.reason, job.attempts) == ("dead", "attempts", 6)
    assert job.last_error == "ConnectionError: smtp down"
    assert job.last_error_class == "network"
    assert [dead.id for dead in await queue.adead_letters()] == [job_id]


async def test_a_permanent_error_is_dead_at_once(store: Any) -> None:
    queue = queue_on(store)

    @queue.handler
    async def lookup() -> None:
        raise LookupError("no such account")

    job_id = await queue.aenqueue(lookup)
    counts = await queue.arun_once()
    assert (counts.dead, counts.retried) == (1, 0)
    job = await queue.ajob(job_id)
    assert job is not None and (job.state, job.reason) == ("dead", "not_retryable")
    assert job.last_error_class == "permanent"


async def test_rate_limited_waits_its_retry_after(store: Any, clock: FakeClock) -> None:
    queue = queue_on(store)

    @queue.handler
    async def call_api() -> None:
        if current().attempt == 1:
            raise Throttled(120.0)

    job_id = await queue.aenqueue(call_api)
    assert (await queue.arun_once()).retried == 1
    job = await queue.ajob(job_id)
    assert job is not None and job.next_attempt_at == T0 + 120.0
    clock.advance(119.75)
    assert (await queue.arun_once()).claimed == 0
    clock.advance(0.25)
    assert (await queue.arun_once()).done == 1


async def test_per_job_attempts(store: Any) -> None:
    queue = queue_on(store)

    @queue.handler
    async def fails() -> None:
        raise ConnectionError("down")

    job_id = await queue.aenqueue(fails, attempts=1)
    assert (await queue.arun_once()).dead == 1
    job = await queue.ajob(job_id)
    assert job is not None and job.max_attempts == 1 and job.reason == "attempts"


async def test_an_idempotency_key_gives_the_first_job(store: Any) -> None:
    queue = queue_on(store)

    @queue.handler
    async def welcome(user: int) -> None:
        pass

    first = await queue.aenqueue(welcome, user=42, key="welcome-42")
    assert await queue.aenqueue(welcome, user=42, key="welcome-42") == first
    await queue.arun_once()
    assert await queue.aenqueue(welcome, user=42, key="welcome-42") == first
    assert (await queue.astats()).done == 1


async def test_priorities_then_due_time(store: Any, clock: FakeClock) -> None:
    queue = queue_on(store)
    order: list[str] = []

    @queue.handler
    async def work(label: str) -> None:
        order.append(label)

    await queue.aenqueue(work, label="low", priority=5)
    await queue.aenqueue(work, label="urgent", priority=1)
    await queue.aenqueue(work, label="later", priority=1, delay=10.0)
    await queue.aenqueue(work, label="middle", priority=2)
    await queue.arun_once()
    assert order == ["urgent", "middle", "low"]
    clock.advance(10.0)
    await queue.arun_once()
    assert order[-1] == "later"


async def test_a_refusing_gate_defers_without_using_an_attempt(
    store: Any, clock: FakeClock
) -> None:
    limiter = rs.RateLimiter("mail", rate=1, per=60.0, store=MemoryStore(clock), clock=clock)
    queue = queue_on(store, gate=limiter)
    sent: list[float] = []

    @queue.handler
    async def send(n: int) -> None:
        sent.append(clock.now() - T0)

    for n in range(3):
        await queue.aenqueue(send, n=n, attempts=1)  # one attempt each: a deferral must not use it
    counts = await queue.arun_once()
    assert (counts.done, counts.deferred) == (1, 2)
    stats = await queue.astats()
    assert stats.pending == 2
    for job in await queue.ajobs("pending"):
        assert job.attempts == 0 and job.next_attempt_at == pytest.approx(T0 + 60.0)
    for _ in range(4):
        clock.advance(60.0)
        await queue.arun_once()
    assert sent == [0.0, 60.0, 120.0]
    assert (await queue.astats()).done == 3


async def test_a_gate_function_limits_per_key(store: Any, clock: FakeClock) -> None:
    limits = MemoryStore(clock)
    per_recipient = rs.RateLimiter("per-recipient", rate=2, per=60.0, store=limits, clock=clock)
    queue = queue_on(store, gate=lambda job: per_recipient.limit(job.kwargs["to"]))
    sent: list[str] = []

    @queue.handler
    async def send(to: str) -> None:
        sent.append(to)

    for to in ["a", "a", "a", "b"]:
        await queue.aenqueue(send, to=to)
    counts = await queue.arun_once()
    assert (counts.done, counts.deferred) == (3, 1)
    assert sorted(sent) == ["a", "a", "b"]


async def test_an_open_circuit_defers_jobs(store: Any, clock: FakeClock) -> None:
    breaker = rs.CircuitBreaker("smtp", failure_threshold=2, break_duration=30.0, clock=clock)
    queue = queue_on(store, gate=breaker, retry=rs.Retry(attempts=10))
    calls: list[int] = []

    @queue.handler
    async def send(n: int) -> None:
        calls.append(n)
        raise ConnectionError("smtp down")

    for n in range(5):
        await queue.aenqueue(send, n=n)
    counts = await queue.arun_once()
    assert (counts.retried, counts.deferred) == (2, 3)  # two failures opened it
    assert len(calls) == 2
    deferred = [job for job in await queue.ajobs("pending") if job.attempts == 0]
    assert len(deferred) == 3
    assert all(job.next_attempt_at == pytest.approx(T0 + 30.0) for job in deferred)


async def test_a_handler_timeout_is_a_failure(store: Any) -> None:
    queue = queue_on(store)

    @queue.handler(timeout=0.05)
    async def slow() -> None:
        # Async: cancelled at the deadline. Sync (cooperative): fails once it returns late.
        await asyncio.sleep(0.2)  # unasync: async only
        # unasync: sync threading.Event().wait(0.2)

    job_id = await queue.aenqueue(slow)
    assert (await queue.arun_once()).retried == 1
    job = await queue.ajob(job_id)
    assert job is not None and job.last_error_class == "timeout"


async def test_an_unknown_handler_dead_letters(store: Any) -> None:
    producer = queue_on(store)

    @producer.handler(name="renamed")
    async def old() -> None:
        pass

    job_id = await producer.aenqueue(old)
    worker = queue_on(store)  # a worker without that handler
    assert (await worker.arun_once()).dead == 1
    job = await worker.ajob(job_id)
    assert job is not None and "no handler named 'renamed'" in (job.last_error or "")


async def test_a_lost_lease_is_not_settled_twice(store: Any, clock: FakeClock) -> None:
    queue = queue_on(store, lease=10.0)
    rival_claims: list[int] = []

    @queue.handler
    async def slow() -> None:
        clock.advance(10.0)  # the lease lapses while it runs, and another worker takes it
        taken = await queue.store.ajob_claim("q", "rival", 1, 10.0)
        rival_claims.extend(job.id for job in taken)

    job_id = await queue.aenqueue(slow)
    counts = await queue.arun_once()
    assert (counts.done, counts.lost) == (0, 1)
    assert rival_claims == [job_id]
    job = await queue.ajob(job_id)
    assert job is not None and (job.state, job.lease_owner, job.attempts) == ("running", "rival", 2)


async def test_payloads_are_json_only_and_checked_against_the_handler(store: Any) -> None:
    queue = queue_on(store)

    @queue.handler
    async def send(to: str, tags: list[str] | None = None) -> None:
        pass

    with pytest.raises(TypeError, match="argument 'to' cannot be stored as JSON"):
        await queue.aenqueue(send, to=object())
    with pytest.raises(TypeError, match=r"argument 'tags'.*tuple"):
        await queue.aenqueue(send, to="a", tags=("x",))
    with pytest.raises(TypeError, match=r"argument 'to'.*nan"):
        await queue.aenqueue(send, to=float("nan"))
    with pytest.raises(TypeError, match="unexpected keyword argument 'too'"):
        await queue.aenqueue(send, to="a", too="b")
    with pytest.raises(ValueError, match="not a registered handler"):
        await queue.aenqueue(print, to="a")
    with pytest.raises(ValueError, match="priority"):
        await queue.aenqueue(send, to="a", priority=0)
    with pytest.raises(ValueError, match="delay"):
        await queue.aenqueue(send, to="a", delay=-1.0)
    assert (await queue.astats()).total == 0


async def test_a_batch_and_its_progress(store: Any) -> None:
    queue = queue_on(store)

    @queue.handler
    async def pay(entry: int) -> None:
        if entry == 3:
            raise LookupError("closed account")

    items = [{"entry": n} for n in range(10)]
    batch = await queue.aenqueue_batch(pay, items, key=lambda item: f"pay-{item['entry']}")
    assert len(batch.ids) == 10
    again = await queue.aenqueue_batch(pay, items, key=lambda item: f"pay-{item['entry']}")
    assert again.ids == batch.ids  # re-enqueued after a crash: nothing added
    assert (batch.created, again.created) == (10, 0)
    progress = await queue.batch(batch.name).aprogress()
    assert (progress.total, progress.pending, progress.percent) == (10, 10, 0.0)
    await queue.arun_once(limit=4)
    progress = await batch.aprogress()
    assert (progress.done + progress.dead, progress.percent) == (4, 40.0)
    await queue.arun_once(limit=100)
    progress = await batch.aprogress()
    assert (progress.done, progress.dead, progress.percent) == (9, 1, 100.0)


async def test_replay_and_purge(store: Any, clock: FakeClock) -> None:
    queue = queue_on(store, retention=3600.0)
    fixed = False

    @queue.handler
    async def fragile() -> None:
        if not fixed:
            raise LookupError("bug")

    job_id = await queue.aenqueue(fragile)
    await queue.arun_once()
    fixed = True
    assert await queue.areplay(job_id)
    assert not await queue.areplay(job_id)
    assert (await queue.arun_once()).done == 1
    await queue.aenqueue(fragile)
    await queue.arun_once()
    assert (await queue.astats()).done == 2
    clock.advance(3600.25)
    await queue.arun_once()  # each pass purges what retention allows
    assert (await queue.astats()).total == 0
    assert await queue.apurge() == 0
    assert await queue.areplay_all() == 0


async def test_work_until_empty_with_concurrency(store: Any) -> None:
    queue = queue_on(store)
    running = 0
    most = 0
    lock = threading.Lock()

    @queue.handler
    def task(n: int) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        threading.Event().wait(0.01)
        with lock:
            running -= 1

    for n in range(20):
        await queue.aenqueue(task, n=n)
    counts = await queue.awork(concurrency=5, until_empty=True)
    assert counts.done == 20
    assert 1 < most <= 5


async def test_a_handlers_own_concurrency_bounds_it(store: Any) -> None:
    queue = queue_on(store)
    running = 0
    most = 0
    lock = threading.Lock()

    @queue.handler(concurrency=2)
    def task(n: int) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        threading.Event().wait(0.01)
        with lock:
            running -= 1

    for n in range(12):
        await queue.aenqueue(task, n=n)
    assert (await queue.awork(concurrency=6, until_empty=True)).done == 12
    assert most == 2


async def test_work_stops_when_told(store: Any) -> None:
    queue = queue_on(store, poll_interval=0.01)
    stop = threading.Event()

    @queue.handler
    async def last() -> None:
        stop.set()

    await queue.aenqueue(last)
    counts = await queue.awork(concurrency=2, stop=stop)
    assert counts.done == 1


async def test_complete_needs_a_transactional_store(clock: FakeClock) -> None:
    queue = queue_on(MemoryStore(clock))
    errors: list[str] = []

    @queue.handler
    async def handler() -> None:
        try:
            current().complete(connection=object())
        except TypeError as error:
            errors.append(str(error))

    await queue.aenqueue(handler)
    await queue.arun_once()
    assert "cannot join your transaction" in errors[0]
    with pytest.raises(LookupError):
        current()


async def test_bad_options_name_the_field(clock: FakeClock) -> None:
    with pytest.raises(rs.ConfigurationError, match="lease"):
        JobQueue("q", store=MemoryStore(clock), lease=0)
    with pytest.raises(rs.ConfigurationError, match="store"):
        JobQueue("q", store=object())
    with pytest.raises(rs.ConfigurationError, match="gate"):
        JobQueue("q", store=MemoryStore(clock), gate=42)
    with pytest.raises(rs.ConfigurationError, match=r"on_store_failure.*only fails closed"):
        JobQueue("q", store=MemoryStore(clock), on_store_failure="local")
    queue = queue_on(MemoryStore(clock))
    with pytest.raises(ValueError, match="limit"):
        await queue.arun_once(limit=0)
    with pytest.raises(ValueError, match="concurrency"):
        await queue.awork(concurrency=0)

"""Every job store through one suite: the same calls, the same answers as the pure core.

Each test runs on the memory, SQLite, PostgreSQL and Redis stores (the last two
against the real servers), on a fake clock far from zero, so leases lapse and
delays pass without sleeping. The state machine at the end drives random
sequences of calls and compares every job and the stats with
:mod:`resilience._core.jobs` applied to a model state after every step.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from resilience._core import jobs as core
from resilience._core.jobs import Job, QueueState
from resilience.storage.jobs import LeaseLost, NewJob
from resilience.testing import FakeClock

from .jobs_stores import FACTORIES

FAR = 1_700_000_000.25

STORES = pytest.mark.parametrize("store_name", sorted(FACTORIES))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(FAR)


@pytest.fixture(params=sorted(FACTORIES))
def store(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> Iterator[Any]:
    built, cleanup = FACTORIES[request.param](clock, tmp_path)
    try:
        yield built
    finally:
        cleanup()


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def new(handler: str = "h", **options: Any) -> NewJob:
    return NewJob(handler=handler, payload=options.pop("payload", "{}"), **options)


def one(store: Any, queue: str, **options: Any) -> int:
    [(job_id, created)] = store.job_enqueue(queue, [new(**options)])
    assert created
    return int(job_id)


def fail(store: Any, queue: str, job_id: int, worker: str = "w", **decision: Any) -> bool:
    fields: dict[str, Any] = dict(
        retry=True, delay=5.0, error_class="transient", reason=None, error="boom"
    )
    fields.update(decision)
    return bool(store.job_fail(queue, job_id, worker, **fields))


# -- enqueue ---------------------------------------------------------------------------------


def test_enqueue_records_the_job(store: Any, queue: str, clock: FakeClock) -> None:
    job_id = one(
        store,
        queue,
        payload='{"to": "a@example.com"}',
        key="k1",
        priority=3,
        delay=2.5,
        max_attempts=4,
        batch="b",
        trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    job = store.job_get(queue, job_id)
    assert job == Job(
        id=job_id,
        queue=queue,
        handler="h",
        payload='{"to": "a@example.com"}',
        key="k1",
        priority=3,
        state="pending",
        attempts=0,
        max_attempts=4,
        next_attempt_at=FAR + 2.5,
        created_at=FAR,
        batch="b",
        trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    assert store.job_get(queue, job_id + 1000) is None
    assert store.job_get("other-" + queue, job_id) is None


def test_ids_grow_in_enqueue_order(store: Any, queue: str) -> None:
    answers = store.job_enqueue(queue, [new(), new(), new()])
    ids = [job_id for job_id, _ in answers]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert one(store, queue) > ids[-1]


def test_a_key_is_idempotent_even_after_the_job_is_done(store: Any, queue: str) -> None:
    first = one(store, queue, key="welcome-42")
    assert store.job_enqueue(queue, [new(key="welcome-42")]) == [(first, False)]
    [claimed] = store.job_claim(queue, "w", 10, 30.0)
    assert store.job_complete(queue, claimed.id, "w")
    assert store.job_enqueue(queue, [new(key="welcome-42")]) == [(first, False)]
    # the same key in another queue is another job
    [(other, created)] = store.job_enqueue("other-" + queue, [new(key="welcome-42")])
    assert created and other != first


def test_a_key_repeated_in_one_batch_gives_the_first_jobs_id(store: Any, queue: str) -> None:
    answers = store.job_enqueue(queue, [new(key="a"), new(key="b"), new(key="a")])
    (a, a_new), (b, b_new), (again, again_new) = answers
    assert a_new and b_new and not again_new and again == a and a != b
    assert store.job_stats(queue).pending == 2


def test_odd_text_round_trips(store: Any, queue: str) -> None:
    odd = "q u'o\"te {brace} : colon \\ back é漢字 \U0001f600 \x01"
    payload = '{"text": "' + ("x" * 100_000) + '"}'
    job_id = one(store, odd, key=odd, batch=odd, payload=payload, handler=odd)
    job = store.job_get(odd, job_id)
    assert (job.key, job.batch, job.handler, job.payload, job.queue) == (
        odd,
        odd,
        odd,
        payload,
        odd,
    )
    assert store.job_enqueue(odd, [new(key=odd)]) == [(job_id, False)]
    assert odd in store.job_queues()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"priority": 0}, "priority"),
        ({"priority": core.MAX_PRIORITY + 1}, "priority"),
        ({"delay": -1.0}, "delay"),
        ({"delay": math.nan}, "delay"),
        ({"delay": math.inf}, "delay"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_bad_values_are_refused_naming_the_field(
    store: Any, queue: str, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        store.job_enqueue(queue, [new(), new(**options)])
    assert store.job_stats(queue).total == 0  # all or nothing


# -- claiming --------------------------------------------------------------------------------


def test_claims_go_by_priority_then_due_time_then_id(
    store: Any, queue: str, clock: FakeClock
) -> None:
    late = one(store, queue, priority=2)
    urgent = one(store, queue, priority=1, delay=1.0)
    early = one(store, queue, priority=2)
    later = one(store, queue, priority=2, delay=0.5)
    not_due = one(store, queue, priority=1, delay=60.0)
    clock.advance(1.0)
    claimed = store.job_claim(queue, "w", 10, 30.0)
    assert [job.id for job in claimed] == [urgent, late, early, later]
    assert not_due not in {job.id for job in claimed}
    for job in claimed:
        assert job.state == "running" and job.attempts == 1
        assert job.lease_owner == "w" and job.lease_until == FAR + 1.0 + 30.0


def test_claim_takes_at_most_limit(store: Any, queue: str) -> None:
    store.job_enqueue(queue, [new() for _ in range(7)])
    assert len(store.job_claim(queue, "w", 3, 30.0)) == 3
    assert len(store.job_claim(queue, "w", 3, 30.0)) == 3
    assert len(store.job_claim(queue, "w", 3, 30.0)) == 1
    assert store.job_claim(queue, "w", 3, 30.0) == []


def test_a_live_lease_is_never_claimed_twice(store: Any, queue: str, clock: FakeClock) -> None:
    job_id = one(store, queue)
    assert [j.id for j in store.job_claim(queue, "a", 1, 10.0)] == [job_id]
    clock.advance(9.75)
    assert store.job_claim(queue, "b", 1, 10.0) == []
    clock.advance(0.25)  # now == lease_until: lapsed
    [again] = store.job_claim(queue, "b", 1, 10.0)
    assert again.id == job_id and again.attempts == 2 and again.lease_owner == "b"
    # the first worker lost it: none of its settling calls land
    assert not store.job_complete(queue, job_id, "a")
    assert not fail(store, queue, job_id, "a")
    assert not store.job_defer(queue, job_id, "a", 1.0)
    assert store.job_heartbeat(queue, "a", [job_id], 10.0) == []
    assert store.job_get(queue, job_id).lease_owner == "b"


def test_a_heartbeat_extends_the_lease(store: Any, queue: str, clock: FakeClock) -> None:
    first, second = one(store, queue), one(store, queue)
    store.job_claim(queue, "w", 2, 10.0)
    clock.advance(8.0)
    assert sorted(store.job_heartbeat(queue, "w", [first, second, 999_999_999], 10.0)) == [
        first,
        second,
    ]
    clock.advance(8.0)
    assert store.job_claim(queue, "other", 2, 10.0) == []
    assert store.job_get(queue, first).lease_until == FAR + 18.0


def test_a_lapsed_last_attempt_is_dead_lettered_not_rerun(
    store: Any, queue: str, clock: FakeClock
) -> None:
    job_id = one(store, queue, max_attempts=1)
    store.job_claim(queue, "w", 1, 5.0)
    clock.advance(5.0)
    assert store.job_claim(queue, "w2", 1, 5.0) == []
    job = store.job_get(queue, job_id)
    assert (job.state, job.reason, job.last_error, job.finished_at) == (
        "dead",
        "attempts",
        core.LAPSED,
        FAR + 5.0,
    )


# -- settling --------------------------------------------------------------------------------


def test_complete(store: Any, queue: str, clock: FakeClock) -> None:
    job_id = one(store, queue)
    store.job_claim(queue, "w", 1, 30.0)
    clock.advance(1.5)
    assert store.job_complete(queue, job_id, "w")
    job = store.job_get(queue, job_id)
    assert (job.state, job.finished_at, job.lease_owner, job.lease_until) == (
        "done",
        FAR + 1.5,
        None,
        None,
    )
    assert not store.job_complete(queue, job_id, "w")  # once


def test_a_retried_failure_is_due_after_its_delay(store: Any, queue: str, clock: FakeClock) -> None:
    job_id = one(store, queue, max_attempts=3)
    store.job_claim(queue, "w", 1, 30.0)
    assert fail(store, queue, job_id, delay=300.0, error="timeout", error_class="transient")
    job = store.job_get(queue, job_id)
    assert (job.state, job.attempts, job.next_attempt_at, job.last_error) == (
        "pending",
        1,
        FAR + 300.0,
        "timeout",
    )
    assert job.last_error_class == "transient"
    clock.advance(299.75)
    assert store.job_claim(queue, "w", 1, 30.0) == []
    clock.advance(0.25)
    [again] = store.job_claim(queue, "w", 1, 30.0)
    assert again.attempts == 2


def test_the_last_attempt_failing_dead_letters(store: Any, queue: str) -> None:
    job_id = one(store, queue, max_attempts=1)
    store.job_claim(queue, "w", 1, 30.0)
    assert fail(store, queue, job_id, retry=True)
    job = store.job_get(queue, job_id)
    assert (job.state, job.reason) == ("dead", "attempts")


def test_a_permanent_error_dead_letters_with_its_reason(store: Any, queue: str) -> None:
    job_id = one(store, queue)
    store.job_claim(queue, "w", 1, 30.0)
    assert fail(
        store,
        queue,
        job_id,
        retry=False,
        delay=None,
        reason="not_retryable",
        error_class="permanent",
    )
    job = store.job_get(queue, job_id)
    assert (job.state, job.reason, job.last_error_class) == ("dead", "not_retryable", "permanent")
    assert [j.id for j in store.job_list(queue, "dead")] == [job_id]


def test_defer_gives_the_attempt_back(store: Any, queue: str, clock: FakeClock) -> None:
    job_id = one(store, queue, max_attempts=1)
    store.job_claim(queue, "w", 1, 30.0)
    assert store.job_defer(queue, job_id, "w", 12.5)
    job = store.job_get(queue, job_id)
    assert (job.state, job.attempts, job.next_attempt_at) == ("pending", 0, FAR + 12.5)
    clock.advance(12.5)
    [again] = store.job_claim(queue, "w", 1, 30.0)
    assert again.attempts == 1  # still allowed: the deferral used none


# -- operator calls ----------------------------------------------------------------------------


def test_replay_and_replay_all(store: Any, queue: str, clock: FakeClock) -> None:
    ids = [one(store, queue, max_attempts=2) for _ in range(3)]
    store.job_claim(queue, "w", 3, 30.0)
    for job_id in ids:
        fail(store, queue, job_id, retry=False, delay=None, reason="not_retryable")
    clock.advance(1.0)
    assert store.job_replay(queue, ids[0])
    assert not store.job_replay(queue, ids[0])  # not dead any more
    replayed = store.job_get(queue, ids[0])
    assert (replayed.state, replayed.attempts, replayed.next_attempt_at) == (
        "pending",
        0,
        FAR + 1.0,
    )
    assert (replayed.last_error, replayed.reason, replayed.finished_at) == ("boom", None, None)
    assert store.job_replay_all(queue) == 2
    assert store.job_stats(queue).pending == 3
    assert not store.job_replay(queue, 999_999_999)


def test_purge_removes_old_finished_jobs_and_frees_their_keys(
    store: Any, queue: str, clock: FakeClock
) -> None:
    old = one(store, queue, key="k")
    store.job_claim(queue, "w", 1, 30.0)
    store.job_complete(queue, old, "w")
    clock.advance(100.0)
    pending = one(store, queue)
    assert store.job_purge(queue, 100.0) == 0  # finished exactly 100 s ago: kept
    clock.advance(0.25)
    assert store.job_purge(queue, 100.0) == 1
    assert store.job_get(queue, old) is None and store.job_get(queue, pending) is not None
    [(fresh, created)] = store.job_enqueue(queue, [new(key="k")])
    assert created and fresh != old


def test_stats_and_lag(store: Any, queue: str, clock: FakeClock) -> None:
    a = one(store, queue)
    one(store, queue, delay=10.0)
    running = one(store, queue, priority=1)
    store.job_claim(queue, "w", 1, 30.0)
    clock.advance(4.0)
    stats = store.job_stats(queue)
    assert (stats.pending, stats.running, stats.done, stats.dead, stats.due) == (2, 1, 0, 0, 1)
    assert stats.lag == 4.0
    clock.advance(30.0)  # the running job's lease lapsed: due too
    stats = store.job_stats(queue)
    assert stats.due == 3 and stats.lag == 34.0
    assert store.job_get(queue, running).state == "running"
    assert store.job_stats("empty-" + queue) == core.QueueStats(0, 0, 0, 0, 0, 0.0)
    del a


def test_batch_progress(store: Any, queue: str) -> None:
    ids = [job_id for job_id, _ in store.job_enqueue(queue, [new(batch="p") for _ in range(4)])]
    one(store, queue, batch="other")
    claimed = store.job_claim(queue, "w", 2, 30.0)
    store.job_complete(queue, claimed[0].id, "w")
    fail(store, queue, claimed[1].id, retry=False, delay=None, reason="not_retryable")
    progress = store.job_progress(queue, "p")
    assert (progress.total, progress.done, progress.dead, progress.pending) == (4, 1, 1, 2)
    assert progress.percent == 50.0
    assert store.job_progress(queue, "none").percent == 100.0
    assert len(ids) == 4


def test_listing(store: Any, queue: str, clock: FakeClock) -> None:
    ids = [one(store, queue) for _ in range(4)]
    store.job_claim(queue, "w", 4, 30.0)
    fail(store, queue, ids[2], retry=False, delay=None, reason="not_retryable")
    clock.advance(1.0)
    fail(store, queue, ids[0], retry=False, delay=None, reason="not_retryable")
    assert [j.id for j in store.job_list(queue, "dead")] == [ids[2], ids[0]]
    assert [j.id for j in store.job_list(queue, "dead", 1)] == [ids[2]]
    assert [j.id for j in store.job_list(queue)] == ids
    assert [j.id for j in store.job_list(queue, "running")] == [ids[1], ids[3]]
    with pytest.raises(ValueError, match="state"):
        store.job_list(queue, "lost")
    with pytest.raises(ValueError, match="limit"):
        store.job_list(queue, None, 0)
    assert queue in store.job_queues()


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s, q: s.job_claim(q, "w", 0, 30.0), "limit"),
        (lambda s, q: s.job_claim(q, "w", 1, 0.0), "lease"),
        (lambda s, q: s.job_claim(q, "w", 1, math.nan), "lease"),
        (lambda s, q: s.job_defer(q, 1, "w", -1.0), "delay"),
        (lambda s, q: s.job_purge(q, math.inf), "older_than"),
    ],
)
def test_bad_call_arguments_are_refused(store: Any, queue: str, call: Any, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        call(store, queue)


def test_the_async_twins(store: Any, queue: str, clock: FakeClock) -> None:
    async def main() -> None:
        [(job_id, _)] = await store.ajob_enqueue(queue, [new(key="k", batch="b")])
        assert await store.ajob_enqueue(queue, [new(key="k")]) == [(job_id, False)]
        [job] = await store.ajob_claim(queue, "w", 5, 30.0)
        assert await store.ajob_heartbeat(queue, "w", [job_id], 30.0) == [job_id]
        assert await store.ajob_defer(queue, job_id, "w", 0.0)
        await store.ajob_claim(queue, "w", 5, 30.0)
        assert await store.ajob_fail(
            queue,
            job_id,
            "w",
            retry=True,
            delay=0.0,
            error_class="transient",
            reason=None,
            error="x",
        )
        await store.ajob_claim(queue, "w", 5, 30.0)
        assert await store.ajob_complete(queue, job_id, "w")
        assert (await store.ajob_get(queue, job_id)).state == "done"
        assert [j.id for j in await store.ajob_list(queue, "done")] == [job_id]
        assert (await store.ajob_stats(queue)).done == 1
        assert (await store.ajob_progress(queue, "b")).percent == 100.0
        assert queue in await store.ajob_queues()
        assert await store.ajob_replay(queue, job_id) is False
        assert await store.ajob_replay_all(queue) == 0
        clock.advance(10.0)
        assert await store.ajob_purge(queue, 1.0) == 1
        assert job.attempts == 1

    asyncio.run(main())


def test_connection_is_refused_where_there_are_no_transactions(store: Any, queue: str) -> None:
    if getattr(store, "job_transactional", False):
        pytest.skip("a transactional store takes the caller's connection")
    with pytest.raises(TypeError, match="connection"):
        store.job_enqueue(queue, [new()], connection=object())
    with pytest.raises(TypeError, match="connection"):
        store.job_complete(queue, 1, "w", connection=object())


def test_lease_lost_names_the_job() -> None:
    error = LeaseLost("emails", 7)
    assert error.job_id == 7 and "7" in str(error) and "emails" in str(error)


# -- the state machine -------------------------------------------------------------------------

TIMES = st.sampled_from([0.0, 0.25, 1.0, 2.5, 5.0])
WORKERS = st.sampled_from(["w1", "w2", "w3"])


class QueueAgainstTheCore(RuleBasedStateMachine):
    """Random calls on a store and on the core's model, compared after every step."""

    store: Any = None
    clock: FakeClock | None = None

    @initialize()
    def start(self) -> None:
        self.queue = f"sm-{uuid.uuid4().hex[:8]}"
        self.model = QueueState()
        self.ids: dict[int, int] = {}  # store id -> model id
        self.model_ids: dict[int, int] = {}

    @property
    def now(self) -> float:
        assert self.clock is not None
        return self.clock.now()

    @rule(
        key=st.none() | st.sampled_from(["a", "b"]),
        priority=st.integers(1, 3),
        delay=TIMES,
        max_attempts=st.none() | st.integers(1, 3),
        batch=st.none() | st.just("B"),
    )
    def enqueue(
        self,
        key: str | None,
        priority: int,
        delay: float,
        max_attempts: int | None,
        batch: str | None,
    ) -> None:
        [(store_id, created)] = self.store.job_enqueue(
            self.queue,
            [new(key=key, priority=priority, delay=delay, max_attempts=max_attempts, batch=batch)],
        )
        self.model, model_id, model_created = core.enqueue(
            self.model,
            queue=self.queue,
            handler="h",
            payload="{}",
            key=key,
            priority=priority,
            delay=delay,
            max_attempts=max_attempts,
            batch=batch,
            now=self.now,
        )
        assert created == model_created
        if created:
            self.ids[store_id] = model_id
            self.model_ids[model_id] = store_id
        else:
            assert self.ids[store_id] == model_id

    @rule(worker=WORKERS, limit=st.integers(1, 3), lease=st.sampled_from([1.0, 2.5]))
    def claim(self, worker: str, limit: int, lease: float) -> None:
        claimed = self.store.job_claim(self.queue, worker, limit, lease)
        self.model, expected = core.claim(
            self.model, queue=self.queue, worker=worker, now=self.now, limit=limit, lease=lease
        )
        assert [self.ids[job.id] for job in claimed] == [job.id for job in expected]

    def _some_job(self, data: st.DataObject) -> int | None:
        if not self.model_ids:
            return None
        return data.draw(st.sampled_from(sorted(self.model_ids)))

    @rule(data=st.data(), worker=WORKERS, lease=st.sampled_from([1.0, 2.5]))
    def heartbeat(self, data: st.DataObject, worker: str, lease: float) -> None:
        model_id = self._some_job(data)
        if model_id is None:
            return
        held = self.store.job_heartbeat(self.queue, worker, [self.model_ids[model_id]], lease)
        self.model, ok = core.heartbeat(self.model, model_id, worker, self.now, lease)
        assert bool(held) == ok

    @rule(data=st.data(), worker=WORKERS)
    def complete(self, data: st.DataObject, worker: str) -> None:
        model_id = self._some_job(data)
        if model_id is None:
            return
        ok = self.store.job_complete(self.queue, self.model_ids[model_id], worker)
        self.model, expected = core.complete(self.model, model_id, worker, self.now)
        assert ok == expected

    @rule(data=st.data(), worker=WORKERS, retry=st.booleans(), delay=TIMES)
    def fail(self, data: st.DataObject, worker: str, retry: bool, delay: float) -> None:
        model_id = self._some_job(data)
        if model_id is None:
            return
        decision: dict[str, Any] = dict(
            retry=retry,
            delay=delay if retry else None,
            error_class="transient" if retry else "permanent",
            reason=None if retry else "not_retryable",
            error="boom",
        )
        ok = self.store.job_fail(self.queue, self.model_ids[model_id], worker, **decision)
        self.model, expected = core.fail(self.model, model_id, worker, self.now, **decision)
        assert ok == expected

    @rule(data=st.data(), worker=WORKERS, delay=TIMES)
    def defer(self, data: st.DataObject, worker: str, delay: float) -> None:
        model_id = self._some_job(data)
        if model_id is None:
            return
        ok = self.store.job_defer(self.queue, self.model_ids[model_id], worker, delay)
        self.model, expected = core.defer(self.model, model_id, worker, self.now, self.now + delay)
        assert ok == expected

    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        model_id = self._some_job(data)
        if model_id is None:
            return
        ok = self.store.job_replay(self.queue, self.model_ids[model_id])
        self.model, expected = core.replay(self.model, model_id, self.now)
        assert ok == expected

    @rule(older_than=TIMES)
    def purge(self, older_than: float) -> None:
        removed = self.store.job_purge(self.queue, older_than)
        self.model, expected = core.purge(
            self.model, queue=self.queue, finished_before=self.now - older_than
        )
        assert removed == expected
        for model_id in [m for m in self.model_ids if m not in self.model.jobs]:
            del self.ids[self.model_ids.pop(model_id)]

    @rule(seconds=st.sampled_from([0.25, 1.0, 2.5]))
    def tick(self, seconds: float) -> None:
        assert self.clock is not None
        self.clock.advance(seconds)

    @invariant()
    def same_jobs(self) -> None:
        if not hasattr(self, "model"):
            return
        for model_id, store_id in self.model_ids.items():
            expected = self.model.jobs[model_id]
            assert self.store.job_get(self.queue, store_id) == replace(expected, id=store_id)
        assert self.store.job_stats(self.queue) == core.stats(self.model, self.queue, self.now)
        assert self.store.job_progress(self.queue, "B") == core.progress(
            self.model, "B", self.queue
        )


@pytest.mark.parametrize("store_name", sorted(FACTORIES))
def test_every_store_follows_the_core(store_name: str, tmp_path: Path) -> None:
    clock = FakeClock(FAR)
    built, cleanup = FACTORIES[store_name](clock, tmp_path)
    # A subclass per store: settings() may be applied once per class.
    machine = type(
        f"QueueAgainstTheCore_{store_name}",
        (QueueAgainstTheCore,),
        {"store": built, "clock": clock},
    )
    examples = 60 if store_name in ("memory", "sqlite") else 25
    try:
        state_machine = settings(
            max_examples=examples,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )(machine)
        state_machine.TestCase().runTest()
    finally:
        cleanup()

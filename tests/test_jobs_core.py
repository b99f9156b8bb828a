"""The job queue's pure core (``resilience._core.jobs``): each rule, then a state machine.

The state machine drives enqueue, claim, heartbeat, complete, fail, defer, replay,
purge and the clock with three workers, against a naive model (a dict of mutable
records, updated step by step from the documented rules), and checks the
queue's promises after every step. Times are multiples of 1/4 on a clock far
from zero, so float arithmetic is exact and boundaries (``now == lease_until``)
are hit on purpose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from resilience._core import jobs
from resilience._core.jobs import Job, QueueState

FAR = 1_700_000_000.25
EMPTY = QueueState()


def add(state: QueueState = EMPTY, **options: Any) -> tuple[QueueState, int]:
    defaults: dict[str, Any] = dict(
        queue="q",
        handler="h",
        payload="{}",
        key=None,
        priority=1,
        delay=0.0,
        max_attempts=None,
        batch=None,
        now=FAR,
    )
    defaults.update(options)
    state, job_id, created = jobs.enqueue(state, **defaults)
    assert created
    return state, job_id


def take(
    state: QueueState, worker: str = "w", now: float = FAR, limit: int = 10, lease: float = 30.0
) -> tuple[QueueState, tuple[Job, ...]]:
    return jobs.claim(state, queue="q", worker=worker, now=now, limit=limit, lease=lease)


def failed(
    state: QueueState,
    job_id: int,
    now: float = FAR,
    *,
    retry: bool = True,
    delay: float | None = 5.0,
    reason: str | None = None,
    worker: str = "w",
) -> tuple[QueueState, bool]:
    return jobs.fail(
        state,
        job_id,
        worker,
        now,
        retry=retry,
        delay=delay,
        error_class="TRANSIENT",
        reason=reason,
        error="boom",
    )


# -- enqueue -------------------------------------------------------------------------------------


def test_enqueue_assigns_ids_in_order_and_records_the_job() -> None:
    state, first = add(delay=2.5, priority=3, max_attempts=4, batch="b", key="k")
    state, second = add(state)
    assert (first, second) == (1, 2)
    job = jobs.get(state, first)
    assert job is not None
    assert (job.state, job.attempts, job.priority, job.max_attempts) == ("pending", 0, 3, 4)
    assert (job.next_attempt_at, job.created_at, job.batch, job.key) == (FAR + 2.5, FAR, "b", "k")
    assert job.lease_owner is job.lease_until is job.finished_at is job.reason is None
    assert EMPTY.jobs == {}  # copy-on-write: the old state is untouched


def test_a_key_is_idempotent_per_queue_whatever_the_job_state() -> None:
    state, first = add(key="k")
    state, _ = take(state)
    state, _ = jobs.complete(state, first, "w", FAR)
    again, job_id, created = jobs.enqueue(
        state,
        queue="q",
        handler="h",
        payload="{}",
        key="k",
        priority=1,
        delay=0.0,
        max_attempts=None,
        batch=None,
        now=FAR + 1,
    )
    assert (job_id, created, again) == (first, False, state)
    state, other = add(state, key="k", queue="other")
    assert other != first


def test_a_purged_key_can_be_enqueued_again() -> None:
    state, first = add(key="k")
    state, _ = take(state)
    state, _ = jobs.complete(state, first, "w", FAR)
    state, count = jobs.purge(state, queue="q", finished_before=FAR + 1)
    assert count == 1 and jobs.get(state, first) is None
    state, second = add(state, key="k")
    assert second == first + 1


@pytest.mark.parametrize(
    ("option", "value", "name"),
    [
        ("delay", -1.0, "delay"),
        ("delay", math.nan, "delay"),
        ("delay", math.inf, "delay"),
        ("now", math.nan, "now"),
        ("priority", 0, "priority"),
        ("priority", jobs.MAX_PRIORITY + 1, "priority"),
        ("priority", True, "priority"),
        ("max_attempts", 0, "max_attempts"),
    ],
)
def test_enqueue_refuses_bad_input_naming_it(option: str, value: Any, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        add(**{option: value})


def test_other_functions_refuse_bad_input_naming_it() -> None:
    state, job_id = add()
    with pytest.raises(ValueError, match="limit"):
        take(state, limit=0)
    for lease in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="lease"):
            take(state, lease=lease)
        with pytest.raises(ValueError, match="lease"):
            jobs.heartbeat(state, job_id, "w", FAR, lease)
    for delay in (None, -0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="delay"):
            failed(state, job_id, delay=delay)
    with pytest.raises(ValueError, match="until"):
        jobs.defer(state, job_id, "w", FAR, math.inf)
    with pytest.raises(ValueError, match="finished_before"):
        jobs.purge(state, queue="q", finished_before=math.nan)


# -- claim and leases ----------------------------------------------------------------------------


def test_claim_takes_due_jobs_by_priority_then_due_time_then_id() -> None:
    state, a = add(priority=2)
    state, b = add(state, priority=1, delay=1.0)
    state, c = add(state, priority=1)
    state, d = add(state, priority=1)
    state, _ = add(state, priority=1, delay=10.0)  # not due
    state, _ = add(state, queue="other")  # another queue
    state, claimed = take(state, now=FAR + 1, limit=3, lease=5.0)
    assert [job.id for job in claimed] == [c, d, b]
    assert all(job.state == "running" and job.attempts == 1 for job in claimed)
    assert all(job.lease_owner == "w" and job.lease_until == FAR + 6 for job in claimed)
    state, rest = take(state, now=FAR + 1)
    assert [job.id for job in rest] == [a]


def test_a_lapsed_lease_is_claimed_again_keeping_its_attempts() -> None:
    state, job_id = add()
    state, _ = take(state, worker="dead", lease=10.0)
    assert take(state, worker="w2", now=FAR + 9.75)[1] == ()
    state, (job,) = take(state, worker="w2", now=FAR + 10)  # lease_until <= now: lapsed
    assert (job.id, job.attempts, job.lease_owner) == (job_id, 2, "w2")
    assert jobs.complete(state, job_id, "dead", FAR + 10)[1] is False


def test_a_lapsed_last_attempt_is_dead_lettered_not_run_again() -> None:
    state, job_id = add(max_attempts=1)
    state, _ = take(state, lease=10.0)
    state, claimed = take(state, worker="w2", now=FAR + 20)
    job = jobs.get(state, job_id)
    assert claimed == () and job is not None
    assert (job.state, job.reason, job.last_error, job.finished_at) == (
        "dead",
        "attempts",
        jobs.LAPSED,
        FAR + 20,
    )


def test_heartbeat_extends_only_a_live_lease_of_its_holder() -> None:
    state, job_id = add()
    state, _ = take(state, lease=10.0)
    assert jobs.heartbeat(state, job_id, "other", FAR + 5, 10.0)[1] is False
    assert jobs.heartbeat(state, job_id, "w", FAR + 10, 10.0)[1] is False  # lapsed
    assert jobs.heartbeat(state, 99, "w", FAR, 10.0)[1] is False
    state, ok = jobs.heartbeat(state, job_id, "w", FAR + 5, 10.0)
    job = jobs.get(state, job_id)
    assert ok and job is not None and job.lease_until == FAR + 15


def test_complete_needs_the_live_lease() -> None:
    state, job_id = add()
    assert jobs.complete(state, job_id, "w", FAR)[1] is False  # pending, not leased
    state, _ = take(state, lease=10.0)
    assert jobs.complete(state, job_id, "other", FAR)[1] is False
    assert jobs.complete(state, job_id, "w", FAR + 10)[1] is False
    state, ok = jobs.complete(state, job_id, "w", FAR + 3)
    job = jobs.get(state, job_id)
    assert ok and job is not None
    assert (job.state, job.finished_at, job.lease_owner, job.lease_until) == (
        "done",
        FAR + 3,
        None,
        None,
    )
    assert jobs.complete(state, job_id, "w", FAR + 3)[1] is False  # settled once


# -- failures, deferral, replay ------------------------------------------------------------------


def test_fail_with_retry_reschedules_and_keeps_the_error() -> None:
    state, job_id = add(max_attempts=3)
    state, _ = take(state)
    state, ok = failed(state, job_id, FAR + 1, delay=5.0)
    job = jobs.get(state, job_id)
    assert ok and job is not None
    assert (job.state, job.next_attempt_at, job.attempts) == ("pending", FAR + 6, 1)
    assert (job.last_error, job.last_error_class, job.lease_owner) == ("boom", "TRANSIENT", None)
    assert take(state, now=FAR + 5.75)[1] == ()


def test_fail_without_retry_dead_letters_with_the_decision_reason() -> None:
    state, job_id = add(max_attempts=3)
    state, _ = take(state)
    state, ok = failed(state, job_id, FAR + 1, retry=False, delay=None, reason="not_retryable")
    job = jobs.get(state, job_id)
    assert ok and job is not None
    assert (job.state, job.reason, job.finished_at) == ("dead", "not_retryable", FAR + 1)


def test_the_last_attempt_dead_letters_whatever_the_decision() -> None:
    state, job_id = add(max_attempts=2)
    for attempt in (1, 2):
        state, (job,) = take(state, now=FAR + 10 * attempt)
        state, _ = failed(state, job_id, FAR + 10 * attempt)
    job = jobs.get(state, job_id)
    assert job is not None and (job.state, job.reason, job.attempts) == ("dead", "attempts", 2)
    # A give-up on the last attempt keeps its own reason.
    state, other = add(state, max_attempts=1)
    state, _ = take(state, now=FAR + 30)
    state, _ = failed(state, other, FAR + 30, retry=False, delay=None, reason="deadline")
    assert jobs.get(state, other).reason == "deadline"  # type: ignore[union-attr]


def test_defer_gives_the_attempt_back() -> None:
    state, job_id = add(max_attempts=1)
    for _ in range(3):  # deferrals never use up the single attempt
        state, (job,) = take(state)
        state, ok = jobs.defer(state, job_id, "w", FAR, FAR - 5)
        assert ok
    job = jobs.get(state, job_id)
    assert job is not None and (job.state, job.attempts, job.next_attempt_at) == ("pending", 0, FAR)
    state, _ = take(state)
    state, _ = jobs.defer(state, job_id, "w", FAR, FAR + 60)
    assert take(state, now=FAR + 59.75)[1] == ()
    assert jobs.defer(state, job_id, "w", FAR, FAR + 60)[1] is False  # not leased


def test_replay_brings_a_dead_job_back_with_its_error() -> None:
    state, job_id = add(max_attempts=1)
    assert jobs.replay(state, job_id, FAR)[1] is False  # pending, not dead
    state, _ = take(state)
    state, _ = failed(state, job_id, FAR, retry=False, delay=None, reason="not_retryable")
    state, ok = jobs.replay(state, job_id, FAR + 100)
    job = jobs.get(state, job_id)
    assert ok and job is not None
    assert (job.state, job.attempts, job.next_attempt_at) == ("pending", 0, FAR + 100)
    assert (job.last_error, job.reason, job.finished_at) == ("boom", None, None)
    assert jobs.replay(state, 99, FAR)[1] is False


# -- purge, stats, progress, dead letters --------------------------------------------------------


def test_purge_removes_only_finished_jobs_finished_before_the_time() -> None:
    state, done = add()
    state, dead = add(state, max_attempts=1)
    state, running = add(state)
    state, pending = add(state, delay=100.0)
    state, _ = take(state, limit=3)
    state, _ = jobs.complete(state, done, "w", FAR + 1)
    state, _ = failed(state, dead, FAR + 2, retry=False, delay=None, reason="not_retryable")
    assert jobs.purge(state, queue="other", finished_before=FAR + 10)[1] == 0
    state, count = jobs.purge(state, queue="q", finished_before=FAR + 2)  # strictly before
    assert count == 1 and sorted(state.jobs) == [dead, running, pending]
    state, count = jobs.purge(state, queue="q", finished_before=FAR + 1000)
    assert count == 1 and sorted(state.jobs) == [running, pending]


def test_stats_count_states_and_report_the_lag() -> None:
    state, a = add()
    state, _ = add(state, delay=3.0)
    state, _ = add(state, delay=100.0)
    state, _ = add(state, queue="other")
    assert jobs.stats(state, "q", FAR + 10) == jobs.QueueStats(3, 0, 0, 0, 2, 10.0)
    state, _ = take(state, limit=1, lease=5.0)
    state, _ = jobs.complete(state, a, "w", FAR)
    stats = jobs.stats(state, "q", FAR + 10)
    assert stats == jobs.QueueStats(2, 0, 1, 0, 1, 7.0) and stats.total == 3
    assert jobs.stats(EMPTY, "q", FAR) == jobs.QueueStats(0, 0, 0, 0, 0, 0.0)


def test_progress_of_a_batch() -> None:
    assert jobs.progress(EMPTY, "b") == jobs.BatchProgress(0, 0, 0, 0, 100.0)
    state = EMPTY
    for _ in range(4):
        state, _ = add(state, batch="b", max_attempts=1)
    state, _ = add(state, batch="other")
    state, (one, two, *_) = take(state, limit=3)
    state, _ = jobs.complete(state, one.id, "w", FAR)
    state, _ = failed(state, two.id, FAR, retry=False, delay=None, reason="not_retryable")
    assert jobs.progress(state, "b") == jobs.BatchProgress(4, 1, 1, 2, 50.0)
    assert jobs.progress(state, "b", queue="elsewhere").total == 0


def test_dead_letters_earliest_first() -> None:
    state = EMPTY
    for _ in range(3):
        state, _ = add(state, max_attempts=1)
    state, _ = take(state)
    for job_id, at in ((2, FAR + 1), (1, FAR + 2), (3, FAR + 1)):
        state, _ = failed(state, job_id, at, retry=False, delay=None, reason="not_retryable")
    assert [job.id for job in jobs.dead_letters(state, queue="q", limit=2)] == [2, 3]


# -- the state machine ---------------------------------------------------------------------------


@dataclass
class Record:
    """The model's job: the same fields, mutable, plus why it died."""

    fields: dict[str, Any]
    dead_by: str | None = None  # "fail" | "attempts" | "lapsed"


@dataclass
class Model:
    now: float = FAR
    next_id: int = 1
    records: dict[int, Record] = field(default_factory=dict)
    keys: dict[tuple[str, str], int] = field(default_factory=dict)

    def live(self, rec: Record, worker: str) -> bool:
        f = rec.fields
        return (
            f["state"] == "running" and f["lease_owner"] == worker and self.now < f["lease_until"]
        )

    def due(self, rec: Record) -> bool:
        f = rec.fields
        if f["state"] == "pending":
            return bool(f["next_attempt_at"] <= self.now)
        return f["state"] == "running" and f["lease_until"] <= self.now


QUEUES = st.sampled_from(["a", "a", "b"])
WORKERS = st.sampled_from(["w1", "w2", "w3"])
QUARTERS = st.integers(0, 40).map(lambda n: n / 4)
IDS = st.integers(1, 14)
DELAYS = st.sampled_from([0.0, 0.0, 0.25, 1.0, 2.5, 10.0])
LEASES = st.sampled_from([0.25, 1.0, 5.0, 20.0, 60.0])
STEPS = st.sampled_from([0.0, 0.25, 0.25, 1.0, 5.0, 30.0])
# Whom a settling step speaks for: mostly a (job, worker) pair some claim handed out
# (live, lapsed or taken over since), sometimes any pair at all.
WHO = st.one_of(st.integers(0, 63), st.tuples(IDS, WORKERS))


class JobMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = QueueState()
        self.model = Model()
        self.enqueued: set[int] = set()
        self.purged: set[int] = set()
        self.held: dict[tuple[int, str], float] = {}  # what each worker believes it holds

    @initialize(
        first=st.lists(
            st.tuples(
                st.integers(1, 3), st.sampled_from([None, 1, 2]), st.sampled_from(["x", "y"])
            ),
            max_size=4,
        )
    )
    def some_jobs(self, first: list[tuple[int, int | None, str]]) -> None:
        for priority, max_attempts, batch in first:
            self.enqueue("a", None, priority, 0.0, max_attempts, batch)

    def record(self, job_id: int) -> Record | None:
        return self.model.records.get(job_id)

    def pick(self, who: int | tuple[int, str]) -> tuple[int, str]:
        if isinstance(who, tuple) or not self.held:
            return who if isinstance(who, tuple) else (1, "w1")
        held = sorted(self.held)
        return held[who % len(held)]

    def settled(self, job_id: int, worker: str, ok: bool) -> None:
        rec = self.record(job_id)
        assert ok == (rec is not None and self.model.live(rec, worker))
        if ok:
            del self.held[job_id, worker]

    @rule(
        queue=QUEUES,
        key=st.sampled_from([None, "k1", "k2", "k3"]),
        priority=st.integers(1, 3),
        delay=DELAYS,
        max_attempts=st.sampled_from([None, 1, 2, 3]),
        batch=st.sampled_from([None, "x", "y"]),
    )
    def enqueue(
        self,
        queue: str,
        key: str | None,
        priority: int,
        delay: float,
        max_attempts: int | None,
        batch: str | None,
    ) -> None:
        m = self.model
        self.state, job_id, created = jobs.enqueue(
            self.state,
            queue=queue,
            handler="h",
            payload='{"n": 1}',
            key=key,
            priority=priority,
            delay=delay,
            max_attempts=max_attempts,
            batch=batch,
            now=m.now,
        )
        if key is not None and (queue, key) in m.keys:
            assert (job_id, created) == (m.keys[queue, key], False)
            return
        assert (job_id, created) == (m.next_id, True)
        m.records[job_id] = Record(
            dict(
                id=job_id,
                queue=queue,
                handler="h",
                payload='{"n": 1}',
                key=key,
                priority=priority,
                state="pending",
                attempts=0,
                max_attempts=max_attempts,
                next_attempt_at=m.now + delay,
                created_at=m.now,
                lease_owner=None,
                lease_until=None,
                last_error=None,
                last_error_class=None,
                finished_at=None,
                batch=batch,
                reason=None,
            )
        )
        if key is not None:
            m.keys[queue, key] = job_id
        m.next_id += 1
        self.enqueued.add(job_id)

    @rule(
        queue=QUEUES,
        worker=WORKERS,
        limit=st.integers(1, 3),
        lease=LEASES,
    )
    def claim(self, queue: str, worker: str, limit: int, lease: float) -> None:
        m = self.model
        self.state, claimed = jobs.claim(
            self.state, queue=queue, worker=worker, now=m.now, limit=limit, lease=lease
        )
        due = []
        for rec in m.records.values():
            f = rec.fields
            if f["queue"] != queue or not m.due(rec):
                continue
            if (
                f["state"] == "running"
                and f["max_attempts"] is not None
                and f["attempts"] >= f["max_attempts"]
            ):
                f.update(
                    state="dead",
                    lease_owner=None,
                    lease_until=None,
                    last_error=jobs.LAPSED,
                    last_error_class=None,
                    finished_at=m.now,
                    reason="attempts",
                )
                rec.dead_by = "lapsed"
            else:
                due.append(rec)
        due.sort(key=lambda r: (r.fields["priority"], r.fields["next_attempt_at"], r.fields["id"]))
        expected = [r.fields["id"] for r in due[:limit]]
        assert [job.id for job in claimed] == expected
        for job_id in expected:
            f = m.records[job_id].fields
            f.update(
                state="running",
                attempts=f["attempts"] + 1,
                lease_owner=worker,
                lease_until=m.now + lease,
            )
            self.held[job_id, worker] = m.now + lease
        assert [jobs.get(self.state, job.id) for job in claimed] == list(claimed)

    @precondition(lambda self: self.held)
    @rule(who=WHO, lease=LEASES)
    def heartbeat(self, who: int | tuple[int, str], lease: float) -> None:
        job_id, worker = self.pick(who)
        self.state, ok = jobs.heartbeat(self.state, job_id, worker, self.model.now, lease)
        rec = self.record(job_id)
        assert ok == (rec is not None and self.model.live(rec, worker))
        if ok and rec is not None:
            rec.fields["lease_until"] = self.model.now + lease
            self.held[job_id, worker] = self.model.now + lease

    @precondition(lambda self: self.held)
    @rule(who=WHO)
    def complete(self, who: int | tuple[int, str]) -> None:
        job_id, worker = self.pick(who)
        self.state, ok = jobs.complete(self.state, job_id, worker, self.model.now)
        rec = self.record(job_id)
        self.settled(job_id, worker, ok)
        if ok and rec is not None:
            rec.fields.update(
                state="done", lease_owner=None, lease_until=None, finished_at=self.model.now
            )

    @precondition(lambda self: self.held)
    @rule(
        who=WHO,
        retry=st.booleans(),
        delay=QUARTERS,
        reason=st.sampled_from(["not_retryable", "deadline"]),
    )
    def fail(self, who: int | tuple[int, str], retry: bool, delay: float, reason: str) -> None:
        job_id, worker = self.pick(who)
        now = self.model.now
        self.state, ok = jobs.fail(
            self.state,
            job_id,
            worker,
            now,
            retry=retry,
            delay=delay if retry else None,
            error_class="TRANSIENT",
            reason=None if retry else reason,
            error=f"e{job_id}",
        )
        rec = self.record(job_id)
        self.settled(job_id, worker, ok)
        if not ok or rec is None:
            return
        f = rec.fields
        f.update(
            lease_owner=None,
            lease_until=None,
            last_error=f"e{job_id}",
            last_error_class="TRANSIENT",
        )
        used_up = f["max_attempts"] is not None and f["attempts"] >= f["max_attempts"]
        if retry and not used_up:
            f.update(state="pending", next_attempt_at=now + delay)
        else:
            f.update(state="dead", finished_at=now, reason=reason if not retry else "attempts")
            rec.dead_by = "fail" if not retry else "attempts"

    @precondition(lambda self: self.held)
    @rule(who=WHO, offset=st.integers(-8, 40).map(lambda n: n / 4))
    def defer(self, who: int | tuple[int, str], offset: float) -> None:
        job_id, worker = self.pick(who)
        now = self.model.now
        self.state, ok = jobs.defer(self.state, job_id, worker, now, now + offset)
        rec = self.record(job_id)
        self.settled(job_id, worker, ok)
        if ok and rec is not None:
            f = rec.fields
            f.update(
                state="pending",
                attempts=f["attempts"] - 1,
                lease_owner=None,
                lease_until=None,
                next_attempt_at=now + max(offset, 0.0),
            )

    @rule(which=st.one_of(st.integers(0, 63), IDS.map(lambda n: -n)))
    def replay(self, which: int) -> None:
        dead = sorted(i for i, r in self.model.records.items() if r.fields["state"] == "dead")
        job_id = -which if which < 0 or not dead else dead[which % len(dead)]
        self.state, ok = jobs.replay(self.state, job_id, self.model.now)
        rec = self.record(job_id)
        assert ok == (rec is not None and rec.fields["state"] == "dead")
        if ok and rec is not None:
            rec.fields.update(
                state="pending",
                attempts=0,
                next_attempt_at=self.model.now,
                finished_at=None,
                reason=None,
            )
            rec.dead_by = None

    @rule(queue=QUEUES, offset=st.sampled_from([-30.0, -5.0, -0.25, 0.0, 0.0, 0.25, 1.0]))
    def purge(self, queue: str, offset: float) -> None:
        m = self.model
        before = dict(self.state.jobs)
        self.state, count = jobs.purge(self.state, queue=queue, finished_before=m.now + offset)
        gone = [
            job_id
            for job_id, rec in m.records.items()
            if rec.fields["queue"] == queue
            and rec.fields["state"] in ("done", "dead")
            and rec.fields["finished_at"] < m.now + offset
        ]
        assert count == len(gone)
        for job_id in gone:
            assert before[job_id].state in ("done", "dead")  # only finished jobs are purged
            rec = m.records.pop(job_id)
            if rec.fields["key"] is not None:
                del m.keys[queue, rec.fields["key"]]
            self.purged.add(job_id)

    @rule(dt=STEPS)
    def advance(self, dt: float) -> None:
        self.model.now += dt

    @precondition(lambda self: self.model.records)
    @rule(batch=st.sampled_from(["x", "y"]))
    def progress(self, batch: str) -> None:
        got = jobs.progress(self.state, batch)
        states = [
            r.fields["state"] for r in self.model.records.values() if r.fields["batch"] == batch
        ]
        assert got.total == len(states) == got.done + got.dead + got.pending
        assert (got.done, got.dead) == (states.count("done"), states.count("dead"))
        finished = got.done + got.dead
        assert got.percent == (100.0 if not states else 100.0 * finished / len(states))

    # -- invariants, after every step --

    @invariant()
    def matches_the_model(self) -> None:
        m = self.model
        assert sorted(self.state.jobs) == sorted(m.records)
        for job_id, rec in m.records.items():
            assert self.state.jobs[job_id] == Job(**rec.fields)
        assert self.state.next_id == m.next_id
        assert dict(self.state.keys) == m.keys

    @invariant()
    def nothing_lost(self) -> None:
        assert self.enqueued == set(self.state.jobs) | self.purged
        assert not set(self.state.jobs) & self.purged

    @invariant()
    def one_live_lease_per_job(self) -> None:
        now = self.model.now
        holders: dict[int, list[str]] = {}
        for (job_id, worker), until in self.held.items():
            if now < until:
                holders.setdefault(job_id, []).append(worker)
        for job_id, workers in holders.items():
            assert len(workers) == 1, (job_id, workers)
            job = self.state.jobs[job_id]
            assert (job.state, job.lease_owner) == ("running", workers[0])

    @invariant()
    def attempts_within_bounds(self) -> None:
        for job in self.state.jobs.values():
            assert job.attempts >= 0
            if job.max_attempts is not None:
                assert job.attempts <= job.max_attempts
            if job.state == "pending" and job.max_attempts is not None:
                assert job.attempts < job.max_attempts  # another attempt is allowed

    @invariant()
    def dead_only_for_a_reason(self) -> None:
        for job_id, job in self.state.jobs.items():
            rec = self.model.records[job_id]
            if job.state == "dead":
                assert rec.dead_by in ("fail", "attempts", "lapsed")
                assert job.reason is not None and job.finished_at is not None
                if rec.dead_by != "fail":
                    assert job.reason == "attempts"
            else:
                assert job.reason is None
                assert (job.finished_at is not None) == (job.state == "done")
            assert (job.lease_owner is not None) == (job.state == "running")

    @invariant()
    def stats_add_up(self) -> None:
        for queue in ("a", "b"):
            s = jobs.stats(self.state, queue, self.model.now)
            mine = [j for j in self.state.jobs.values() if j.queue == queue]
            assert s.total == len(mine)
            assert s.due == sum(jobs.is_due(j, self.model.now) for j in mine)
            assert s.lag >= 0.0


JobMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestJobsAgainstModel = JobMachine.TestCase

"""One conformance suite, run unchanged against every store backend.

Backends: memory, SQLite (a temp file), PostgreSQL (the real server, see
``tests/backends.py``) and Redis (when ``resilience.storage.redis`` exists).
Every test uses names of its own (a uuid), so runs never collide.

Stores with an injectable clock (memory, SQLite) are held to the in-memory
reference *exactly*, on a shared :class:`FakeClock`. Stores that use their
server's clock (PostgreSQL, Redis) are compared with tolerances: their buckets
refill so slowly (one token per ``SLOW`` seconds) that the real time a test
takes never changes a decision, and waits agree within ``TOLERANCE`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import resilience as rs
from resilience._core import circuit
from resilience._core.breaker import CircuitState
from resilience._core.bucket import BucketSpec, Decision
from resilience.clock import SYSTEM_CLOCK, Clock
from resilience.storage import MemoryStore, store_from_url
from resilience.storage.breakers import (
    DEFAULT_PROBE_LEASE,
    BreakerStore,
    CircuitSnapshot,
    Transition,
)
from resilience.storage.buckets import BucketRequest, BucketStore
from resilience.testing import FakeClock

from .backends import STORE_TIMEOUT, require_postgres, require_redis

SLOW = 1000.0  # seconds per token for server-clock backends
# Clocks start far from zero: a clock at 0 once hid a bug that made every shared
# breaker skip its break (a transition handed now=0.0 looked like one long ago).
FAR = 1_700_000_000.25
TOLERANCE = 5.0  # seconds of real time a server-clock comparison may absorb


@dataclass
class Backend:
    """A store under test; ``clock`` is set when the store reads an injected clock.

    ``wipe(name)`` makes the store forget circuit ``name`` behind every
    client's back, as a restart without persistence does (None for memory).
    """

    name: str
    store: Any
    clock: FakeClock | None
    wipe: Callable[[str], None] | None = None

    @property
    def exact(self) -> bool:
        return self.clock is not None

    def interval(self, exact_interval: float) -> float:
        """Seconds per token to use: the test's own, or SLOW on a server clock."""
        return exact_interval if self.exact else SLOW

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if callable(close):
            result = close()
            if asyncio.iscoroutine(result):  # pragma: no cover - an async-only close
                asyncio.run(result)


def _memory(tmp: Path) -> Backend:
    clock = FakeClock(FAR)
    return Backend("memory", MemoryStore(clock), clock)


def _sqlite(tmp: Path) -> Backend:
    clock = FakeClock(FAR)
    path = tmp / "store.db"
    store = store_from_url(f"sqlite:///{path}", clock=clock, breaker_staleness=0.0)

    def wipe(name: str) -> None:
        with contextlib.closing(sqlite3.connect(path)) as connection, connection:
            connection.execute("DELETE FROM resilience_circuits WHERE name = ?", (name,))

    return Backend("sqlite", store, clock, wipe)


def _postgres(tmp: Path) -> Backend:
    dsn = require_postgres()

    def wipe(name: str) -> None:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute("DELETE FROM resilience_test_circuits WHERE name = %s", (name,))

    return Backend("postgres", store_from_url(dsn, table="resilience_test"), None, wipe)


def _redis(tmp: Path) -> Backend:
    try:
        module = importlib.import_module("resilience.storage.redis")
    except ImportError as error:
        pytest.skip(f"resilience.storage.redis is not available yet ({error})")
    url = require_redis()
    store = module.RedisStore.from_url(url, timeout=STORE_TIMEOUT)

    def wipe(name: str) -> None:
        import redis

        with redis.Redis.from_url(url) as client:
            client.delete(store.circuit_key(name))

    return Backend("redis", store, None, wipe)


FACTORIES: dict[str, Callable[[Path], Backend]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "postgres": _postgres,
    "redis": _redis,
}


@pytest.fixture(params=list(FACTORIES))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = FACTORIES[request.param](tmp_path)
    yield made
    made.close()


def fresh(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def advance(backend: Backend, seconds: float) -> None:
    assert backend.clock is not None
    backend.clock.advance(seconds)


def close_to(actual: float, expected: float, backend: Backend, scale: float = 1.0) -> bool:
    """Equal on an injected clock; within the tolerance (scaled) on a server clock."""
    if backend.exact:
        return actual == expected
    return abs(actual - expected) <= TOLERANCE * scale


# -- the protocols -----------------------------------------------------------------------


def test_implements_both_protocols(backend: Backend) -> None:
    assert isinstance(backend.store, BucketStore)
    assert isinstance(backend.store, BreakerStore)
    assert backend.store.breaker_staleness >= 0


def test_a_bucket_grants_its_burst_then_refuses(backend: Backend) -> None:
    store, name = backend.store, fresh()
    interval = backend.interval(1.0)
    spec = BucketSpec.of(rate=1, per=interval, burst=3)
    one = [BucketRequest(name, None, 1, spec)]
    assert store.bucket_tokens(name, None, spec) == 3.0
    assert [store.bucket_take(one).granted for _ in range(3)] == [True, True, True]
    refused = store.bucket_take(one)
    assert not refused.granted and refused.wait == 0.0 and refused.reserved == ()
    assert 0 < refused.retry_after <= interval
    assert close_to(refused.retry_after, interval, backend)
    assert refused.tokens == pytest.approx(0.0, abs=0.01)
    if backend.exact:
        advance(backend, 1.0)
        assert store.bucket_take(one).granted


def test_keys_and_names_are_separate_buckets(backend: Backend) -> None:
    store, name, other = backend.store, fresh(), fresh()
    spec = BucketSpec.of(rate=1, per=backend.interval(1.0), burst=1)
    assert store.bucket_take([BucketRequest(name, None, 1, spec)]).granted
    for key_name, key in ((name, ""), (name, "a"), (other, None), (name, "=")):
        assert store.bucket_take([BucketRequest(key_name, key, 1, spec)]).granted, (key_name, key)
    assert not store.bucket_take([BucketRequest(name, None, 1, spec)]).granted
    assert not store.bucket_take([BucketRequest(name, "", 1, spec)]).granted


def test_a_composite_take_is_all_or_nothing(backend: Backend) -> None:
    store, name = backend.store, fresh()
    interval = backend.interval(1.0)
    spec = BucketSpec.of(rate=1, per=interval, burst=2)
    both = [BucketRequest(name, "a", 2, spec), BucketRequest(name, "b", 1, spec)]
    assert store.bucket_take(both).granted
    refused = store.bucket_take(both)
    assert not refused.granted
    assert close_to(refused.retry_after, 2 * interval, backend)
    # The refusal took nothing from "b", which still has its second token.
    assert store.bucket_tokens(name, "b", spec) == pytest.approx(1.0, abs=0.01)
    assert store.bucket_take([BucketRequest(name, "b", 1, spec)]).granted


def test_a_reservation_waits_and_can_be_refunded(backend: Backend) -> None:
    store, name = backend.store, fresh()
    interval = backend.interval(1.0)
    spec = BucketSpec.of(rate=1, per=interval, burst=1)
    one = [BucketRequest(name, None, 1, spec)]
    assert store.bucket_take(one).granted
    assert not store.bucket_take(one, max_wait=interval / 2).granted  # too far away
    reserved = store.bucket_take(one, max_wait=math.inf)
    assert reserved.granted and close_to(reserved.wait, interval, backend)
    assert len(reserved.reserved) == 1
    store.bucket_refund(one, reserved.reserved)  # nobody reserved since: handed back
    again = store.bucket_take(one, max_wait=math.inf)
    assert close_to(again.wait, interval, backend)
    later = store.bucket_take(one, max_wait=math.inf)  # queued behind `again`
    assert close_to(later.wait, 2 * interval, backend)
    store.bucket_refund(one, again.reserved)  # someone reserved since: no effect
    assert close_to(store.bucket_take(one, max_wait=math.inf).wait, 3 * interval, backend)


def test_penalize_pauses_a_bucket(backend: Backend) -> None:
    store, name = backend.store, fresh()
    interval = backend.interval(1.0)
    spec = BucketSpec.of(rate=1, per=interval, burst=5)
    pause = 3 * interval
    store.bucket_penalize(name, "k", spec, pause)
    refused = store.bucket_take([BucketRequest(name, "k", 1, spec)])
    assert not refused.granted and close_to(refused.retry_after, pause, backend)
    store.bucket_penalize(name, "k", spec, interval)  # never shortens a longer pause
    assert close_to(
        store.bucket_take([BucketRequest(name, "k", 1, spec)]).retry_after, pause, backend
    )


async def test_async_twins_share_the_buckets(backend: Backend) -> None:
    store, name = backend.store, fresh()
    spec = BucketSpec.of(rate=1, per=backend.interval(1.0), burst=2)
    one = [BucketRequest(name, None, 1, spec)]
    assert (await store.abucket_take(one)).granted
    assert store.bucket_take(one).granted
    assert not (await store.abucket_take(one)).granted
    assert await store.abucket_tokens(name, None, spec) == pytest.approx(0.0, abs=0.01)
    reserved = await store.abucket_take(one, max_wait=math.inf)
    await store.abucket_refund(one, reserved.reserved)
    await store.abucket_penalize(name, None, spec, 10 * spec.interval)
    assert not store.bucket_take(one, max_wait=5 * spec.interval).granted
    assert (await store.abreaker_load(fresh(), 0.0)).version == 0


# -- circuits ----------------------------------------------------------------------------


def now_of(backend: Backend) -> float:
    return backend.clock.now() if backend.clock is not None else 0.0


def test_a_circuit_starts_closed_and_moves_by_compare_and_set(backend: Backend) -> None:
    store, name = backend.store, fresh()
    now = now_of(backend)
    assert store.breaker_load(name, now) == CircuitSnapshot(
        CircuitState.CLOSED, 0, 0, "initial state", 0.0
    )
    won, snapshot = store.breaker_transition(
        name,
        Transition(
            expected_version=0,
            state=CircuitState.OPEN,
            reason="boom",
            trips=1,
            break_duration=30.0,
            now=now,
        ),
    )
    assert won and snapshot.state is CircuitState.OPEN and snapshot.version == 1
    assert snapshot.trips == 1 and snapshot.reason == "boom"
    assert close_to(snapshot.break_remaining, 30.0, backend)
    lost, current = store.breaker_transition(
        name,
        Transition(
            expected_version=0,
            state=CircuitState.OPEN,
            reason="late",
            trips=1,
            break_duration=5.0,
            now=now,
        ),
    )
    assert not lost and current.version == 1 and current.reason == "boom"
    if backend.exact:
        advance(backend, 10.0)
        assert store.breaker_load(name, now + 10.0).break_remaining == 20.0
    loaded = store.breaker_load(name, now_of(backend))
    assert loaded.state is CircuitState.OPEN and loaded.version == 1
    won, closed = store.breaker_transition(
        name,
        Transition(
            expected_version=1,
            state=CircuitState.CLOSED,
            reason="reset",
            trips=0,
            break_duration=0.0,
            now=now_of(backend),
        ),
    )
    assert won and closed == CircuitSnapshot(CircuitState.CLOSED, 2, 0, "reset", 0.0)
    assert store.breaker_load(name, now_of(backend)) == closed


def test_probe_permits_are_limited_per_version(backend: Backend) -> None:
    store, name = backend.store, fresh()
    now = now_of(backend)
    assert not store.breaker_acquire_probe(name, 0, 1, None, now)  # closed: no probes
    store.breaker_transition(
        name,
        Transition(
            expected_version=0,
            state=CircuitState.OPEN,
            reason="boom",
            trips=1,
            break_duration=1.0,
            now=now,
        ),
    )
    assert not store.breaker_acquire_probe(name, 1, 1, None, now)  # open: no probes
    store.breaker_transition(
        name,
        Transition(
            expected_version=1,
            state=CircuitState.HALF_OPEN,
            reason="probe",
            trips=1,
            break_duration=0.0,
            now=now,
        ),
    )
    assert [store.breaker_acquire_probe(name, 2, 2, None, now) for _ in range(3)] == [
        True,
        True,
        False,
    ]
    assert not store.breaker_acquire_probe(name, 1, 5, None, now)  # a stale version gets nothing
    assert store.breaker_release_probe(name, 2, True) == 1
    assert store.breaker_acquire_probe(name, 2, 2, None, now)  # a permit came back
    assert store.breaker_release_probe(name, 2, None) == 1  # no verdict: not a success
    assert store.breaker_release_probe(name, 1, True) == -1  # moved on
    store.breaker_transition(
        name,
        Transition(
            expected_version=2,
            state=CircuitState.HALF_OPEN,
            reason="again",
            trips=1,
            break_duration=0.0,
            now=now,
        ),
    )
    assert store.breaker_release_probe(name, 2, True) == -1
    assert [store.breaker_acquire_probe(name, 3, 1, None, now) for _ in range(2)] == [True, False]


async def test_circuit_async_twins(backend: Backend) -> None:
    store, name = backend.store, fresh()
    now = now_of(backend)
    won, _ = await store.abreaker_transition(
        name,
        Transition(
            expected_version=0,
            state=CircuitState.HALF_OPEN,
            reason="x",
            trips=1,
            break_duration=0.0,
            now=now,
        ),
    )
    assert won
    assert await store.abreaker_acquire_probe(name, 1, 1, None, now)
    assert not await store.abreaker_acquire_probe(name, 1, 1, None, now)
    assert await store.abreaker_release_probe(name, 1, True) == 1
    assert (await store.abreaker_load(name, now)).state is CircuitState.HALF_OPEN


def test_watch_pushes_or_says_it_cannot(backend: Backend) -> None:
    seen: list[CircuitSnapshot] = []
    name = fresh()
    unwatch = backend.store.breaker_watch(name, seen.append)
    if unwatch is None:
        assert backend.store.breaker_staleness > 0 or backend.name == "sqlite"
        return
    backend.store.breaker_transition(
        name,
        Transition(
            expected_version=0,
            state=CircuitState.OPEN,
            reason="x",
            trips=1,
            break_duration=1.0,
            now=now_of(backend),
        ),
    )
    unwatch()


# -- the policies on top of each store -------------------------------------------------------


def test_a_rate_limiter_on_the_store(backend: Backend) -> None:
    name = fresh()
    limiter = rs.RateLimiter(
        name, rate=1, per=backend.interval(1.0), burst=2, store=backend.store, clock=backend.clock
    )
    assert limiter.try_acquire() and limiter.try_acquire()
    assert not limiter.try_acquire()
    with pytest.raises(rs.RateLimitExceeded) as refused:
        limiter.acquire(timeout=0)
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    assert limiter.try_acquire(key="other", cost=2)
    twin = rs.RateLimiter(
        name, rate=1, per=backend.interval(1.0), burst=2, store=backend.store, clock=backend.clock
    )
    assert not twin.try_acquire()  # same name, same store: same bucket


def test_a_circuit_breaker_on_the_store(backend: Backend) -> None:
    clock = backend.clock if backend.clock is not None else FakeClock(FAR)
    name = fresh()

    def breaker() -> rs.CircuitBreaker:
        return rs.CircuitBreaker(
            name, failure_threshold=2, break_duration=100.0, store=backend.store, clock=clock
        )

    first, second = breaker(), breaker()

    def boom() -> None:
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            first.call(boom)
    assert first.state is rs.CircuitState.OPEN
    clock.advance(2.0)  # past the cache's staleness
    with pytest.raises(rs.CircuitOpenError):
        second.call(lambda: None)  # the other breaker sees the shared circuit


# -- the stateful comparison with the in-memory reference ---------------------------------------

BUCKETS = [("a", None), ("a", "k"), ("b", None)]
PAUSES = {1: 1.3, 2: 2.17, 3: 3.41, 4: 4.05}  # in intervals; fractions all distinct


def spec_of(name: str, exact: bool) -> BucketSpec:
    burst = 3 if name == "a" else 2
    interval = (0.5 if name == "a" else 0.25) if exact else SLOW
    return BucketSpec.of(rate=1, per=interval, burst=burst)


class BucketMachine(RuleBasedStateMachine):
    """The backend and the memory reference see the same operations."""

    backend: Backend

    def __init__(self) -> None:
        super().__init__()
        self.prefix = fresh("m")
        clock = self.backend.clock
        self.reference = MemoryStore(clock if clock is not None else FakeClock(0.0))
        # (requests, the reference's decision, the backend's decision)
        self.reservations: list[tuple[list[BucketRequest], Decision, Decision]] = []

    def requests(self, picks: list[int], costs: list[int]) -> list[BucketRequest]:
        chosen = sorted(set(picks))
        out = []
        for index, cost in zip(chosen, costs, strict=False):
            name, key = BUCKETS[index]
            spec = spec_of(name, self.backend.exact)
            out.append(BucketRequest(f"{self.prefix}-{name}", key, min(cost, spec.burst), spec))
        return out

    def same(self, actual: Decision, expected: Decision) -> None:
        if self.backend.exact:
            # A store may forget a full bucket at any time (the protocol allows
            # it; SQLite sweeps idle rows): a reservation's "before" is then
            # -inf where the reference still has a past time. Both mean "full".
            now = self.reference.clock.now()
            assert (actual.granted, actual.wait, actual.retry_after, actual.tokens) == (
                expected.granted,
                expected.wait,
                expected.retry_after,
                expected.tokens,
            )
            assert len(actual.reserved) == len(expected.reserved)
            for (before, after), (ref_before, ref_after) in zip(
                actual.reserved, expected.reserved, strict=True
            ):
                assert after == ref_after
                assert before == ref_before or (before <= now and ref_before <= now)
            return
        assert actual.granted == expected.granted, (actual, expected)
        assert abs(actual.wait - expected.wait) <= TOLERANCE
        assert abs(actual.retry_after - expected.retry_after) <= TOLERANCE
        assert abs(actual.tokens - expected.tokens) <= 0.01
        assert len(actual.reserved) == len(expected.reserved)

    @rule(
        picks=st.lists(st.integers(0, len(BUCKETS) - 1), min_size=1, max_size=3),
        costs=st.lists(st.integers(1, 3), min_size=3, max_size=3),
        wait_steps=st.sampled_from([0.0, 1.37, 4.61, math.inf]),
    )
    def take(self, picks: list[int], costs: list[int], wait_steps: float) -> None:
        requests = self.requests(picks, costs)
        # max_wait in units of the slowest interval, never exactly on a possible wait.
        max_wait = wait_steps * max(request.spec.interval for request in requests)
        expected = self.reference.bucket_take(requests, max_wait)
        actual = self.backend.store.bucket_take(requests, max_wait)
        self.same(actual, expected)
        if expected.reserved:
            self.reservations.append((requests, expected, actual))

    @precondition(lambda self: bool(self.reservations))
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.reservations) - 1))
        requests, expected, actual = self.reservations.pop(index)
        self.reference.bucket_refund(requests, expected.reserved)
        self.backend.store.bucket_refund(requests, actual.reserved)

    @rule(index=st.integers(0, len(BUCKETS) - 1), steps=st.integers(1, 4))
    def penalize(self, index: int, steps: int) -> None:
        name, key = BUCKETS[index]
        spec = spec_of(name, self.backend.exact)
        # Pauses whose differences are never whole intervals, so that on a server
        # clock (where time moves a little between operations) nothing ties.
        # Each bucket has pauses of its own fraction too: a composite reservation
        # lines one bucket up with another's pause, and a tie there would let the
        # server clock's progress decide the comparison.
        seconds = (PAUSES[steps] + 0.031 * index) * spec.interval
        self.reference.bucket_penalize(f"{self.prefix}-{name}", key, spec, seconds)
        self.backend.store.bucket_penalize(f"{self.prefix}-{name}", key, spec, seconds)

    @precondition(lambda self: self.backend.exact)
    @rule(seconds=st.sampled_from([0.0625, 0.25, 0.3, 1.0, 2.5]))
    def time_passes(self, seconds: float) -> None:
        assert self.backend.clock is not None
        self.backend.clock.advance(seconds)

    @invariant()
    def tokens_agree(self) -> None:
        for name, key in BUCKETS:
            spec = spec_of(name, self.backend.exact)
            expected = self.reference.bucket_tokens(f"{self.prefix}-{name}", key, spec)
            actual = self.backend.store.bucket_tokens(f"{self.prefix}-{name}", key, spec)
            if self.backend.exact:
                assert actual == expected
            else:
                assert abs(actual - expected) <= 0.01


STATES = list(CircuitState)


class BreakerMachine(RuleBasedStateMachine):
    """Compare-and-set transitions and probe permits, against the pure rules.

    :mod:`resilience._core.circuit` is the oracle: the memory store and SQLite
    call it, Redis and PostgreSQL run their own scripts, and every backend must
    answer as it does. Its clock starts far from zero (``FAR``), like the
    injected clocks; a server-clock backend is compared within the tolerance.
    """

    backend: Backend
    versions = Bundle("versions")

    def __init__(self) -> None:
        super().__init__()
        self.name = fresh("c")
        self.model = circuit.NEVER_MOVED
        self.lease = getattr(self.backend.store, "probe_lease", DEFAULT_PROBE_LEASE)

    def now(self) -> float:
        clock = self.backend.clock
        return clock.now() if clock is not None else FAR

    def same(self, actual: CircuitSnapshot, expected: CircuitSnapshot) -> None:
        if self.backend.exact:
            assert actual == expected
            return
        assert actual.state == expected.state and actual.version == expected.version
        assert actual.trips == expected.trips and actual.reason == expected.reason
        assert abs(actual.break_remaining - expected.break_remaining) <= TOLERANCE

    @initialize(target=versions)
    def start(self) -> int:
        return 0

    @rule(
        target=versions,
        expected=versions,
        state=st.sampled_from(STATES),
        trips=st.integers(0, 3),
        duration=st.sampled_from([0.5, 30.0]),
    )
    def transition(self, expected: int, state: CircuitState, trips: int, duration: float) -> int:
        change = Transition(expected, state, f"to {state.value}", trips, duration, self.now())
        won, self.model = circuit.transition(self.model, change)
        got = self.backend.store.breaker_transition(self.name, change)
        assert got[0] == won
        self.same(got[1], circuit.snapshot(self.model, change.now))
        return self.model.version

    @rule(version=versions, limit=st.integers(1, 3), lease=st.sampled_from([None, 0.5, 30.0]))
    def acquire(self, version: int, limit: int, lease: float | None) -> None:
        if not self.backend.exact and lease is not None:
            lease = SLOW  # a server clock moves on its own: only leases that cannot lapse
        now = self.now()
        held = circuit.lease_or(lease, self.lease)
        granted, self.model = circuit.acquire_probe(self.model, version, limit, held, now)
        assert self.backend.store.breaker_acquire_probe(self.name, version, limit, lease, now) == (
            granted
        )

    @rule(version=versions, succeeded=st.sampled_from([True, False, None]))
    def release(self, version: int, succeeded: bool | None) -> None:
        successes, self.model = circuit.release_probe(self.model, version, succeeded)
        assert self.backend.store.breaker_release_probe(self.name, version, succeeded) == successes

    @precondition(lambda self: self.backend.exact)
    @rule(seconds=st.sampled_from([0.25, 1.0, 40.0]))
    def time_passes(self, seconds: float) -> None:
        assert self.backend.clock is not None
        self.backend.clock.advance(seconds)

    @invariant()
    def snapshots_agree(self) -> None:
        now = self.now()
        self.same(
            self.backend.store.breaker_load(self.name, now), circuit.snapshot(self.model, now)
        )


def stateful(backend: Backend) -> settings:
    # Network round trips cost more than memory or a local file: fewer examples.
    return settings(
        max_examples=30 if backend.exact else 15,
        stateful_step_count=15,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


def test_buckets_match_the_memory_reference(backend: Backend) -> None:
    machine = type("Machine", (BucketMachine,), {"backend": backend})
    run_state_machine_as_test(machine, settings=stateful(backend))


def test_circuits_match_the_pure_rules(backend: Backend) -> None:
    machine = type("Machine", (BreakerMachine,), {"backend": backend})
    run_state_machine_as_test(machine, settings=stateful(backend))


# -- a breaker holds its break, and its probes cannot wedge it, on every store ----------------

TRIPS: dict[str, dict[str, Any]] = {
    "consecutive": {"failure_threshold": 2},
    "count window": {"failure_ratio": 0.5, "window_size": 4, "minimum_calls": 2},
    "time window": {"failure_ratio": 0.5, "window": 60.0, "minimum_calls": 2},
}


@pytest.fixture(params=["far clock", "real clock"])
def policy_clock(request: pytest.FixtureRequest, backend: Backend) -> Clock:
    """The breakers' clock: the store's far-from-zero fake clock, or the real one."""
    if request.param == "real clock":
        return SYSTEM_CLOCK
    return backend.clock if backend.clock is not None else FakeClock(FAR)


def _boom() -> None:
    raise ConnectionError("down")


async def _aboom() -> None:
    raise ConnectionError("down")


@pytest.mark.parametrize("trip", list(TRIPS))
def test_a_trip_from_closed_holds_its_break(
    backend: Backend, policy_clock: Clock, trip: str
) -> None:
    name = fresh()

    def breaker() -> rs.CircuitBreaker:
        return rs.CircuitBreaker(
            name, break_duration=100.0, store=backend.store, clock=policy_clock, **TRIPS[trip]
        )

    tripping = breaker()
    other = breaker()  # already watching (or polling) when the circuit opens
    for _ in range(2):
        with pytest.raises(ConnectionError):
            tripping.call(_boom)
    assert tripping.state is rs.CircuitState.OPEN
    assert tripping.retry_after is not None and tripping.retry_after > 50
    with pytest.raises(rs.CircuitOpenError) as rejected:
        tripping.call(int)  # the next call is rejected: it must not run as a probe
    assert rejected.value.retry_after is not None and rejected.value.retry_after > 50
    assert isinstance(rejected.value.__cause__, ConnectionError)
    shared = backend.store.breaker_load(name, policy_clock.now())
    assert shared.state is rs.CircuitState.OPEN and shared.version == 1
    assert shared.break_remaining > 50
    later = breaker()  # built after the trip: finds the break still running
    followers = [later]
    if isinstance(policy_clock, FakeClock):
        policy_clock.advance(2.0)  # past any cache's staleness; far from the break's end
        followers.append(other)
    elif backend.store.breaker_staleness == 0:
        followers.append(other)  # a store that pushes: no staleness to wait out
    for each in followers:
        with pytest.raises(rs.CircuitOpenError) as seen:
            each.call(int)
        assert seen.value.retry_after is not None and seen.value.retry_after > 50
    assert backend.store.breaker_load(name, policy_clock.now()).version == 1  # nobody probed


async def test_an_async_trip_holds_its_break(backend: Backend, policy_clock: Clock) -> None:
    name = fresh()
    breaker = rs.CircuitBreaker(
        name, failure_threshold=2, break_duration=100.0, store=backend.store, clock=policy_clock
    )
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await breaker.acall(_aboom)
    with pytest.raises(rs.CircuitOpenError) as rejected:
        async with breaker:
            pass
    assert rejected.value.retry_after is not None and rejected.value.retry_after > 50
    shared = await backend.store.abreaker_load(name, policy_clock.now())
    assert shared.state is rs.CircuitState.OPEN and shared.version == 1


def _half_open(backend: Backend, name: str, lease: float) -> tuple[rs.CircuitBreaker, FakeClock]:
    """A breaker whose circuit is HALF_OPEN on the store, with no permit taken yet."""
    clock = backend.clock if backend.clock is not None else FakeClock(FAR)
    breaker = rs.CircuitBreaker(
        name,
        failure_threshold=1,
        break_duration=1.0,
        probe_lease=lease,
        store=backend.store,
        clock=clock,
    )
    with pytest.raises(ConnectionError):
        breaker.call(_boom)
    clock.advance(1.0)
    won, snapshot = backend.store.breaker_transition(
        name,
        Transition(
            expected_version=1,
            state=CircuitState.HALF_OPEN,
            reason="break duration elapsed",
            trips=1,
            break_duration=0.0,
            now=clock.now(),
        ),
    )
    assert won and snapshot.version == 2
    return breaker, clock


def _until_lapsed(
    backend: Backend, clock: FakeClock, lease: float, probe: Callable[[], bool]
) -> None:
    """Let ``lease`` pass (on the store's clock) and check ``probe`` is then admitted."""
    if backend.exact:
        clock.advance(lease)
        assert probe()
        return
    # A server clock moves only in real time: poll, bounded, for the lease to lapse.
    import time

    give_up = time.monotonic() + 10 * lease + 5.0
    while not probe():
        assert time.monotonic() < give_up, "the probe permit never lapsed"
        time.sleep(lease / 4)


def test_a_probe_permit_held_by_a_dead_process_lapses(backend: Backend) -> None:
    name, lease = fresh(), 0.2
    breaker, clock = _half_open(backend, name, lease)
    # A process took the only permit, then died without handing it back.
    assert backend.store.breaker_acquire_probe(name, 2, 1, lease, clock.now())
    with pytest.raises(rs.CircuitOpenError):
        breaker.call(int)  # the permit is out: no second probe

    def admitted() -> bool:
        try:
            breaker.call(int)
        except rs.CircuitOpenError:
            return False
        return True

    _until_lapsed(backend, clock, lease, admitted)
    assert breaker.state is rs.CircuitState.CLOSED  # the probe succeeded and closed it


@pytest.mark.parametrize("steps", range(6))
async def test_a_probe_cancelled_at_any_await_point_cannot_wedge_the_circuit(
    backend: Backend, steps: int
) -> None:
    name, lease = fresh(), 0.2
    breaker, clock = _half_open(backend, name, lease)
    never = asyncio.Event()

    async def hang() -> None:
        await never.wait()

    task = asyncio.create_task(breaker.acall(hang))
    for _ in range(steps):
        await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, rs.CircuitOpenError):
        await task

    async def admitted() -> bool:
        try:
            await breaker.acall(asyncio.sleep, 0)
        except rs.CircuitOpenError:
            return False
        return True

    # Either the permit came back at once, or it lapses after the lease.
    if not await admitted():
        if backend.exact:
            clock.advance(lease)
            assert await admitted()
        else:
            give_up = asyncio.get_running_loop().time() + 10 * lease + 5.0
            while not await admitted():
                assert asyncio.get_running_loop().time() < give_up, "the permit never lapsed"
                await asyncio.sleep(lease / 4)
    assert breaker.state is rs.CircuitState.CLOSED


# -- keys a store cannot hold, and stores that lose their data -----------------------------------

BAD_KEYS = [
    "",
    "\x00",
    "a\x00b",
    "\ud800",  # a lone surrogate: no UTF-8 for it
    "x\udfffy",
    "'",
    '"',
    "'; DROP TABLE x; --",
    "{}",
    "{tag}",
    "%s %(x)s ?",
    "é" * 2000,  # past PostgreSQL's index limit in UTF-8
    "k" * 1_000_000,
]


def _outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "resilience.storage"]


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open", "local"])
def test_any_str_key_is_a_bucket_like_any_other(
    backend: Backend, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="resilience.storage")
    limiter = rs.RateLimiter(
        fresh(),
        rate=1,
        per=backend.interval(60.0),
        burst=2,
        store=backend.store,
        clock=backend.clock,
        on_store_failure=mode,  # type: ignore[arg-type]
    )
    for key in BAD_KEYS:
        granted = [limiter.try_acquire(key=key) for _ in range(3)]
        assert granted == [True, True, False], repr(key[:20])
    assert [limiter.try_acquire(key="honest") for _ in range(4)] == [True, True, False, False]
    assert _outage_lines(caplog) == []  # no key was taken for an outage


@pytest.mark.parametrize("key", [{}, 42, b"raw", ("a",), 1.5])
def test_a_key_that_is_not_a_str_is_refused_at_the_call(backend: Backend, key: Any) -> None:
    limiter = rs.RateLimiter(
        fresh(), rate=1, per=backend.interval(60.0), burst=1, store=backend.store
    )
    with pytest.raises(TypeError, match="key"):
        limiter.try_acquire(key=key)
    assert limiter.try_acquire(key="fine")


def test_a_breaker_follows_its_store_after_the_store_lost_the_circuit(backend: Backend) -> None:
    if backend.wipe is None:
        pytest.skip("the memory store cannot lose its data behind its users")
    clock = backend.clock if backend.clock is not None else FakeClock(FAR)
    name = fresh()

    def breaker() -> rs.CircuitBreaker:
        return rs.CircuitBreaker(
            name, failure_threshold=2, break_duration=100.0, store=backend.store, clock=clock
        )

    first, second = breaker(), breaker()
    for _ in range(2):
        with pytest.raises(ConnectionError):
            first.call(_boom)
    first.reset()  # the shared circuit is at version 2, closed
    assert first.call(int) == 0
    backend.wipe(name)  # the store restarts empty: version 0
    for _ in range(2):
        with pytest.raises(ConnectionError):
            first.call(_boom)  # the trip must not be lost on the version mismatch
    assert first.state is rs.CircuitState.OPEN
    assert backend.store.breaker_load(name, clock.now()).state is rs.CircuitState.OPEN
    clock.advance(2.0)  # past any cache's staleness
    with pytest.raises(rs.CircuitOpenError):
        second.call(int)


# -- more callers than a connection pool holds: back-pressure, never an outage ---------------

MODES = ["fail_closed", "fail_open", "local"]
CROWD_THREADS, CROWD_TASKS, CROWD_BURST = 150, 500, 40


def _crowd_limiter(backend: Backend, mode: str) -> rs.RateLimiter:
    return rs.RateLimiter(
        fresh(),
        rate=1,
        per=backend.interval(3600.0),  # nothing refills while the crowd runs
        burst=CROWD_BURST,
        store=backend.store,
        clock=backend.clock,
        on_store_failure=mode,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("mode", MODES)
def test_more_threads_than_connections_get_exactly_the_burst(
    backend: Backend, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    caplog.set_level(logging.INFO, logger="resilience.storage")
    limiter = _crowd_limiter(backend, mode)
    grants: list[bool] = []
    errors: list[BaseException] = []
    start = threading.Barrier(CROWD_THREADS)

    def caller() -> None:
        start.wait()
        for _ in range(3):
            try:
                grants.append(limiter.try_acquire())
            except BaseException as error:  # every error is a finding
                errors.append(error)

    threads = [threading.Thread(target=caller) for _ in range(CROWD_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60.0)
    assert errors == []
    assert sum(grants) == CROWD_BURST  # never more (fail_open), never fewer (spurious outages)
    assert len(grants) == 3 * CROWD_THREADS
    assert _outage_lines(caplog) == []


@pytest.mark.parametrize("mode", MODES)
async def test_more_tasks_than_connections_get_exactly_the_burst(
    backend: Backend, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="resilience.storage")
    limiter = _crowd_limiter(backend, mode)

    async def caller() -> int:
        try:
            await limiter.aacquire(timeout=0)
        except rs.RateLimitExceeded:
            return 0
        return 1

    results = await asyncio.gather(*(caller() for _ in range(CROWD_TASKS)), return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert sum(r for r in results if isinstance(r, int)) == CROWD_BURST
    assert _outage_lines(caplog) == []

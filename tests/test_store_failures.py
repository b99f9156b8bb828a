"""What limiters and breakers do while their shared store is unavailable.

``FlakyStore`` is a test double of our own storage protocols (not of any
database): it forwards to a :class:`MemoryStore` and raises
``StoreUnavailable`` while ``down``. The last tests cut a real PostgreSQL
connection with ``pg_terminate_backend``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import resilience as rs
from resilience.classify import ErrorClass
from resilience.storage import MemoryStore
from resilience.storage._guard import STORE_RETRY_INTERVAL
from resilience.storage.breakers import BreakerStore
from resilience.storage.buckets import BucketStore
from resilience.testing import FakeClock

from .backends import require_postgres

STORE_METHODS = [
    "bucket_take",
    "bucket_refund",
    "bucket_penalize",
    "bucket_tokens",
    "breaker_load",
    "breaker_transition",
    "breaker_acquire_probe",
    "breaker_release_probe",
]


class FlakyStore:
    """Both store protocols over a MemoryStore, failing on demand; breakers poll it."""

    breaker_staleness = 1.0

    def __init__(self, clock: FakeClock) -> None:
        self.inner = MemoryStore(clock)
        self.down = False
        self.calls = 0

    def check(self) -> None:
        self.calls += 1
        if self.down:
            raise rs.StoreUnavailable("flaky://", "connection refused")

    def breaker_watch(self, name: str, callback: Any) -> None:
        return None


def _forward(name: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    def method(self: FlakyStore, *args: Any) -> Any:
        self.check()
        return getattr(self.inner, name)(*args)

    async def amethod(self: FlakyStore, *args: Any) -> Any:
        self.check()
        return getattr(self.inner, name)(*args)

    return method, amethod


for _name in STORE_METHODS:
    _sync, _async = _forward(_name)
    setattr(FlakyStore, _name, _sync)
    setattr(FlakyStore, "a" + _name, _async)


@pytest.fixture
def clock() -> FakeClock:
    # Far from zero: a clock at 0 hid a breaker that skipped its break after a trip.
    return FakeClock(1_700_000_000.25)


@pytest.fixture
def store(clock: FakeClock) -> FlakyStore:
    flaky = FlakyStore(clock)
    assert isinstance(flaky, BucketStore) and isinstance(flaky, BreakerStore)
    return flaky


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "resilience.storage" and r.levelno == logging.WARNING
    ]


def test_store_unavailable_is_a_network_error() -> None:
    error = rs.StoreUnavailable("postgresql://db", "connection refused")
    assert isinstance(error, rs.ResilienceError)
    assert rs.classify(error).error_class is ErrorClass.NETWORK


def test_the_option_is_validated() -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        rs.RateLimiter("x", rate=1, on_store_failure="ignore")  # type: ignore[arg-type]
    assert "on_store_failure" in str(caught.value)
    with pytest.raises(rs.ConfigurationError):
        rs.CircuitBreaker("x", on_store_failure="maybe")  # type: ignore[arg-type]


def test_memory_stores_are_not_wrapped() -> None:
    limiter = rs.RateLimiter("x", rate=1, store=MemoryStore())
    assert limiter._take_one is not None  # the fast path is intact
    assert type(limiter._store) is MemoryStore


# -- rate limiter -------------------------------------------------------------------------


def test_limiter_fails_closed_by_default(
    store: FlakyStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "resilience.storage")
    limiter = rs.RateLimiter("l", rate=1, per=60.0, burst=2, store=store, clock=clock)
    assert limiter.try_acquire()
    store.down = True
    for _ in range(5):
        with pytest.raises(rs.StoreUnavailable):
            limiter.try_acquire()
        with pytest.raises(rs.StoreUnavailable) as caught:
            limiter.acquire()
    assert caught.value.store == "flaky://"
    assert store.calls == 2  # one success, then one failure: the rest backed off
    assert len(warnings_in(caplog)) == 1  # once per outage, not per call
    assert "refusing calls" in warnings_in(caplog)[0]
    clock.advance(STORE_RETRY_INTERVAL)
    store.down = False
    assert limiter.try_acquire()  # recovered: the shared bucket again
    assert not limiter.try_acquire()
    assert any("available again" in r.getMessage() for r in caplog.records)


def test_limiter_fail_open_grants(store: FlakyStore, clock: FakeClock) -> None:
    limiter = rs.RateLimiter(
        "l", rate=10, burst=1, store=store, clock=clock, on_store_failure="fail_open"
    )
    store.down = True
    assert all(limiter.try_acquire() for _ in range(20))
    limiter.acquire(cost=1)
    assert limiter.tokens() == 1.0
    limiter.penalize(5.0)  # nowhere to put it: ignored
    store.down = False
    clock.advance(STORE_RETRY_INTERVAL)
    assert limiter.try_acquire() and not limiter.try_acquire()


async def test_limiter_local_fallback_limits_in_process(
    store: FlakyStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = rs.RateLimiter(
        "l", rate=1, per=1.0, burst=2, store=store, clock=clock, on_store_failure="local"
    )
    assert limiter.try_acquire()  # shared bucket: 1 left there
    store.down = True
    assert limiter.try_acquire() and limiter.try_acquire()  # local bucket: full at first
    assert not limiter.try_acquire()
    with pytest.raises(rs.RateLimitExceeded):
        await limiter.aacquire(timeout=0)
    await limiter.aacquire()  # waits on the local bucket (virtual time)
    assert clock.slept > 0
    assert "falling back" in warnings_in(caplog)[0]
    store.down = False
    clock.advance(STORE_RETRY_INTERVAL)
    # Back on the shared bucket, which refilled meanwhile.
    assert limiter.tokens() == 2.0
    assert store.inner.bucket_count("l") == 1


async def test_limiter_async_fail_closed_and_composite(store: FlakyStore, clock: FakeClock) -> None:
    a = rs.RateLimiter("a", rate=1, burst=1, store=store, clock=clock, on_store_failure="local")
    b = rs.RateLimiter("b", rate=1, burst=5, store=store, clock=clock)
    both = rs.RateLimiter.all(a, b)
    store.down = True
    assert both.try_acquire()  # the first limiter's policy: local
    assert not both.try_acquire()
    with pytest.raises(rs.StoreUnavailable):
        await b.aacquire()


def test_a_refund_during_an_outage_never_raises() -> None:
    class Interrupt(Exception):
        pass

    class InterruptedClock(FakeClock):
        """The store goes down while a caller sleeps, and the sleep is interrupted."""

        __slots__ = ("store",)

        def sleep(self, seconds: float) -> None:
            self.store.down = True
            raise Interrupt

    clock = InterruptedClock()
    store = FlakyStore(clock)
    clock.store = store
    limiter = rs.RateLimiter("l", rate=1, burst=1, store=store, clock=clock)
    limiter.acquire()
    with pytest.raises(Interrupt):  # not StoreUnavailable from the refund
        limiter.acquire(timeout=5)
    assert store.calls == 3  # take, take (reserved), the refund that failed


# -- circuit breaker -------------------------------------------------------------------------


def _fail() -> None:
    raise ConnectionError("dependency down")


def test_breaker_fails_closed_when_it_cannot_check_the_store(
    store: FlakyStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = rs.CircuitBreaker("b", failure_threshold=2, store=store, clock=clock)
    assert breaker.call(lambda: 1) == 1
    store.down = True
    assert breaker.call(lambda: 2) == 2  # within the staleness: the cached state will do
    clock.advance(store.breaker_staleness)
    for _ in range(3):
        with pytest.raises(rs.StoreUnavailable):
            breaker.call(lambda: 3)
    assert breaker.statistics.rejections == 3
    assert len(warnings_in(caplog)) == 1
    store.down = False
    clock.advance(STORE_RETRY_INTERVAL)
    assert breaker.call(lambda: 4) == 4


def test_breaker_construction_survives_an_outage(store: FlakyStore, clock: FakeClock) -> None:
    store.down = True
    breaker = rs.CircuitBreaker("b", store=store, clock=clock, on_store_failure="fail_open")
    assert breaker.call(lambda: 1) == 1  # fail_open: runs unguarded
    with pytest.raises(rs.StoreUnavailable):
        breaker.isolate()  # a fleet-wide change cannot be made without the store
    store.down = False
    clock.advance(STORE_RETRY_INTERVAL)
    breaker.isolate()
    with pytest.raises(rs.CircuitOpenError):
        breaker.call(lambda: 2)


def test_breaker_fail_open_lets_calls_through(store: FlakyStore, clock: FakeClock) -> None:
    breaker = rs.CircuitBreaker(
        "b", failure_threshold=1, store=store, clock=clock, on_store_failure="fail_open"
    )
    store.down = True
    clock.advance(5.0)
    assert [breaker.call(int, n) for n in range(3)] == [0, 1, 2]
    with pytest.raises(ConnectionError):
        breaker.call(_fail)
    assert breaker.call(lambda: 9) == 9


async def test_breaker_local_fallback_then_adopts_the_shared_circuit(
    store: FlakyStore, clock: FakeClock
) -> None:
    breaker = rs.CircuitBreaker(
        "b",
        failure_threshold=2,
        break_duration=10.0,
        store=store,
        clock=clock,
        on_store_failure="local",
    )
    other = rs.CircuitBreaker(
        "b", failure_threshold=2, break_duration=10.0, store=store, clock=clock
    )
    store.down = True
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(_fail)
    assert breaker.state is rs.CircuitState.OPEN  # opened locally
    with pytest.raises(rs.CircuitOpenError):
        await breaker.acall(_async_value)
    # Meanwhile, the fleet's circuit (which this process could not reach) was isolated.
    store.down = False
    other.isolate()
    clock.advance(STORE_RETRY_INTERVAL + store.breaker_staleness)
    with pytest.raises(rs.CircuitOpenError):
        breaker.call(lambda: 1)
    assert breaker.state is rs.CircuitState.FORCED_OPEN  # the shared circuit won
    other.reset()
    clock.advance(store.breaker_staleness)
    assert breaker.call(lambda: 2) == 2
    # Versions keep moving consistently: a trip here is seen by the other breaker.
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(_fail)
    clock.advance(store.breaker_staleness)
    with pytest.raises(rs.CircuitOpenError):
        other.call(lambda: 3)


async def _async_value() -> int:
    return 1


@pytest.mark.parametrize("down", [False, True], ids=["store up", "store down"])
def test_a_local_breaker_holds_its_break_after_a_trip(
    store: FlakyStore, clock: FakeClock, down: bool
) -> None:
    breaker = rs.CircuitBreaker(
        "b",
        failure_threshold=2,
        break_duration=100.0,
        store=store,
        clock=clock,
        on_store_failure="local",
    )
    store.down = down
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(_fail)
    assert breaker.retry_after is not None and breaker.retry_after > 50
    clock.advance(STORE_RETRY_INTERVAL + store.breaker_staleness)  # reloads, retries the store
    with pytest.raises(rs.CircuitOpenError) as rejected:
        breaker.call(lambda: 1)  # not a probe: the break has 98 s to go
    assert rejected.value.retry_after is not None and rejected.value.retry_after > 50


async def test_breaker_async_fail_closed(store: FlakyStore, clock: FakeClock) -> None:
    breaker = rs.CircuitBreaker("b", store=store, clock=clock)
    store.down = True
    clock.advance(5.0)
    with pytest.raises(rs.StoreUnavailable):
        await breaker.acall(_async_value)
    with pytest.raises(rs.StoreUnavailable):
        async with breaker:
            pass


# -- a real PostgreSQL connection, cut from the server side ------------------------------------


def _terminate(dsn: str, pids: list[int]) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


@pytest.mark.backend
@pytest.mark.parametrize("mode", ["fail_closed", "fail_open", "local"])
def test_postgres_connection_loss(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    from resilience.storage.postgres import PostgresStore

    dsn = require_postgres()
    store = PostgresStore(dsn, table="resilience_test")
    clock = FakeClock()
    name = f"loss-{uuid.uuid4().hex}"
    limiter = rs.RateLimiter(
        name, rate=1, per=3600.0, burst=3, store=store, clock=clock, on_store_failure=mode
    )
    try:
        assert limiter.try_acquire()
        pids = store.backend_pids()
        assert pids
        _terminate(dsn, pids)
        # The first call finds the connection dead: the configured behaviour.
        if mode == "fail_closed":
            with pytest.raises(rs.StoreUnavailable) as caught:
                limiter.try_acquire()
            assert caught.value.store.startswith("postgresql://")
            assert isinstance(caught.value.__cause__, psycopg.Error)
        elif mode == "fail_open":
            assert all(limiter.try_acquire() for _ in range(5))
        else:
            assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
        assert len(warnings_in(caplog)) == 1
        # After the back-off the store reconnects, and the shared bucket is intact.
        clock.advance(STORE_RETRY_INTERVAL)
        assert limiter.try_acquire() and limiter.try_acquire()
        assert not limiter.try_acquire()
        assert store.backend_pids() != pids
    finally:
        store.close()


@pytest.mark.backend
async def test_postgres_async_connection_loss_breaker() -> None:
    from resilience.storage.postgres import PostgresStore

    dsn = require_postgres()
    store = PostgresStore(dsn, table="resilience_test", breaker_staleness=0.5)
    clock = FakeClock()
    name = f"loss-{uuid.uuid4().hex}"
    breaker = rs.CircuitBreaker(
        name, failure_threshold=1, store=store, clock=clock, on_store_failure="local"
    )
    try:
        assert await breaker.acall(_async_value) == 1
        await store.abreaker_load(name, 0.0)  # opens this loop's async connection
        _terminate(dsn, store.backend_pids())
        clock.advance(1.0)
        assert await breaker.acall(_async_value) == 1  # served by the local circuit
        clock.advance(STORE_RETRY_INTERVAL)
        with pytest.raises(ConnectionError):
            await breaker.acall(_async_fail)
        assert breaker.state is rs.CircuitState.OPEN
        snapshot = await store.abreaker_load(name, 0.0)
        assert snapshot.state is rs.CircuitState.OPEN  # shared again, after reconnecting
    finally:
        await store.aclose()


async def _async_fail() -> None:
    raise ConnectionError("dependency down")


def test_a_failed_probe_reopens_without_handing_its_permit_back() -> None:
    """Otherwise another process could take the freed permit before the circuit
    re-opens: one probe more than ``half_open_calls`` in a lost half-open period."""
    from resilience.storage.breakers import MemoryBreakerStore

    class Recording(MemoryBreakerStore):
        def __init__(self) -> None:
            super().__init__()
            self.released: list[bool | None] = []

        def breaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
            self.released.append(succeeded)
            return super().breaker_release_probe(name, version, succeeded)

    clock, store = FakeClock(), Recording()
    first, second, third = (
        rs.CircuitBreaker(
            "p",
            failure_threshold=1,
            break_duration=1.0,
            half_open_calls=2,
            store=store,
            clock=clock,
        )
        for _ in range(3)
    )
    with pytest.raises(ConnectionError):
        first.call(_fail)
    clock.advance(1.0)
    # Two probes at once (first, then second inside it); both fail.
    with pytest.raises(ConnectionError), first, second:
        raise ConnectionError("still down")
    assert store.released == []  # neither failed probe handed a permit back
    assert first.state is rs.CircuitState.OPEN
    with pytest.raises(rs.CircuitOpenError):
        third.call(int)  # no third probe

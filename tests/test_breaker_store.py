"""The breaker storage protocol, on the memory store, and a breaker on a polling store."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable

import pytest

import resilience as rs
from resilience.breaker import CircuitBreaker, CircuitState
from resilience.storage.breakers import (
    BreakerStore,
    CircuitSnapshot,
    MemoryBreakerStore,
    Transition,
)
from resilience.testing import FakeClock

OPEN, HALF_OPEN, CLOSED = CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED


def test_memory_store_implements_the_protocol() -> None:
    store = MemoryBreakerStore()
    assert isinstance(store, BreakerStore)
    assert store.breaker_staleness == 0.0


def test_memory_store_is_ready_for_multiple_inheritance() -> None:
    class OtherStore:
        def __init__(self) -> None:
            super().__init__()
            self._limiter_buckets: dict[str, int] = {}

    class Combined(MemoryBreakerStore, OtherStore):
        pass

    store = Combined()
    assert store.breaker_load("x", 0.0).state is CLOSED
    assert store._limiter_buckets == {}  # both __init__s ran
    assert all(name.startswith(("_breaker_", "_limiter_")) for name in vars(store))


def test_unknown_circuit_is_closed_at_version_zero() -> None:
    snapshot = MemoryBreakerStore().breaker_load("new", 5.0)
    assert snapshot == CircuitSnapshot(CLOSED, 0, 0, "initial state", 0.0)


def test_transition_is_compare_and_set_on_the_version() -> None:
    store = MemoryBreakerStore()
    won, snapshot = store.breaker_transition(
        "c",
        Transition(
            expected_version=0,
            state=OPEN,
            reason="tripped",
            trips=1,
            break_duration=10.0,
            now=100.0,
        ),
    )
    assert won
    assert snapshot == CircuitSnapshot(OPEN, 1, 1, "tripped", 10.0)
    lost, current = store.breaker_transition(
        "c",
        Transition(
            expected_version=0, state=OPEN, reason="me too", trips=1, break_duration=10.0, now=101.0
        ),
    )
    assert not lost
    assert current == CircuitSnapshot(OPEN, 1, 1, "tripped", 9.0)  # the winner's, 1 s later
    assert store.breaker_load("c", 120.0).break_remaining == 0.0
    assert store.breaker_load("other", 0.0).version == 0  # circuits are independent


def test_probe_permits_are_bounded_and_belong_to_a_version() -> None:
    store = MemoryBreakerStore()
    assert not store.breaker_acquire_probe("c", 0, 5, None, 0.0)  # not half-open
    store.breaker_transition(
        "c",
        Transition(
            expected_version=0,
            state=HALF_OPEN,
            reason="probing",
            trips=1,
            break_duration=0.0,
            now=0.0,
        ),
    )
    assert store.breaker_acquire_probe("c", 1, 2, None, 0.0)
    assert store.breaker_acquire_probe("c", 1, 2, None, 0.0)
    assert not store.breaker_acquire_probe("c", 1, 2, None, 0.0)
    assert not store.breaker_acquire_probe("c", 0, 2, None, 0.0)  # stale version
    assert store.breaker_release_probe("c", 1, True) == 1
    assert store.breaker_release_probe("c", 1, None) == 1  # no verdict: just the permit back
    assert store.breaker_acquire_probe("c", 1, 2, None, 0.0)
    store.breaker_transition(
        "c",
        Transition(
            expected_version=1, state=CLOSED, reason="closed", trips=0, break_duration=0.0, now=0.0
        ),
    )
    assert store.breaker_release_probe("c", 1, True) == -1  # the circuit moved on
    store.breaker_transition(
        "c",
        Transition(
            expected_version=2,
            state=HALF_OPEN,
            reason="probing",
            trips=1,
            break_duration=0.0,
            now=0.0,
        ),
    )
    assert store.breaker_acquire_probe("c", 3, 1, None, 0.0)  # a transition drops all permits


async def test_async_twins() -> None:
    store = MemoryBreakerStore()
    won, _ = await store.abreaker_transition(
        "c",
        Transition(
            expected_version=0,
            state=HALF_OPEN,
            reason="probing",
            trips=1,
            break_duration=0.0,
            now=0.0,
        ),
    )
    assert won
    assert await store.abreaker_acquire_probe("c", 1, 1, None, 0.0)
    assert await store.abreaker_release_probe("c", 1, False) == 0
    assert (await store.abreaker_load("c", 0.0)).state is HALF_OPEN


def test_watchers_are_told_and_can_unsubscribe() -> None:
    store = MemoryBreakerStore()
    seen: list[CircuitSnapshot] = []
    unwatch = store.breaker_watch("c", seen.append)
    store.breaker_transition(
        "c",
        Transition(
            expected_version=0, state=OPEN, reason="tripped", trips=1, break_duration=5.0, now=0.0
        ),
    )
    unwatch()
    unwatch()  # idempotent
    store.breaker_transition(
        "c",
        Transition(
            expected_version=1, state=CLOSED, reason="reset", trips=0, break_duration=0.0, now=0.0
        ),
    )
    assert [s.state for s in seen] == [OPEN]


def test_a_dropped_breaker_is_not_kept_alive_by_a_shared_store() -> None:
    store = MemoryBreakerStore()
    breaker = CircuitBreaker("c", store=store)
    ref = weakref.ref(breaker)
    del breaker
    gc.collect()
    assert ref() is None
    store.breaker_transition(
        "c",
        Transition(
            expected_version=0, state=OPEN, reason="tripped", trips=1, break_duration=5.0, now=0.0
        ),
    )  # no dead callback called


def test_a_new_breaker_adopts_the_shared_state_without_telling_listeners() -> None:
    clock = FakeClock()
    store = MemoryBreakerStore()
    first = CircuitBreaker("c", failure_threshold=1, break_duration=10.0, store=store, clock=clock)
    with pytest.raises(ConnectionError):
        first.call(_raise)
    clock.advance(4.0)
    changes: list[object] = []
    late = CircuitBreaker(
        "c",
        store=store,
        clock=clock,
        on_state_change=lambda *change: changes.append(change),
    )
    assert late.state is OPEN
    assert late.retry_after == 6.0
    assert changes == []
    late.reset()
    assert first.state is CLOSED


def _raise() -> None:
    raise ConnectionError


class PollingStore(MemoryBreakerStore):
    """A store that cannot push changes, like a plain SQL table."""

    breaker_staleness = 5.0

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    def breaker_watch(
        self, name: str, callback: Callable[[CircuitSnapshot], None]
    ) -> Callable[[], None] | None:
        return None

    def breaker_load(self, name: str, now: float) -> CircuitSnapshot:
        self.loads += 1
        return super().breaker_load(name, now)


def test_polling_store_staleness_is_bounded() -> None:
    clock = FakeClock()
    store = PollingStore()
    here = CircuitBreaker("c", failure_threshold=1, store=store, clock=clock)
    there = CircuitBreaker("c", failure_threshold=1, store=store, clock=clock)
    assert here.call(lambda: 1) == 1
    loads = store.loads
    with pytest.raises(ConnectionError):
        there.call(_raise)
    assert there.state is OPEN
    assert here.call(lambda: 2) == 2  # still within its staleness: trusts its copy
    assert store.loads == loads
    clock.advance(5.0)
    with pytest.raises(rs.CircuitOpenError):
        here.call(lambda: 3)  # reloaded: now it knows
    assert here.state is OPEN
    assert store.loads == loads + 1


async def test_polling_store_async_path() -> None:
    clock = FakeClock()
    store = PollingStore()
    here = CircuitBreaker("c", failure_threshold=1, store=store, clock=clock)
    there = CircuitBreaker("c", failure_threshold=1, store=store, clock=clock)

    async def work() -> int:
        return 1

    assert await here.acall(work) == 1
    there.isolate()
    clock.advance(5.0)
    with pytest.raises(rs.CircuitOpenError):
        await here.acall(work)


class BrokenStore(MemoryBreakerStore):
    """A store whose transitions fail, like a network store during an outage."""

    def breaker_transition(self, *args: object, **kwargs: object) -> tuple[bool, CircuitSnapshot]:
        raise rs.StoreUnavailable("broken://", "connection refused")


def test_a_store_failure_never_masks_the_callers_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaker = CircuitBreaker("c", failure_threshold=1, store=BrokenStore(), clock=FakeClock())
    error = ConnectionError("the real problem")
    with pytest.raises(ConnectionError) as caught:
        breaker.call(_raise_this(error))
    assert caught.value is error
    assert "could not record an outcome" in caplog.text
    assert breaker.state is CLOSED  # the transition did not happen


def test_a_store_failure_in_manual_control_propagates() -> None:
    clock = FakeClock()
    store = BrokenStore()
    breaker = CircuitBreaker("c", store=store, clock=clock)
    with pytest.raises(rs.StoreUnavailable):
        breaker.isolate()


def _raise_this(error: BaseException) -> Callable[[], None]:
    def raiser() -> None:
        raise error

    return raiser

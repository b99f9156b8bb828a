"""The circuit breaker's drivers in every form: decorator, ``acall``, ``async with``.

Written once, async; scripts/unasync.py generates the sync twin in tests/_sync,
so both drivers are held to the same behaviour line for line: the closed
fast path and its checked twin, tripping, probing, manual control, the
with-block, and what a breaker does while its store is down.
Timing on FakeClock only, started far from zero as a real monotonic clock is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

import resilience as rs
from resilience import CircuitState
from resilience.testing import FakeClock

from ..test_store_failures import FlakyStore

T0 = 1_700_000_000.25
FORMS = ["decorator", "call", "block"]
"""How a test drives the breaker: the decorator, ``acall``, or ``async with``."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


async def ok() -> str:
    return "ok"


async def boom() -> str:
    raise ConnectionError("down")


async def run(breaker: rs.CircuitBreaker, form: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` through ``breaker`` in the given form."""
    if form == "decorator":
        return await breaker(fn)()
    if form == "call":
        return await breaker.acall(fn)
    async with breaker:
        return await fn()


async def fails(breaker: rs.CircuitBreaker, form: str, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(ConnectionError):
            await run(breaker, form, boom)


def changes(breaker: rs.CircuitBreaker) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    breaker.add_listener(lambda old, new, reason: seen.append((new.value, reason)))
    return seen


@pytest.mark.parametrize("form", FORMS)
async def test_consecutive_failures_open_the_circuit(clock: FakeClock, form: str) -> None:
    breaker = rs.CircuitBreaker("p", failure_threshold=2, break_duration=10.0, clock=clock)
    seen = changes(breaker)
    await fails(breaker, form, 2)
    assert breaker.state is CircuitState.OPEN
    assert seen == [("open", "2 consecutive failures reached failure_threshold")]
    with pytest.raises(rs.CircuitOpenError) as refused:
        await run(breaker, form, ok)
    assert refused.value.retry_after == 10.0
    assert isinstance(refused.value.opened_by, ConnectionError)
    stats = breaker.statistics
    assert (stats.failures, stats.rejections, stats.state_changes) == (2, 1, 1)


@pytest.mark.parametrize("form", FORMS)
async def test_a_success_resets_the_streak(clock: FakeClock, form: str) -> None:
    breaker = rs.CircuitBreaker("p", failure_threshold=2, clock=clock)
    for _ in range(3):
        await fails(breaker, form)
        assert await run(breaker, form, ok) == "ok"
    assert breaker.state is CircuitState.CLOSED
    assert breaker.statistics.successes == 3


@pytest.mark.parametrize("form", ["decorator", "call"])
async def test_returned_values_are_judged(clock: FakeClock, form: str) -> None:
    breaker = rs.CircuitBreaker(
        "p", failure_threshold=2, failure_if_result=lambda value: value == "bad", clock=clock
    )

    async def bad() -> str:
        return "bad"

    assert await run(breaker, form, bad) == "bad"
    assert breaker.state is CircuitState.CLOSED
    assert await run(breaker, form, bad) == "bad"
    assert breaker.state is CircuitState.OPEN


@pytest.mark.parametrize("form", FORMS)
async def test_slow_calls_count_as_failures(clock: FakeClock, form: str) -> None:
    breaker = rs.CircuitBreaker("p", failure_threshold=1, slow_call_duration=1.0, clock=clock)

    async def slow() -> str:
        clock.advance(1.5)
        return "late"

    assert await run(breaker, form, ok) == "ok"
    assert await run(breaker, form, slow) == "late"
    assert breaker.state is CircuitState.OPEN
    assert breaker.statistics.slow_calls == 1


@pytest.mark.parametrize("form", FORMS)
async def test_a_success_can_trip_a_ratio_window(clock: FakeClock, form: str) -> None:
    breaker = rs.CircuitBreaker("p", failure_ratio=0.5, window_size=4, minimum_calls=2, clock=clock)
    await fails(breaker, form)
    assert breaker.state is CircuitState.CLOSED  # one call: below minimum_calls
    assert await run(breaker, form, ok) == "ok"  # 1 failure in 2 calls reaches 0.5
    assert breaker.state is CircuitState.OPEN


@pytest.mark.parametrize("form", FORMS)
async def test_probes_close_or_reopen_the_circuit(clock: FakeClock, form: str) -> None:
    breaker = rs.CircuitBreaker(
        "p", failure_threshold=1, break_duration=10.0, break_multiplier=2.0, clock=clock
    )
    seen = changes(breaker)
    await fails(breaker, form)
    clock.advance(10.0)
    await fails(breaker, form)  # the probe fails: open again, for twice as long
    assert breaker.state is CircuitState.OPEN and breaker.retry_after == 20.0
    clock.advance(20.0)
    assert await run(breaker, form, ok) == "ok"
    assert breaker.state is CircuitState.CLOSED
    assert [state for state, _ in seen] == ["open", "half_open", "open", "half_open", "closed"]
    assert seen[-1] == ("closed", "1 probe call succeeded")


@pytest.mark.parametrize("form", FORMS)
async def test_probes_beyond_half_open_calls_are_refused(clock: FakeClock, form: str) -> None:
    breaker = rs.CircuitBreaker(
        "p", failure_threshold=1, break_duration=1.0, half_open_calls=2, clock=clock
    )
    await fails(breaker, form)
    clock.advance(1.0)
    refused: list[BaseException] = []

    async def third() -> str:
        try:
            await run(breaker, form, ok)
        except rs.CircuitOpenError as error:
            refused.append(error)
        return "second"

    async def second() -> str:
        # Inside the first probe, a second one is admitted; inside it, a third refused.
        assert await run(breaker, form, third) == "second"
        return "first"

    assert await run(breaker, form, second) == "first"
    assert len(refused) == 1 and refused[0].retry_after is None
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize("form", FORMS)
async def test_an_interrupted_probe_keeps_the_circuit_half_open(
    clock: FakeClock, form: str
) -> None:
    breaker = rs.CircuitBreaker("p", failure_threshold=1, break_duration=1.0, clock=clock)
    await fails(breaker, form)
    clock.advance(1.0)

    async def interrupted() -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await run(breaker, form, interrupted)
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.statistics.ignored == 1
    assert await run(breaker, form, ok) == "ok"  # the permit came back
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize("form", FORMS)
async def test_manual_control(clock: FakeClock, form: str) -> None:
    breaker = rs.CircuitBreaker("p", failure_threshold=1, clock=clock)
    await breaker.aisolate()
    assert breaker.state is CircuitState.FORCED_OPEN
    with pytest.raises(rs.CircuitOpenError) as refused:
        await run(breaker, form, ok)
    assert refused.value.retry_after is None and refused.value.opened_by is None
    await breaker.adisable()
    await fails(breaker, form, 3)  # let through, recorded nowhere
    assert breaker.state is CircuitState.DISABLED
    assert breaker.statistics.failures == 0
    await breaker.areset()
    assert breaker.state is CircuitState.CLOSED
    assert await run(breaker, form, ok) == "ok"


async def test_with_blocks_nest_and_exit_needs_an_enter(clock: FakeClock) -> None:
    breaker = rs.CircuitBreaker("p", failure_threshold=2, clock=clock)
    async with breaker:
        assert breaker.statistics.calls == 0  # counted on the way out
        await fails(breaker, "block")
    assert breaker.statistics.failures == 1 and breaker.statistics.successes == 1
    with pytest.raises(RuntimeError, match="without __enter__"):
        await breaker.__aexit__(None, None, None)


async def test_a_with_block_on_a_timed_breaker_is_admitted_and_timed(clock: FakeClock) -> None:
    breaker = rs.CircuitBreaker("p", failure_threshold=1, slow_call_duration=1.0, clock=clock)
    async with breaker:
        clock.advance(2.0)
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(rs.CircuitOpenError):
        await run(breaker, "block", ok)


# -- while the shared store is down ----------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
async def test_fail_closed_refuses_what_needs_the_store(clock: FakeClock, form: str) -> None:
    store = FlakyStore(clock)
    breaker = rs.CircuitBreaker("p", failure_threshold=1, store=store, clock=clock)
    store.down = True
    clock.advance(5.0)  # the cached snapshot is stale: a call needs the store
    with pytest.raises(rs.StoreUnavailable):
        await run(breaker, form, ok)
    assert breaker.statistics.rejections == 1


@pytest.mark.parametrize("form", FORMS)
async def test_fail_open_runs_calls_unrecorded(clock: FakeClock, form: str) -> None:
    store = FlakyStore(clock)
    breaker = rs.CircuitBreaker(
        "p", failure_threshold=1, store=store, clock=clock, on_store_failure="fail_open"
    )
    store.down = True
    clock.advance(5.0)
    await fails(breaker, form, 2)
    assert await run(breaker, form, ok) == "ok"
    assert breaker.state is CircuitState.CLOSED
    assert breaker.statistics.calls == 0


@pytest.mark.parametrize("form", FORMS)
async def test_a_trip_that_cannot_be_shared_is_logged_not_raised(
    clock: FakeClock, form: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore(clock)
    breaker = rs.CircuitBreaker("p", failure_threshold=1, store=store, clock=clock)
    store.down = True
    caplog.set_level(logging.DEBUG, logger="resilience.breaker")
    # Admitted from the fresh snapshot; the trip then fails to reach the store.
    await fails(breaker, form)
    assert breaker.state is CircuitState.CLOSED
    assert any("outcome not shared" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("form", FORMS)
async def test_local_mode_goes_on_in_process(clock: FakeClock, form: str) -> None:
    store = FlakyStore(clock)
    breaker = rs.CircuitBreaker(
        "p",
        failure_threshold=1,
        break_duration=10.0,
        store=store,
        clock=clock,
        on_store_failure="local",
    )
    store.down = True
    await fails(breaker, form)
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(rs.CircuitOpenError):
        await run(breaker, form, ok)
    clock.advance(10.0)
    assert await run(breaker, form, ok) == "ok"
    assert breaker.state is CircuitState.CLOSED

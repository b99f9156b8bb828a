"""Composition order with a circuit breaker, observed on the FakeClock.

* retry outside a breaker: an open circuit's ``retry_after`` is waited out;
* breaker outside a retry: one failure per exhausted retry, not per attempt;
* a deadline (Timeout) bounds what a retry waits for an open breaker.
"""

from __future__ import annotations

import pytest

import resilience as rs
from resilience.breaker import CircuitBreaker, CircuitState
from resilience.pipeline import Pipeline
from resilience.testing import FakeClock
from resilience.timeout import Timeout


class Flaky:
    def __init__(self, failures: int, clock: FakeClock) -> None:
        self.failures = failures
        self.clock = clock
        self.calls: list[float] = []

    def __call__(self) -> str:
        self.calls.append(self.clock.now())
        if len(self.calls) <= self.failures:
            raise ConnectionError(f"failure {len(self.calls)}")
        return "ok"

    async def acall(self) -> str:
        return self()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def parts(clock: FakeClock) -> tuple[rs.Retry, CircuitBreaker]:
    retry = rs.Retry(attempts=4, backoff=rs.Backoff.constant(0.1), clock=clock)
    breaker = CircuitBreaker("db", failure_threshold=2, break_duration=10.0, clock=clock)
    return retry, breaker


def test_retry_outside_a_breaker_waits_out_retry_after(clock: FakeClock) -> None:
    flaky = Flaky(2, clock)
    retry, breaker = parts(clock)
    assert Pipeline(retry, breaker).call(flaky) == "ok"
    # two failures open the circuit at 0.1 s; the third attempt (0.2 s) is rejected
    # with retry_after 9.9 s, which the retry waits before its fourth attempt.
    assert clock.sleeps == pytest.approx([0.1, 0.1, 9.9])
    assert flaky.calls == pytest.approx([0.0, 0.1, 10.1])
    assert breaker.state is CircuitState.CLOSED
    assert breaker.statistics.rejections == 1


async def test_async_retry_outside_a_breaker_waits_out_retry_after(clock: FakeClock) -> None:
    flaky = Flaky(2, clock)
    retry, breaker = parts(clock)
    assert await Pipeline(retry, breaker).acall(flaky.acall) == "ok"
    assert clock.sleeps == pytest.approx([0.1, 0.1, 9.9])


def test_breaker_outside_a_retry_counts_one_failure_per_exhausted_retry(
    clock: FakeClock,
) -> None:
    flaky = Flaky(100, clock)
    retry, breaker = parts(clock)
    pipeline = Pipeline(breaker, retry)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            pipeline.call(flaky)
    assert len(flaky.calls) == 8  # 2 calls x 4 attempts
    assert breaker.statistics.failures == 2
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(rs.CircuitOpenError):
        pipeline.call(flaky)
    assert len(flaky.calls) == 8  # rejected before the retry ran at all


async def test_async_breaker_outside_a_retry_counts_one_failure_per_exhausted_retry(
    clock: FakeClock,
) -> None:
    flaky = Flaky(100, clock)
    retry, breaker = parts(clock)
    pipeline = Pipeline(breaker, retry)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await pipeline.acall(flaky.acall)
    assert breaker.statistics.failures == 2
    with pytest.raises(rs.CircuitOpenError):
        await pipeline.acall(flaky.acall)


def test_a_deadline_bounds_the_wait_for_an_open_breaker(clock: FakeClock) -> None:
    flaky = Flaky(2, clock)
    retry, breaker = parts(clock)
    pipeline = Pipeline(Timeout(5.0, clock=clock), retry, breaker)
    with pytest.raises(rs.CircuitOpenError):
        pipeline.call(flaky)
    # the 9.9 s wait for the breaker would pass the 5 s deadline: the retry stops.
    assert clock.sleeps == pytest.approx([0.1, 0.1])
    assert clock.now() < 5.0

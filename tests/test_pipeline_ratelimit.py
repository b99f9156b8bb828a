"""Composition order with a rate limiter, observed on the FakeClock.

* retry outside a limiter: a rejection's ``retry_after`` is waited out;
* limiter outside a retry: one token per call, however many attempts it makes.
"""

from __future__ import annotations

import pytest

import resilience as rs
from resilience.config import http_pipeline
from resilience.pipeline import Pipeline
from resilience.ratelimit import RateLimiter
from resilience.testing import FakeClock
from resilience.timeout import Timeout


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def no_wait_limiter(clock: FakeClock) -> RateLimiter:
    # one token every 2 s, and no waiting: an empty bucket rejects at once
    return RateLimiter("api", rate=1, per=2.0, burst=1, max_wait=0, clock=clock)


def test_retry_outside_a_limiter_waits_out_retry_after(clock: FakeClock) -> None:
    limiter = no_wait_limiter(clock)
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(0.1), clock=clock)
    pipeline = Pipeline(retry, limiter)
    assert pipeline.call(lambda: "first") == "first"
    assert pipeline.call(lambda: "second") == "second"
    assert clock.sleeps == [2.0]  # the rejection said: retry after 2 s
    assert limiter.statistics.rejected == 1


async def test_async_retry_outside_a_limiter_waits_out_retry_after(clock: FakeClock) -> None:
    limiter = no_wait_limiter(clock)
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(0.1), clock=clock)
    pipeline = Pipeline(retry, limiter)

    async def work() -> str:
        return "done"

    assert await pipeline.acall(work) == "done"
    assert await pipeline.acall(work) == "done"
    assert clock.sleeps == [2.0]


def test_limiter_outside_a_retry_takes_one_token_per_call(clock: FakeClock) -> None:
    limiter = RateLimiter("api", rate=10, per=1.0, burst=10, max_wait=0, clock=clock)
    retry = rs.Retry(attempts=4, backoff=rs.Backoff.constant(0.0), clock=clock)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) % 4:
            raise ConnectionError
        return "ok"

    assert Pipeline(limiter, retry).call(flaky) == "ok"
    assert len(calls) == 4
    assert limiter.statistics.acquired == 1


def test_http_pipeline_with_a_rate_limiter_in_front(clock: FakeClock) -> None:
    pipeline = http_pipeline(rate_limiter={"rate": 100, "per": 1.0}, clock=clock)
    assert [type(policy).__name__ for policy in pipeline] == [
        "RateLimiter",
        "Bulkhead",
        "Timeout",
        "Retry",
        "CircuitBreaker",
        "Timeout",
    ]
    assert pipeline[0].name == "http.rate_limiter"
    assert pipeline.call(lambda: 42) == 42


def test_a_limiter_inside_a_timeout_never_waits_past_the_deadline() -> None:
    clock = FakeClock()
    limiter = RateLimiter("deadline", rate=1, per=2.0, clock=clock)  # waits without limit
    pipeline = Pipeline(Timeout(0.5, clock=clock), limiter)
    assert pipeline.call(lambda: "first") == "first"
    with pytest.raises(rs.RateLimitExceeded) as caught:
        pipeline.call(lambda: "never")
    assert caught.value.retry_after == pytest.approx(2.0)
    assert clock.sleeps == []  # it could not be served in time: it failed at once


async def test_a_limiter_inside_a_timeout_never_waits_past_the_deadline_async() -> None:
    clock = FakeClock()
    limiter = RateLimiter("deadline", rate=1, per=0.4, clock=clock)
    pipeline = Pipeline(Timeout(0.5, clock=clock), limiter)

    async def op() -> str:
        return "ok"

    assert await pipeline.acall(op) == "ok"
    assert await pipeline.acall(op) == "ok"  # 0.4 s fits in the 0.5 s budget: it waits
    assert clock.sleeps == [pytest.approx(0.4)]

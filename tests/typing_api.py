"""The public API as mypy sees it: checked by ``mypy --strict`` in .ci/run, never run.

Each line marked ``# type: ignore[code]`` is a mistake a user could make that
mypy must catch: ``--strict`` includes ``--warn-unused-ignores``, so if mypy
stopped reporting one of them, the unused ignore would fail the check. The
other lines are correct uses that must type-check cleanly, with the types
``assert_type`` states.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from typing import assert_type

import resilience as rs
from resilience.testing import FakeClock

clock = FakeClock(1_700_000_000.25)

# -- retry ---------------------------------------------------------------------------


@rs.with_retry
def fetch(url: str) -> bytes:
    return url.encode()


@rs.with_retry(attempts=5, deadline=datetime.timedelta(seconds=30), clock=clock)
async def fetch_async(url: str) -> bytes:
    return url.encode()


assert_type(fetch("x"), bytes)
fetch(1)  # type: ignore[arg-type]


async def use_fetch_async() -> None:
    assert_type(await fetch_async("x"), bytes)
    await fetch_async(1)  # type: ignore[arg-type]


rs.with_retry(attemps=2)  # type: ignore[call-overload]
rs.with_retry(attempts="2")  # type: ignore[call-overload]
rs.with_retry(deadline="ten seconds")  # type: ignore[call-overload]

retry = rs.Retry(attempts=3, backoff=rs.Backoff.exponential(0.1, 10.0), max_delay=5.0)
rs.Retry(attempts=3, deadline=datetime.timedelta(minutes=1))
rs.Retry(attemps=3)  # type: ignore[call-arg]
rs.Retry(deadline="ten seconds")  # type: ignore[arg-type]
rs.Retry(backoff=1.0)  # type: ignore[arg-type]
rs.Retry.default(attempts=4, deadline=datetime.timedelta(seconds=5))
rs.Retry.default(attemps=4)  # type: ignore[call-arg]
rs.Retry.fast(deadline="soon")  # type: ignore[arg-type]

decision = retry.decide(2, ValueError("boom"), elapsed=1.5)
assert_type(decision, rs.RetryDecision)
assert_type(decision.retry, bool)
assert_type(decision.delay, float | None)
assert_type(retry.call(fetch, "x"), bytes)
retry.call(fetch, 1)  # type: ignore[arg-type]

# -- circuit breaker --------------------------------------------------------------------

breaker = rs.CircuitBreaker("payments", failure_threshold=5, break_duration=15.0, clock=clock)
rs.CircuitBreaker("payments", break_duration=datetime.timedelta(seconds=15))
rs.CircuitBreaker("x", window="ten seconds")  # type: ignore[arg-type]
rs.CircuitBreaker("x", failure_treshold=5)  # type: ignore[call-arg]
rs.CircuitBreaker(name=5)  # type: ignore[arg-type]
assert_type(breaker.state, rs.CircuitState)


@breaker
def charge(amount: int) -> str:
    return str(amount)


assert_type(charge(5), str)

# -- rate limiter ----------------------------------------------------------------------

limiter = rs.RateLimiter("emails", rate=100, per=60.0, burst=100, clock=clock)
rs.RateLimiter("emails", rate=100, per=datetime.timedelta(minutes=1))
rs.RateLimiter("emails", rate=100, per="a minute")  # type: ignore[arg-type]
assert_type(limiter.try_acquire(), bool)
assert_type(limiter.try_acquire(key="user-1", cost=2), bool)
limiter.acquire(timeout=datetime.timedelta(seconds=1))
limiter.acquire(timeout="1s")  # type: ignore[arg-type]

# -- timeout, bulkhead, fallback, pipeline -----------------------------------------------

rs.Timeout(10.0)
rs.Timeout(datetime.timedelta(seconds=10))
rs.Timeout("ten")  # type: ignore[arg-type]
rs.Bulkhead(max_concurrent=10, max_queued=0, max_wait=datetime.timedelta(seconds=1))
rs.Bulkhead(max_concurrent=10, max_wait="1s")  # type: ignore[arg-type]
rs.Bulkhead(max_concurent=10)  # type: ignore[call-arg]
rs.Fallback(value=b"")
rs.Fallback(b"", name=3)  # type: ignore[arg-type]
rs.CachedFallback(max_age=datetime.timedelta(minutes=5), max_entries=10)
rs.CachedFallback(max_age="5 minutes")  # type: ignore[arg-type]

pipeline = rs.Pipeline(rs.Timeout(30.0), retry, breaker, limiter)
rs.Pipeline(retry, "breaker")  # type: ignore[arg-type]
assert_type(pipeline.call(fetch, "x"), bytes)


@pipeline
def protected(n: int) -> int:
    return n


assert_type(protected(1), int)
protected("1")  # type: ignore[arg-type]


async def use_async(afn: Callable[[int], Awaitable[int]]) -> None:
    assert_type(await pipeline.acall(afn, 1), int)
    assert_type(await limiter.aacquire(), None)


# -- classification, storage --------------------------------------------------------------

classification = rs.classify(TimeoutError())
assert_type(classification.error_class, rs.ErrorClass)
assert_type(classification.retry_after, float | None)
rs.store_from_url("memory://")
rs.store_from_url(5)  # type: ignore[arg-type]

# -- registry -----------------------------------------------------------------------------

from resilience.registry import Registry  # noqa: E402

registry = Registry(clock=clock)
assert_type(registry.retry("fetch", attempts=3), rs.Retry)
assert_type(registry.breaker("payments"), rs.CircuitBreaker)
assert_type(registry.rate_limiter("emails", rate=10), rs.RateLimiter)

# -- durable jobs -------------------------------------------------------------------------

from resilience.jobs import Batch, BatchProgress, Job, JobQueue, QueueStats, RunCounts  # noqa: E402

jobs = JobQueue("emails", store="memory://", retry=rs.Retry(attempts=5))
JobQueue("emails", store="memory://", lease="30")  # type: ignore[arg-type]
JobQueue("emails", stor="memory://")  # type: ignore[call-arg]


@jobs.handler
def send_email(to: str) -> None:
    pass


@jobs.handler(timeout=30.0, concurrency=5)
async def send_async(to: str) -> None:
    pass


send_email("a")  # the handler is the function itself, still callable
send_email(1)  # type: ignore[arg-type]
assert_type(jobs.enqueue(send_email, to="a", key="k", priority=2), int)
assert_type(jobs.run_once(limit=50), RunCounts)
assert_type(jobs.job(1), Job | None)
assert_type(jobs.stats(), QueueStats)
assert_type(jobs.dead_letters(), list[Job])
assert_type(jobs.replay(1), bool)
assert_type(jobs.enqueue_batch(send_email, [{"to": "a"}]), Batch)
assert_type(jobs.batch("b").progress(), BatchProgress)
jobs.enqueue(send_email, priority="high")  # type: ignore[arg-type]
jobs.jobs(state="lost")  # type: ignore[arg-type]

# A classifier given as a mapping literal of exception types (its keys narrower than BaseException).
rs.Retry(classifier={ConnectionError: rs.ErrorClass.NETWORK})
rs.CircuitBreaker("db", classifier=[{TimeoutError: "timeout"}, lambda error: None])

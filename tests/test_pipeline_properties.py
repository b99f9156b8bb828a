"""Hypothesis: pipelines built from arbitrary valid options never run past their
deadline on the FakeClock.

A pipeline is a ``Timeout`` around any stack of retries, timeouts, bulkheads,
fallbacks, circuit breakers and rate limiters (which wait for tokens up to
their ``max_wait``, unbounded or not, but never past the deadline). The operation
takes a scripted time on the virtual clock and fails or succeeds as scripted.
Whatever the stack:

* no policy ever sleeps past the outer deadline;
* an attempt only ever starts before it, so the call ends at most one attempt's
  duration after it (exactly at it when attempts take no time);
* the outcome is the operation's value, a fallback's, the operation's own
  error, a rejection, or ``TimeoutExceeded``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import resilience as rs
from resilience.breaker import CircuitBreaker
from resilience.bulkhead import Bulkhead
from resilience.fallback import Fallback
from resilience.pipeline import Pipeline
from resilience.ratelimit import RateLimiter
from resilience.testing import FakeClock, strategies
from resilience.timeout import Timeout

EPSILON = 1e-9  # float rounding of virtual time


class WatchedClock(FakeClock):
    """Records where every sleep ends."""

    def __init__(self) -> None:
        super().__init__()
        self.sleep_ends: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleep_ends.append(self.now() + max(0.0, seconds))
        super().sleep(seconds)


@dataclass
class Script:
    """The operation: attempt i takes durations[i] seconds and fails if failures[i]."""

    durations: list[float]
    failures: list[bool]
    clock: WatchedClock
    starts: list[float] = field(default_factory=list)

    def __call__(self) -> str:
        index = len(self.starts) % len(self.durations)
        self.starts.append(self.clock.now())
        self.clock.advance(self.durations[index])
        if self.failures[index]:
            raise ConnectionError(f"attempt {len(self.starts)}")
        return "value"

    async def acall(self) -> str:
        await asyncio.sleep(0)
        return self()


@st.composite
def inner_policies(draw: st.DrawFn, clock: FakeClock) -> Any:
    kind = draw(
        st.sampled_from(["retry", "timeout", "bulkhead", "fallback", "breaker", "rate_limiter"])
    )
    if kind == "retry":
        options = draw(strategies.retry_options())
        options.pop("retry_on", None)  # ConnectionError must stay retryable
        return rs.Retry(**options, clock=clock)
    if kind == "timeout":
        return Timeout(draw(st.floats(min_value=0.001, max_value=100.0)), clock=clock)
    if kind == "bulkhead":
        return Bulkhead(draw(st.integers(1, 5)), draw(st.integers(0, 5)))
    if kind == "breaker":
        return CircuitBreaker(
            "b",
            failure_threshold=draw(st.integers(1, 5)),
            break_duration=draw(st.floats(min_value=0.001, max_value=100.0)),
            clock=clock,
        )
    if kind == "rate_limiter":
        return RateLimiter(
            "l",
            rate=draw(st.floats(min_value=0.01, max_value=100.0)),
            per=draw(st.floats(min_value=0.01, max_value=100.0)),
            burst=draw(st.integers(1, 5)),
            max_wait=draw(st.none() | st.floats(min_value=0.0, max_value=1000.0)),
            clock=clock,
        )
    return Fallback("fallback")


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[WatchedClock, float, Pipeline, Script]:
    clock = WatchedClock()
    total = draw(st.floats(min_value=0.01, max_value=100.0))
    inner = draw(st.lists(inner_policies(clock), max_size=4))
    size = draw(st.integers(1, 6))
    timed = draw(st.booleans())
    durations = draw(
        st.lists(
            st.floats(min_value=0.0, max_value=20.0) if timed else st.just(0.0),
            min_size=size,
            max_size=size,
        )
    )
    failures = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    pipeline = Pipeline(Timeout(total, clock=clock), *inner)
    return clock, total, pipeline, Script(durations, failures, clock)


REJECTIONS = (rs.CircuitOpenError, rs.RateLimitExceeded)


def check(clock: WatchedClock, total: float, script: Script, outcome: object) -> None:
    assert outcome in ("value", "fallback") or isinstance(
        outcome, ConnectionError | rs.TimeoutExceeded | rs.CircuitOpenError | rs.RateLimitExceeded
    ), outcome
    for end in clock.sleep_ends:
        assert end <= total + EPSILON, (end, total)
    for start in script.starts[1:]:
        assert start < total + EPSILON
    assert clock.now() <= total + max(script.durations) + EPSILON


def run_sync(pipeline: Pipeline, script: Script) -> object:
    try:
        return pipeline.call(script)
    except (ConnectionError, rs.TimeoutExceeded, *REJECTIONS) as error:
        return error


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_never_past_the_deadline(scenario: tuple[WatchedClock, float, Pipeline, Script]) -> None:
    clock, total, pipeline, script = scenario
    check(clock, total, script, run_sync(pipeline, script))


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_async_never_past_the_deadline(
    scenario: tuple[WatchedClock, float, Pipeline, Script],
) -> None:
    clock, total, pipeline, script = scenario

    async def run() -> object:
        try:
            return await pipeline.acall(script.acall)
        except (ConnectionError, rs.TimeoutExceeded, *REJECTIONS) as error:
            return error

    check(clock, total, script, asyncio.run(run()))


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_with_instant_attempts_the_call_ends_by_the_deadline(
    scenario: tuple[WatchedClock, float, Pipeline, Script],
) -> None:
    clock, total, pipeline, script = scenario
    script.durations = [0.0] * len(script.durations)
    outcome = run_sync(pipeline, script)
    assert clock.now() <= total + EPSILON
    assert not isinstance(outcome, rs.TimeoutExceeded)

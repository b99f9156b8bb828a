"""Pipeline: order, nesting, sync/async, call/acall, and composition order made
observable with real policies. Timing on FakeClock only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import pytest

import resilience as rs
from resilience.bulkhead import Bulkhead
from resilience.fallback import Fallback
from resilience.pipeline import Pipeline
from resilience.telemetry.otel import CallObserver
from resilience.testing import FakeClock
from resilience.timeout import Timeout

P = ParamSpec("P")
R = TypeVar("R")


class Recorder(rs.Policy):
    """A policy that logs when it is entered and left."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.wrapped = 0

    # A custom policy implements the protection alone: the base class adds the
    # call's span and metrics when it decorates (see docs/pipeline.md).
    def wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        self.wrapped += 1

        def recorded(*args: P.args, **kwargs: P.kwargs) -> R:
            self.log.append(f"{self.name}>")
            try:
                return fn(*args, **kwargs)
            finally:
                self.log.append(f"<{self.name}")

        return recorded

    def wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        self.wrapped += 1

        async def recorded(*args: P.args, **kwargs: P.kwargs) -> R:
            self.log.append(f"{self.name}>")
            try:
                return await fn(*args, **kwargs)
            finally:
                self.log.append(f"<{self.name}")

        return recorded


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_the_first_policy_is_the_outermost() -> None:
    log: list[str] = []
    pipeline = Pipeline(Recorder("a", log), Recorder("b", log), Recorder("c", log))

    @pipeline
    def work(x: int) -> int:
        log.append("work")
        return x * 2

    assert work(21) == 42
    assert log == ["a>", "b>", "c>", "work", "<c", "<b", "<a"]
    assert work.policy is pipeline  # type: ignore[attr-defined]
    assert work.__name__ == "work"


async def test_async_the_first_policy_is_the_outermost() -> None:
    log: list[str] = []
    pipeline = Pipeline(Recorder("a", log), Recorder("b", log))

    @pipeline
    async def work() -> str:
        log.append("work")
        return "done"

    assert await work() == "done"
    assert log == ["a>", "b>", "work", "<b", "<a"]


def test_pipelines_nest() -> None:
    log: list[str] = []
    inner = Pipeline(Recorder("b", log), Recorder("c", log))
    outer = Pipeline(Recorder("a", log), inner, Recorder("d", log))
    assert outer.call(lambda: log.append("work")) is None
    assert log == ["a>", "b>", "c>", "d>", "work", "<d", "<c", "<b", "<a"]


def test_wrapping_happens_once_at_decoration_and_call_reuses_it() -> None:
    log: list[str] = []
    recorder = Recorder("a", log)
    pipeline = Pipeline(recorder)
    work = pipeline(lambda: 1)
    for _ in range(5):
        work()
    assert recorder.wrapped == 1

    def target() -> int:
        return 2

    for _ in range(5):
        assert pipeline.call(target) == 2
    assert recorder.wrapped == 2


async def test_acall_reuses_the_chain() -> None:
    recorder = Recorder("a", [])
    pipeline = Pipeline(recorder)

    async def target(x: int) -> int:
        return x

    for number in range(3):
        assert await pipeline.acall(target, number) == number
    assert recorder.wrapped == 1


def test_an_empty_pipeline_calls_through() -> None:
    assert Pipeline().call(lambda x: x + 1, 1) == 2
    assert len(Pipeline()) == 0


async def test_async_an_empty_pipeline_calls_through() -> None:
    async def one() -> int:
        return 1

    assert await Pipeline().acall(one) == 1


def test_only_policies_are_accepted() -> None:
    with pytest.raises(TypeError, match=r"policies\[1\]"):
        Pipeline(Timeout(1.0), lambda fn: fn)  # type: ignore[arg-type]


def test_pipeline_is_a_sequence_of_its_policies() -> None:
    retry, timeout = rs.Retry(), Timeout(1.0)
    pipeline = Pipeline(timeout, retry, name="p")
    assert list(pipeline) == [timeout, retry]
    assert pipeline[1] is retry
    assert "Timeout" in repr(pipeline)
    assert "name='p'" in repr(pipeline)


# -- composition order, observed ----------------------------------------------------------


class Flaky:
    def __init__(self, failures: int, clock: FakeClock, duration: float = 0.0) -> None:
        self.failures = failures
        self.clock = clock
        self.duration = duration
        self.calls: list[float] = []

    def __call__(self) -> str:
        self.calls.append(self.clock.now())
        self.clock.advance(self.duration)
        if len(self.calls) <= self.failures:
            raise ConnectionError(f"failure {len(self.calls)}")
        return "ok"

    async def acall(self) -> str:
        return self()


def test_timeout_outside_retry_bounds_the_whole_call(clock: FakeClock) -> None:
    flaky = Flaky(10, clock, duration=1.0)
    retry = rs.Retry(attempts=10, backoff=rs.Backoff.constant(1.0), clock=clock)
    with pytest.raises(ConnectionError):
        Pipeline(Timeout(5.0, clock=clock), retry).call(flaky)
    # each attempt takes 1 s and waits 1 s: attempts at 0, 2 and 4; the third
    # ends at 5 s, the deadline, so no wait follows it.
    assert flaky.calls == [0.0, 2.0, 4.0]
    assert clock.sleeps == [1.0, 1.0]
    assert clock.now() == 5.0


def test_timeout_inside_retry_bounds_each_attempt(clock: FakeClock) -> None:
    flaky = Flaky(2, clock, duration=3.0)  # every attempt overruns 2 s
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(0.5), clock=clock)
    pipeline = Pipeline(retry, Timeout(2.0, clock=clock, name="attempt"))
    with pytest.raises(rs.TimeoutExceeded) as caught:
        pipeline.call(flaky)
    assert caught.value.name == "attempt"
    assert len(flaky.calls) == 3  # each timed-out attempt is retried (TIMEOUT class)


def test_fallback_outside_retry_answers_after_the_retries(clock: FakeClock) -> None:
    flaky = Flaky(10, clock)
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(1.0), clock=clock)
    assert Pipeline(Fallback("cached"), retry).call(flaky) == "cached"
    assert len(flaky.calls) == 3


def test_fallback_inside_retry_hides_the_errors_from_it(clock: FakeClock) -> None:
    flaky = Flaky(10, clock)
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(1.0), clock=clock)
    assert Pipeline(retry, Fallback("cached")).call(flaky) == "cached"
    assert len(flaky.calls) == 1
    assert retry.statistics.retries == 0


def test_retry_outside_a_bulkhead_retries_its_rejections(clock: FakeClock) -> None:
    bulkhead = Bulkhead(1)
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(1.0), clock=clock)
    pipeline = Pipeline(retry, bulkhead)
    with bulkhead, pytest.raises(rs.BulkheadFull):  # the only slot is taken
        pipeline.call(lambda: "never")
    assert bulkhead.statistics.rejections == 3
    assert pipeline.call(lambda: "now") == "now"


async def test_async_fallback_outside_timeout_outside_retry(clock: FakeClock) -> None:
    flaky = Flaky(10, clock, duration=1.0)
    retry = rs.Retry(attempts=10, backoff=rs.Backoff.constant(1.0), clock=clock)
    pipeline = Pipeline(Fallback("degraded"), Timeout(5.0, clock=clock), retry)
    assert await pipeline.acall(flaky.acall) == "degraded"
    assert flaky.calls == [0.0, 2.0, 4.0]


class ObservedRecorder(Recorder):
    """A Recorder noting how it is wrapped: with the call's observer, or without."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__(name, log)
        self.observers: list[object] = []

    def wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        self.observers.append(None)
        return super().wrap_sync(fn)

    def wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        self.observers.append(None)
        return super().wrap_async(fn)

    def _wrap_sync(self, fn: Callable[P, R], observer: CallObserver) -> Callable[P, R]:
        self.observers.append(observer)
        return Recorder.wrap_sync(self, fn)

    def _wrap_async(
        self, fn: Callable[P, Awaitable[R]], observer: CallObserver
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        self.observers.append(observer)
        return Recorder.wrap_async(self, fn)


async def test_decorating_gives_the_outermost_policy_the_pipelines_observer() -> None:
    log: list[str] = []
    outer, inner = ObservedRecorder("a", log), ObservedRecorder("b", log)
    pipeline = Pipeline(outer, inner, name="checkout")

    @pipeline
    def work() -> int:
        return 1

    @pipeline
    async def awork() -> int:
        return 2

    assert work() == 1
    assert await awork() == 2
    assert inner.observers == [None, None]  # one span for the whole pipeline
    assert [type(o).__name__ for o in outer.observers] == ["CallObserver", "CallObserver"]
    # call/acall: the decorator's span too, through the same outermost policy.
    assert pipeline.call(lambda: 3) == 3
    assert type(outer.observers[-1]).__name__ == "CallObserver"
    assert inner.observers[-1] is None

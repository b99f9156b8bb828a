"""Retry's drivers in every form: call, decorator (plain and with a deadline), block.

Written once, async; scripts/unasync.py generates the sync twin in tests/_sync.
Timing on FakeClock only, started far from zero as a real monotonic clock is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import resilience as rs
from resilience import telemetry
from resilience._deadline import DEADLINE
from resilience.retry import RetryInfo, RetryStatistics
from resilience.telemetry import events
from resilience.testing import FakeClock, testing_mode

EC = rs.ErrorClass
NO_WAIT = rs.Backoff.constant(0)
T0 = 1_700_000_000.25

FORMS = ["call", "decorator", "block"]
"""How a test drives the retry: ``acall``, the decorator, or the block form."""


class Flaky:
    """Fails with ``error`` the first ``failures`` times, then returns ``value``;
    each attempt takes ``duration`` seconds of ``clock``."""

    def __init__(
        self,
        failures: int,
        error: Callable[[], BaseException] = ConnectionError,
        value: Any = "ok",
        clock: FakeClock | None = None,
        duration: float = 0.0,
    ) -> None:
        self.failures = failures
        self.error = error
        self.value = value
        self.calls = 0
        self.raised: list[BaseException] = []
        self.clock = clock
        self.duration = duration

    async def __call__(self, *args: Any) -> Any:
        self.calls += 1
        await asyncio.sleep(0)  # unasync: async only
        if self.clock is not None and self.duration:
            self.clock.advance(self.duration)
        if self.calls <= self.failures:
            error = self.error()
            self.raised.append(error)
            raise error
        return self.value if not args else (self.value, *args)


async def run(retry: rs.Retry, fn: Any, form: str, *args: Any) -> Any:
    """``fn(*args)`` retried by ``retry`` in ``form``."""
    if form == "call":
        return await retry.acall(fn, *args)
    if form == "decorator":

        async def target(*inner: Any) -> Any:
            return await fn(*inner)

        return await retry(target)(*args)
    value = None
    async for attempt in retry:
        async with attempt:
            value = await fn(*args)
            attempt.set_result(value)
    return value


@pytest.fixture
def received() -> Iterator[list[events.Event]]:
    seen: list[events.Event] = []
    unsubscribe = telemetry.subscribe(seen.append)
    yield seen
    unsubscribe()


# -- retrying and giving up ----------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
async def test_retries_until_success_with_exact_schedule(form: str) -> None:
    clock = FakeClock(T0)
    schedule = rs.Backoff.schedule([1, 5, 30, 300, 1800])
    retry = rs.Retry(attempts=6, backoff=schedule, clock=clock, name="email")
    flaky = Flaky(5)
    assert await run(retry, flaky, form) == "ok"
    assert flaky.calls == 6
    assert clock.sleeps == [1, 5, 30, 300, 1800]


@pytest.mark.parametrize("form", ["call", "decorator"])
async def test_arguments_reach_the_function(form: str) -> None:
    retry = rs.Retry(attempts=3, backoff=NO_WAIT)
    assert await run(retry, Flaky(1), form, 4) == ("ok", 4)


@pytest.mark.parametrize("form", FORMS)
async def test_gives_up_with_the_last_original_exception_and_a_note(form: str) -> None:
    clock = FakeClock(T0)
    flaky = Flaky(10, clock=clock, duration=0.5)
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(1.0), clock=clock, name="db")
    with pytest.raises(ConnectionError) as caught:
        await run(retry, flaky, form)
    assert caught.value is flaky.raised[-1]
    assert flaky.calls == 3
    # Without a deadline the decorator reads no clock before the first attempt
    # (its success path is one call): its elapsed time starts at the first failure.
    elapsed = "3.000s" if form == "decorator" else "3.500s"
    assert caught.value.__notes__ == [
        f"resilience: retry 'db' gave up after 3 attempts over {elapsed} (attempts exhausted)"
    ]
    # Unchanged: no chaining to earlier attempts' exceptions.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


@pytest.mark.parametrize("form", FORMS)
async def test_permanent_errors_are_not_retried_and_get_no_note(form: str) -> None:
    flaky = Flaky(1, error=lambda: ValueError("bad input"))
    retry = rs.Retry(attempts=5, backoff=NO_WAIT)
    with pytest.raises(ValueError, match="bad input") as caught:
        await run(retry, flaky, form)
    assert flaky.calls == 1
    assert not getattr(caught.value, "__notes__", [])
    assert retry.statistics.give_ups == 1


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "error", [KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError]
)
async def test_base_exceptions_are_never_retried(form: str, error: type[BaseException]) -> None:
    flaky = Flaky(3, error=error)
    retry = rs.Retry(attempts=5, backoff=NO_WAIT)
    with pytest.raises(error):
        await run(retry, flaky, form)
    assert flaky.calls == 1
    assert retry.statistics.give_ups == 0


async def test_retry_on_narrows_by_class_type_or_predicate() -> None:
    timeout_only = rs.Retry(attempts=3, backoff=NO_WAIT, retry_on=[EC.TIMEOUT])
    flaky = Flaky(1, error=ConnectionError)
    with pytest.raises(ConnectionError):
        await timeout_only.acall(flaky)
    assert flaky.calls == 1
    assert await timeout_only.acall(Flaky(1, error=TimeoutError)) == "ok"

    by_type = rs.Retry(attempts=3, backoff=NO_WAIT, retry_on=[KeyError])
    assert await by_type.acall(Flaky(2, error=lambda: KeyError("k"))) == "ok"

    by_predicate = rs.Retry(attempts=3, backoff=NO_WAIT, retry_on=lambda e: "again" in str(e))
    assert await by_predicate.acall(Flaky(1, error=lambda: RuntimeError("again"))) == "ok"
    with pytest.raises(RuntimeError):
        await by_predicate.acall(Flaky(1, error=lambda: RuntimeError("stop")))


async def test_user_classifier_and_mapping() -> None:
    class QuotaError(Exception):
        pass

    retry = rs.Retry(attempts=3, backoff=NO_WAIT, classifier={QuotaError: EC.PERMANENT})
    flaky = Flaky(1, error=QuotaError)
    with pytest.raises(QuotaError):
        await retry.acall(flaky)
    assert flaky.calls == 1


# -- deadlines -----------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
async def test_never_sleeps_past_the_deadline(form: str) -> None:
    clock = FakeClock(T0)
    retry = rs.Retry(attempts=10, backoff=rs.Backoff.constant(4.0), deadline=10.0, clock=clock)
    flaky = Flaky(100, clock=clock, duration=1.0)
    with pytest.raises(ConnectionError) as caught:
        await run(retry, flaky, form)
    # t=1 fail, sleep 4 -> t=5: attempt 2 fails at 6; waiting 4 more would reach the
    # deadline itself, leaving no time to try: give up instead.
    assert clock.sleeps == [4.0]
    assert flaky.calls == 2
    assert "next wait would pass the deadline" in caught.value.__notes__[0]


@pytest.mark.parametrize("form", ["call", "decorator"])
async def test_a_retry_deadline_bounds_what_runs_inside(form: str) -> None:
    clock = FakeClock(T0)
    limiter = rs.RateLimiter("inner", rate=1, per=30.0, clock=clock)  # waits without limit
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(0.1), deadline=5.0, clock=clock)
    seen: list[float | None] = []

    async def op() -> str:
        seen.append(rs.remaining_time())
        await limiter.aacquire()
        return "ok"

    assert await run(retry, op, form) == "ok"
    with pytest.raises(rs.RateLimitExceeded):
        await run(retry, op, form)  # the next token is 30 s away: past the 5 s deadline
    assert clock.sleeps == []  # neither the limiter nor the retry waited in vain
    assert seen[0] == 5.0
    assert rs.remaining_time() is None  # the retry's deadline ends with its call


@pytest.mark.parametrize("form", FORMS)
async def test_an_enclosing_deadline_is_never_slept_into(form: str) -> None:
    clock = FakeClock(T0)
    retry = rs.Retry(attempts=5, backoff=rs.Backoff.constant(4.0), deadline=60.0, clock=clock)
    seen: list[float | None] = []

    async def op() -> str:
        seen.append(rs.remaining_time())
        raise ConnectionError("down")

    scope = DEADLINE.set((clock.now() + 3.0, clock, "outer", 3.0))
    try:
        with pytest.raises(ConnectionError) as caught:
            await run(retry, op, form)
    finally:
        DEADLINE.reset(scope)
    assert clock.sleeps == []  # 4 s would pass the outer deadline, 3 s away
    assert "next wait would pass the deadline" in caught.value.__notes__[0]
    assert seen == [3.0]  # the tighter of the two deadlines flows inward


# -- Retry-After, max_delay, backoff per class ----------------------------------------------


@pytest.mark.parametrize("form", FORMS)
async def test_retry_after_is_honoured_and_bounded_by_the_cap(form: str) -> None:
    clock = FakeClock(T0)
    backoff = rs.Backoff.exponential(0.1, 20.0, jitter="none")
    retry = rs.Retry(attempts=3, backoff=backoff, clock=clock)
    assert await run(retry, Flaky(1, error=lambda: rs.RateLimitExceeded("api", 7.0)), form)
    assert clock.sleeps == [7.0]
    clock.sleeps.clear()
    assert await run(retry, Flaky(1, error=lambda: rs.RateLimitExceeded("api", 120.0)), form)
    assert clock.sleeps == [20.0]  # bounded by the backoff's cap


async def test_retry_after_beyond_the_deadline_gives_up() -> None:
    clock = FakeClock(T0)
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(0.1), deadline=5.0, clock=clock)
    with pytest.raises(rs.RateLimitExceeded):
        await retry.acall(Flaky(1, error=lambda: rs.RateLimitExceeded("api", 60.0)))
    assert clock.sleeps == []


async def test_retry_after_can_be_ignored() -> None:
    clock = FakeClock(T0)
    retry = rs.Retry(
        attempts=2, backoff=rs.Backoff.constant(0.5), clock=clock, respect_retry_after=False
    )
    await retry.acall(Flaky(1, error=lambda: rs.RateLimitExceeded("api", 60.0)))
    assert clock.sleeps == [0.5]


@pytest.mark.parametrize("form", FORMS)
async def test_max_delay_clamps_every_wait(form: str) -> None:
    clock = FakeClock(T0)
    retry = rs.Retry(
        attempts=4, backoff=rs.Backoff.schedule([1, 50, 50]), max_delay=2.0, clock=clock
    )
    await run(retry, Flaky(3), form)
    assert clock.sleeps == [1, 2.0, 2.0]


@pytest.mark.parametrize("form", FORMS)
async def test_backoff_per_error_class(form: str) -> None:
    clock = FakeClock(T0)
    retry = rs.Retry(
        attempts=5,
        backoff=rs.Backoff.constant(1.0),
        backoff_by_class={
            EC.RATE_LIMITED: rs.Backoff.constant(30.0),
            "timeout": {"kind": "constant", "delay": 5.0},
        },
        clock=clock,
    )
    errors = iter([TimeoutError(), ConnectionError(), rs.RateLimitExceeded("x")])

    async def fn() -> str:
        error = next(errors, None)
        if error is not None:
            raise error
        return "ok"

    assert await run(retry, fn, form) == "ok"
    assert clock.sleeps == [5.0, 1.0, 30.0]


# -- results -------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
async def test_retry_if_result_retries_then_returns_the_last_result(form: str) -> None:
    clock = FakeClock(T0)
    results = iter([None, None, "done"])

    async def poll() -> str | None:
        return next(results)

    retry = rs.Retry(
        attempts=5, backoff=rs.Backoff.constant(1), clock=clock, retry_if_result=lambda r: r is None
    )
    assert await run(retry, poll, form) == "done"
    assert clock.sleeps == [1, 1]

    async def negative() -> int:
        return -1

    retry = rs.Retry(attempts=2, backoff=NO_WAIT, retry_if_result=lambda r: r < 0)
    assert await run(retry, negative, form) == -1  # gave up: the last result is returned
    assert retry.statistics == RetryStatistics(
        calls=1, attempts=2, retries=1, successes=0, give_ups=1
    )


@pytest.mark.parametrize("form", FORMS)
async def test_results_stop_at_the_deadline(form: str) -> None:
    clock = FakeClock(T0)
    results = iter([0, 0, 0, 0, 5])

    async def poll() -> int:
        clock.advance(1)
        return next(results)

    retry = rs.Retry(
        attempts=10,
        backoff=rs.Backoff.constant(2),
        deadline=7,
        clock=clock,
        retry_if_result=lambda r: r == 0,
    )
    assert await run(retry, poll, form) == 0  # deadline reached before the 5 arrives
    assert clock.sleeps == [2, 2]  # t=1 +2, t=4 +2, t=7: no time left


async def test_block_form_numbers_its_attempts() -> None:
    clock = FakeClock(T0)
    retry = rs.Retry(attempts=4, backoff=rs.Backoff.constant(1), clock=clock)
    flaky = Flaky(2)
    seen = []
    async for attempt in retry:
        async with attempt:
            seen.append(attempt.number)
            await flaky()
    assert seen == [1, 2, 3]
    assert repr(attempt) == "<Attempt 3>"
    assert clock.sleeps == [1, 1]


async def test_block_form_without_a_result_is_a_success() -> None:
    retry = rs.Retry(attempts=3, backoff=NO_WAIT, retry_if_result=lambda r: r is None)
    numbers = []
    async for attempt in retry:
        async with attempt:
            numbers.append(attempt.number)  # no set_result: nothing to judge
    assert numbers == [1]
    assert retry.statistics.successes == 1


# -- hooks, events and statistics ------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
async def test_hooks_receive_attempt_delay_and_exception(form: str) -> None:
    clock = FakeClock(T0)
    retries: list[RetryInfo] = []
    give_ups: list[RetryInfo] = []
    retry = rs.Retry(
        attempts=3,
        backoff=rs.Backoff.schedule([2, 4]),
        clock=clock,
        name="h",
        on_retry=retries.append,
        on_give_up=give_ups.append,
    )
    flaky = Flaky(5)
    with pytest.raises(ConnectionError):
        await run(retry, flaky, form)
    assert [(i.attempt, i.delay, i.exception) for i in retries] == [
        (1, 2, flaky.raised[0]),
        (2, 4, flaky.raised[1]),
    ]
    assert retries[0].error_class is EC.NETWORK
    assert len(give_ups) == 1
    assert give_ups[0].reason == "attempts"
    assert give_ups[0].attempt == 3
    assert give_ups[0].exception is flaky.raised[2]
    assert give_ups[0].elapsed == 6


@pytest.mark.parametrize("form", FORMS)
async def test_events_of_retries_and_a_give_up(form: str, received: list[events.Event]) -> None:
    clock = FakeClock(T0)
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.schedule([1, 2]), clock=clock, name="api")
    with pytest.raises(ConnectionError):
        await run(retry, Flaky(5), form)
    mine = [event for event in received if event.policy == "api"]
    assert [type(event).__name__ for event in mine] == [
        "RetryScheduled",
        "AttemptStarted",
        "RetryScheduled",
        "AttemptStarted",
        "GaveUp",
    ]
    gave_up = mine[-1]
    assert isinstance(gave_up, events.GaveUp)
    assert (gave_up.attempts, gave_up.elapsed, gave_up.reason) == (3, 3.0, "attempts")


@pytest.mark.parametrize("form", FORMS)
async def test_statistics_count_calls_attempts_retries_successes_give_ups(form: str) -> None:
    retry = rs.Retry(attempts=3, backoff=NO_WAIT)
    for _ in range(5):
        await run(retry, Flaky(0), form)
    await run(retry, Flaky(2), form)
    with pytest.raises(ConnectionError):
        await run(retry, Flaky(9), form)
    assert retry.statistics == RetryStatistics(
        calls=7, attempts=5 + 3 + 3, retries=4, successes=6, give_ups=1
    )


async def test_statistics_with_a_deadline_and_a_result_check() -> None:
    retry = rs.Retry(attempts=3, backoff=NO_WAIT, deadline=60.0, retry_if_result=lambda r: r < 0)
    values = iter([1, -1, 2])

    @retry
    async def value() -> int:
        return next(values)

    assert [await value(), await value()] == [1, 2]
    assert retry.statistics == RetryStatistics(
        calls=2, attempts=3, retries=1, successes=2, give_ups=0
    )


async def test_methods_and_classmethods() -> None:
    class Client:
        def __init__(self) -> None:
            self.flaky = Flaky(1)

        @rs.with_retry(backoff=NO_WAIT)
        async def get(self, path: str) -> str:
            return f"{await self.flaky()}:{path}"

        @classmethod
        @rs.with_retry(backoff=NO_WAIT)
        async def build(cls) -> str:
            return cls.__name__

    client = Client()
    assert await client.get("/x") == "ok:/x"
    assert client.flaky.calls == 2
    assert await Client.build() == "Client"


# -- testing mode and telemetry ----------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
async def test_testing_mode_skips_sleeps_and_caps_attempts(form: str) -> None:
    clock = FakeClock(T0)
    retry = rs.Retry(attempts=10, backoff=rs.Backoff.constant(60), clock=clock)
    with testing_mode(attempts=2):
        flaky = Flaky(5)
        with pytest.raises(ConnectionError):
            await run(retry, flaky, form)
        assert flaky.calls == 2
    assert clock.sleeps == []
    await run(retry, Flaky(1), form)
    assert clock.sleeps == [60]  # back to normal


@pytest.mark.parametrize("deadline", [None, 60.0])
async def test_an_observed_call_spans_every_attempt(otel: Any, deadline: float | None) -> None:
    clock = FakeClock(T0)
    retry = rs.Retry(
        attempts=3, backoff=rs.Backoff.constant(1), deadline=deadline, clock=clock, name="db"
    )
    fetch = retry(Flaky(2))
    assert await fetch() == "ok"
    spans = otel.spans.get_finished_spans()
    parent = next(s for s in spans if s.name == "retry db")
    children = [s for s in spans if s.name == "retry db attempt"]
    assert [c.attributes["resilience.retry.attempt"] for c in children] == [2, 3]
    assert all(c.parent.span_id == parent.context.span_id for c in children)
    assert retry.statistics.retries == 2

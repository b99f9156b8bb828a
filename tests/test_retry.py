"""Retry: behaviour, invariants (hypothesis) and concurrency. Timing on FakeClock only."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilience as rs
from resilience.testing import FakeClock, strategies, testing_mode

EC = rs.ErrorClass
NO_WAIT = rs.Backoff.constant(0)


class Flaky:
    """Fails with ``error`` the first ``failures`` times, then returns ``value``."""

    def __init__(
        self,
        failures: int,
        error: Callable[[], BaseException] = ConnectionError,
        value: Any = "ok",
        clock: FakeClock | None = None,
        duration: float = 0.0,
    ):
        self.failures = failures
        self.error = error
        self.value = value
        self.calls = 0
        self.raised: list[BaseException] = []
        self.clock = clock
        self.duration = duration

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.clock is not None and self.duration:
            self.clock.advance(self.duration)
        if self.calls <= self.failures:
            error = self.error()
            self.raised.append(error)
            raise error
        return self.value


# -- basics ------------------------------------------------------------------------


def test_bare_decorator_uses_defaults_and_keeps_metadata() -> None:
    @rs.with_retry
    def fetch() -> str:
        """Fetch it."""
        return "data"

    assert fetch() == "data"
    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch it."
    policy = fetch.policy  # type: ignore[attr-defined]
    assert isinstance(policy, rs.Retry)
    assert policy.options.attempts == 3
    assert policy.name.endswith("fetch")


def test_retries_until_success_with_exact_schedule() -> None:
    clock = FakeClock()
    retry = rs.Retry(
        attempts=6, backoff=rs.Backoff.schedule([1, 5, 30, 300, 1800]), clock=clock, name="email"
    )
    flaky = Flaky(5)
    assert retry.call(flaky) == "ok"
    assert flaky.calls == 6
    assert clock.sleeps == [1, 5, 30, 300, 1800]


def test_gives_up_with_the_last_original_exception_and_a_note() -> None:
    clock = FakeClock()
    flaky = Flaky(10, clock=clock, duration=0.5)
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(1.0), clock=clock, name="db")
    with pytest.raises(ConnectionError) as caught:
        retry.call(flaky)
    assert caught.value is flaky.raised[-1]
    assert flaky.calls == 3
    assert caught.value.__notes__ == [
        "resilience: retry 'db' gave up after 3 attempts over 3.500s (attempts exhausted)"
    ]
    # Unchanged: no chaining to earlier attempts' exceptions.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


def test_permanent_errors_are_not_retried_and_get_no_note() -> None:
    flaky = Flaky(1, error=lambda: ValueError("bad input"))
    retry = rs.Retry(attempts=5, backoff=NO_WAIT)
    with pytest.raises(ValueError, match="bad input") as caught:
        retry.call(flaky)
    assert flaky.calls == 1
    assert not getattr(caught.value, "__notes__", [])


@pytest.mark.parametrize(
    "error", [KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError]
)
def test_base_exceptions_are_never_retried(error: type[BaseException]) -> None:
    flaky = Flaky(3, error=error)
    with pytest.raises(error):
        rs.Retry(attempts=5, backoff=NO_WAIT).call(flaky)
    assert flaky.calls == 1


async def test_cancellation_is_never_retried_async() -> None:
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3600)

    task = asyncio.create_task(rs.Retry(attempts=5, backoff=NO_WAIT).acall(slow))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 1


def test_retry_on_narrows_by_class_type_or_predicate() -> None:
    timeout_only = rs.Retry(attempts=3, backoff=NO_WAIT, retry_on=[EC.TIMEOUT])
    flaky = Flaky(1, error=ConnectionError)
    with pytest.raises(ConnectionError):
        timeout_only.call(flaky)
    assert flaky.calls == 1
    flaky = Flaky(1, error=TimeoutError)
    assert timeout_only.call(flaky) == "ok"

    by_type = rs.Retry(attempts=3, backoff=NO_WAIT, retry_on=[KeyError])
    assert by_type.call(Flaky(2, error=lambda: KeyError("k"))) == "ok"  # explicit beats PERMANENT

    by_predicate = rs.Retry(attempts=3, backoff=NO_WAIT, retry_on=lambda e: "again" in str(e))
    assert by_predicate.call(Flaky(1, error=lambda: RuntimeError("again"))) == "ok"
    with pytest.raises(RuntimeError):
        by_predicate.call(Flaky(1, error=lambda: RuntimeError("stop")))


def test_user_classifier_and_mapping() -> None:
    class QuotaError(Exception):
        pass

    retry = rs.Retry(attempts=3, backoff=NO_WAIT, classifier={QuotaError: EC.PERMANENT})
    flaky = Flaky(1, error=QuotaError)
    with pytest.raises(QuotaError):
        retry.call(flaky)
    assert flaky.calls == 1


# -- deadline and Retry-After ------------------------------------------------------------


def test_never_sleeps_past_the_deadline() -> None:
    clock = FakeClock()
    retry = rs.Retry(attempts=10, backoff=rs.Backoff.constant(4.0), deadline=10.0, clock=clock)
    flaky = Flaky(100, clock=clock, duration=1.0)
    with pytest.raises(ConnectionError) as caught:
        retry.call(flaky)
    # t=1 fail, sleep 4 -> t=5: attempt 2 fails at 6; waiting 4 more would reach the
    # deadline itself, leaving no time to try: give up instead.
    assert clock.sleeps == [4.0]
    assert flaky.calls == 2
    assert "deadline" in caught.value.__notes__[0]


def test_a_retry_deadline_bounds_what_runs_inside() -> None:
    clock = FakeClock()
    limiter = rs.RateLimiter("inner", rate=1, per=30.0, clock=clock)  # waits without limit
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(0.1), deadline=5.0, clock=clock)
    seen: list[float | None] = []

    def op() -> str:
        seen.append(rs.remaining_time())
        limiter.acquire()
        return "ok"

    assert retry.call(op) == "ok"
    with pytest.raises(rs.RateLimitExceeded):
        retry.call(op)  # the next token is 30 s away: past the retry's 5 s deadline
    assert clock.sleeps == []  # neither the limiter nor the retry waited in vain
    assert seen[0] == 5.0


def test_deadline_accepts_timedelta() -> None:
    retry = rs.Retry(deadline=datetime.timedelta(minutes=1))
    assert retry.options.deadline == 60.0


def test_retry_after_is_honoured_and_bounded_by_the_cap() -> None:
    clock = FakeClock()
    retry = rs.Retry(
        attempts=3, backoff=rs.Backoff.exponential(0.1, 20.0, jitter="none"), clock=clock
    )
    assert retry.call(Flaky(1, error=lambda: rs.RateLimitExceeded("api", 7.0))) == "ok"
    assert clock.sleeps == [7.0]
    clock.sleeps.clear()
    assert retry.call(Flaky(1, error=lambda: rs.RateLimitExceeded("api", 120.0))) == "ok"
    assert clock.sleeps == [20.0]  # bounded by the backoff's cap


def test_retry_after_beyond_the_deadline_gives_up() -> None:
    clock = FakeClock()
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(0.1), deadline=5.0, clock=clock)
    with pytest.raises(rs.RateLimitExceeded):
        retry.call(Flaky(1, error=lambda: rs.RateLimitExceeded("api", 60.0)))
    assert clock.sleeps == []


def test_retry_after_can_be_ignored() -> None:
    clock = FakeClock()
    retry = rs.Retry(
        attempts=2, backoff=rs.Backoff.constant(0.5), clock=clock, respect_retry_after=False
    )
    retry.call(Flaky(1, error=lambda: rs.RateLimitExceeded("api", 60.0)))
    assert clock.sleeps == [0.5]


def test_max_delay_clamps_every_wait() -> None:
    clock = FakeClock()
    retry = rs.Retry(
        attempts=4, backoff=rs.Backoff.schedule([1, 50, 50]), max_delay=2.0, clock=clock
    )
    retry.call(Flaky(3))
    assert clock.sleeps == [1, 2.0, 2.0]


def test_backoff_per_error_class() -> None:
    clock = FakeClock()
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

    def fn() -> str:
        error = next(errors, None)
        if error is not None:
            raise error
        return "ok"

    assert retry.call(fn) == "ok"
    assert clock.sleeps == [5.0, 1.0, 30.0]


# -- results -----------------------------------------------------------------------------


def test_retry_if_result_retries_then_returns_the_last_result() -> None:
    clock = FakeClock()
    results = iter([None, None, "done"])
    retry = rs.Retry(
        attempts=5, backoff=rs.Backoff.constant(1), clock=clock, retry_if_result=lambda r: r is None
    )
    assert retry.call(lambda: next(results)) == "done"
    assert clock.sleeps == [1, 1]

    retry = rs.Retry(attempts=2, backoff=NO_WAIT, retry_if_result=lambda r: r < 0)
    assert retry.call(lambda: -1) == -1  # gave up: the last result is returned
    assert retry.statistics.give_ups == 1


# -- hooks and statistics ------------------------------------------------------------------


def test_hooks_receive_attempt_delay_and_exception() -> None:
    clock = FakeClock()
    retries: list[rs.RetryInfo] = []
    give_ups: list[rs.RetryInfo] = []
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
        retry.call(flaky)
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


def test_statistics_count_calls_attempts_retries_successes_give_ups() -> None:
    retry = rs.Retry(attempts=3, backoff=NO_WAIT)
    fn = retry(lambda: 1)
    for _ in range(5):
        fn()
    retry.call(Flaky(2))
    with pytest.raises(ConnectionError):
        retry.call(Flaky(9))
    assert retry.statistics == rs.RetryStatistics(
        calls=7, attempts=5 + 3 + 3, retries=4, successes=6, give_ups=1
    )


# -- forms: methods, async, block ------------------------------------------------------------


def test_methods_and_classmethods() -> None:
    class Client:
        def __init__(self) -> None:
            self.flaky = Flaky(1)

        @rs.with_retry(backoff=NO_WAIT)
        def get(self, path: str) -> str:
            return f"{self.flaky()}:{path}"

        @classmethod
        @rs.with_retry(backoff=NO_WAIT)
        def build(cls) -> str:
            return cls.__name__

    client = Client()
    assert client.get("/x") == "ok:/x"
    assert client.flaky.calls == 2
    assert Client.build() == "Client"


async def test_async_decorator_and_acall() -> None:
    clock = FakeClock()
    flaky = Flaky(2)

    @rs.with_retry(attempts=3, backoff=rs.Backoff.constant(1.5), clock=clock)
    async def fetch(x: int) -> tuple[str, int]:
        return flaky(), x

    assert await fetch(4) == ("ok", 4)
    assert clock.sleeps == [1.5, 1.5]

    async def fails() -> None:
        raise TimeoutError("slow")

    with pytest.raises(TimeoutError) as caught:
        await rs.Retry(attempts=2, backoff=NO_WAIT).acall(fails)
    assert "gave up after 2 attempts" in caught.value.__notes__[0]


async def test_async_deadline_and_results() -> None:
    clock = FakeClock()
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
    assert await retry.acall(poll) == 0  # deadline reached before the 5 arrives
    assert clock.slept <= 7


def test_block_form() -> None:
    clock = FakeClock()
    retry = rs.Retry(attempts=4, backoff=rs.Backoff.constant(1), clock=clock)
    flaky = Flaky(2)
    seen = []
    for attempt in retry:
        with attempt:
            seen.append(attempt.number)
            flaky()
    assert seen == [1, 2, 3]
    assert clock.sleeps == [1, 1]

    flaky = Flaky(10)
    with pytest.raises(ConnectionError) as caught:
        for attempt in retry:
            with attempt:
                flaky()
    assert caught.value is flaky.raised[-1]
    assert flaky.calls == 4


def test_block_form_results() -> None:
    values = iter([None, 3])
    retry = rs.Retry(attempts=3, backoff=NO_WAIT, retry_if_result=lambda r: r is None)
    got = None
    for attempt in retry:
        with attempt:
            got = next(values)
            attempt.set_result(got)
    assert got == 3


async def test_async_block_form() -> None:
    clock = FakeClock()
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(2), clock=clock)
    flaky = Flaky(1)
    async for attempt in retry:
        async with attempt:
            await asyncio.sleep(0)
            flaky()
    assert flaky.calls == 2
    assert clock.sleeps == [2]

    with pytest.raises(ValueError, match="nope"):
        async for attempt in retry:
            with attempt:
                raise ValueError("nope")


# -- testing mode ---------------------------------------------------------------------------


def test_testing_mode_skips_sleeps_and_caps_attempts() -> None:
    clock = FakeClock()
    retry = rs.Retry(attempts=10, backoff=rs.Backoff.constant(60), clock=clock)
    with testing_mode(attempts=2):
        flaky = Flaky(5)
        with pytest.raises(ConnectionError):
            retry.call(flaky)
        assert flaky.calls == 2
        with testing_mode():
            flaky = Flaky(5)
            retry.call(flaky)  # nested: no cap, still no sleeping
            assert flaky.calls == 6
    assert clock.sleeps == []
    retry.call(Flaky(1))
    assert clock.sleeps == [60]  # back to normal


def test_pytest_fixture(resilience_testing: Any) -> None:
    clock = FakeClock()
    resilience_testing.cap(3)
    flaky = Flaky(10)
    with pytest.raises(ConnectionError):
        rs.Retry(attempts=10, backoff=rs.Backoff.constant(5), clock=clock).call(flaky)
    assert flaky.calls == 3
    assert clock.sleeps == []


# -- presets and validation -------------------------------------------------------------------


def test_presets() -> None:
    default, aggressive, fast = rs.Retry.default(), rs.Retry.aggressive(), rs.Retry.fast()
    assert default.options.attempts == 3
    assert default.options.deadline is None
    assert aggressive.options.attempts == 10
    assert aggressive.options.deadline == 60.0
    assert fast.options.attempts == 3
    assert fast.options.deadline == 1.0
    assert fast.options.backoff.max_delay == 0.1
    assert rs.Retry.fast(attempts=5).options.attempts == 5


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": -3}, "attempts"),
        ({"deadline": -1}, "deadline"),
        ({"deadline": float("nan")}, "deadline"),
        ({"deadline": 0}, "deadline"),
        ({"max_delay": -0.5}, "max_delay"),
        ({"retry_on": ["sometimes"]}, "retry_on"),
        ({"retry_on": 5}, "retry_on"),
        ({"retry_on": False}, "retry_on"),
        ({"name": ""}, "name"),
        ({"clock": object()}, "clock"),
        ({"on_retry": 5}, "on_retry"),
        ({"backoff": {"kind": "schedule", "delays": [1, -2]}}, "backoff.delays.1"),
        ({"backoff_by_class": {"timeout": {"kind": "nope"}}}, "backoff_by_class.timeout.kind"),
    ],
)
def test_invalid_arguments_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        rs.Retry(**kwargs)
    assert field in caught.value.fields, caught.value.fields
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, rs.ResilienceError)


def test_with_retry_rejects_function_and_options() -> None:
    with pytest.raises(TypeError):
        rs.with_retry(lambda: 1, attempts=3)  # type: ignore[call-overload]


# -- properties ------------------------------------------------------------------------------

error_kinds = st.sampled_from(
    [ConnectionError, TimeoutError, ValueError, KeyError, RuntimeError, PermissionError]
)


@given(
    attempts=st.integers(1, 8),
    failures=st.integers(0, 12),
    error=error_kinds,
    deadline=st.none() | st.floats(0.1, 100.0),
    duration=st.floats(0.0, 5.0),
    seed=st.integers(0, 2**16),
)
def test_attempts_deadline_and_permanent_invariants(
    attempts: int,
    failures: int,
    error: type[Exception],
    deadline: float | None,
    duration: float,
    seed: int,
) -> None:
    clock = FakeClock()
    retry = rs.Retry(
        attempts=attempts,
        backoff=rs.Backoff.exponential(0.5, 20.0, jitter="full"),
        deadline=deadline,
        clock=clock,
        rng=random.Random(seed),
    )
    flaky = Flaky(failures, error=error, clock=clock, duration=duration)
    try:
        retry.call(flaky)
        succeeded = True
    except Exception as caught:
        assert caught is flaky.raised[-1]
        succeeded = False
    assert flaky.calls <= attempts
    if deadline is not None:
        assert clock.slept <= deadline + 1e-9
    if rs.classify(error()).error_class is EC.PERMANENT:
        assert flaky.calls == 1
    elif succeeded:
        assert flaky.calls == failures + 1
    elif deadline is None:
        assert flaky.calls == attempts


@given(delays=st.lists(st.floats(0, 1e4), min_size=1, max_size=8), failures=st.integers(0, 12))
def test_schedule_followed_exactly(delays: list[float], failures: int) -> None:
    clock = FakeClock()
    attempts = len(delays) + 1
    retry = rs.Retry(attempts=attempts, backoff=rs.Backoff.schedule(delays), clock=clock)
    with contextlib.suppress(ConnectionError):
        retry.call(Flaky(failures))
    # A zero delay is no sleep at all.
    assert clock.sleeps == [d for d in delays[: min(failures, attempts - 1)] if d > 0]


def test_concurrent_threads_keep_per_call_attempts_separate() -> None:
    clock = FakeClock()
    attempts_seen: dict[int, list[int]] = {}
    lock = threading.Lock()
    retry = rs.Retry(
        attempts=6, backoff=rs.Backoff.constant(0.001), clock=clock, on_retry=lambda info: None
    )
    rng = random.Random(1)
    plan = [rng.randrange(0, 6) for _ in range(400)]

    def worker(index: int) -> None:
        failures = plan[index]
        seen: list[int] = []

        def op() -> int:
            seen.append(len(seen) + 1)
            if len(seen) <= failures:
                raise ConnectionError(index)
            return index

        assert retry.call(op) == index
        with lock:
            attempts_seen[index] = seen

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(plan))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(len(attempts_seen[i]) == plan[i] + 1 for i in range(len(plan)))
    stats = retry.statistics
    assert stats.calls == len(plan)
    assert stats.successes == len(plan)
    assert stats.retries == sum(plan)
    assert stats.attempts == len(plan) + sum(plan)


@settings(max_examples=30, deadline=None)
@given(plan=st.lists(st.integers(0, 4), min_size=1, max_size=40))
def test_concurrent_tasks_keep_per_call_attempts_separate(plan: list[int]) -> None:
    clock = FakeClock()
    retry = rs.Retry(attempts=5, backoff=rs.Backoff.constant(0.01), clock=clock)

    async def one(failures: int) -> int:
        made = 0

        @retry
        async def op() -> int:
            nonlocal made
            made += 1
            await asyncio.sleep(0)  # interleave with the other tasks
            if made <= failures:
                raise TimeoutError
            return made

        return await op()

    async def run() -> list[int]:
        return await asyncio.gather(*(one(f) for f in plan))

    assert asyncio.run(run()) == [f + 1 for f in plan]
    assert retry.statistics.retries == sum(plan)


# -- the public hypothesis strategies hold to the same invariants ------------------------------


@settings(max_examples=60)
@given(
    options=strategies.retry_options(),
    error=strategies.exceptions_of(),
    failures=st.integers(0, 12),
    seed=st.integers(0, 2**16),
)
def test_any_generated_retry_keeps_its_limits(
    options: dict[str, Any], error: Exception, failures: int, seed: int
) -> None:
    clock = FakeClock()
    retry = rs.Retry(**options, clock=clock, rng=random.Random(seed))
    flaky = Flaky(failures, error=lambda: error, clock=clock, duration=0.25)
    try:
        retry.call(flaky)
    except Exception as caught:
        assert caught is error
    assert flaky.calls <= options["attempts"]
    if "deadline" in options:
        assert clock.slept <= options["deadline"] + 1e-9
    if "max_delay" in options:
        assert all(sleep <= options["max_delay"] + 1e-9 for sleep in clock.sleeps)

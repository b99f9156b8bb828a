"""Retry: configuration, invariants (hypothesis), concurrency and what is not a twin.

The behaviour of every form (call, decorator, block; sync and async) is tested
once, in tests/_async/test_retry_driver.py, and its generated sync twin; the
public decision in tests/test_retry_decide.py. Timing on FakeClock only.
"""

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


def test_deadline_accepts_timedelta() -> None:
    retry = rs.Retry(deadline=datetime.timedelta(minutes=1))
    assert retry.options.deadline == 60.0


async def test_async_block_form_takes_sync_with_blocks_too() -> None:
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


def test_an_enclosing_timeout_of_the_same_name_and_length_still_bounds_the_waits() -> None:
    # The retry tells its own deadline from an enclosing one by when it ends, not
    # by its name: a Timeout named like the retry, as long, started 1 s earlier,
    # must still stop a backoff that would sleep past it.
    clock = FakeClock(1_700_000_000.25)
    retry = rs.Retry(
        attempts=5, backoff=rs.Backoff.constant(3.0), deadline=10.0, name="job", clock=clock
    )
    timeout = rs.Timeout(10.0, name="job", clock=clock)

    def fails() -> None:
        clock.advance(1.75)
        raise TimeoutError

    def late_start() -> None:
        clock.advance(1.0)  # the timeout began 1 s before the retry
        retry.call(fails)

    with pytest.raises(TimeoutError):
        timeout.call(late_start)
    # The second attempt ends 6.5 s into the retry (7.5 s into the timeout): a 3 s wait
    # fits the retry's own deadline (9.5 < 10) but not the timeout's (2.5 s left).
    assert clock.sleeps == [3.0]

"""Retry.decide: the public decision, against a pure model, and agreeing with the loop.

Where a clock matters it is a FakeClock started far from zero, as a real
monotonic clock is: elapsed times are then differences of large floats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilience as rs
from resilience import telemetry
from resilience._core.retry import DEFAULT_RETRY_AFTER_CEILING
from resilience._deadline import DEADLINE
from resilience.clock import MAX_DURATION
from resilience.retry import RetryDecision, RetryInfo, RetryStatistics
from resilience.telemetry import events
from resilience.testing import FakeClock, testing_mode

EC = rs.ErrorClass
T0 = 1_700_000_000.25


@pytest.fixture
def received() -> Iterator[list[events.Event]]:
    seen: list[events.Event] = []
    unsubscribe = telemetry.subscribe(seen.append)
    yield seen
    unsubscribe()


# -- the pure model -------------------------------------------------------------------------


def model(
    retry: rs.Retry,
    attempt: int,
    exception: BaseException | None,
    elapsed: float,
    rng: random.Random,
    previous: float | None = None,
) -> RetryDecision:
    """What decide must answer, from the documented rules (default classifier and
    retry_on; no retry_if_result), drawing from ``rng`` as the policy draws."""
    o = retry.options
    error_class = None if exception is None else rs.classify(exception).error_class
    if exception is not None and (
        not isinstance(exception, Exception) or error_class is EC.PERMANENT
    ):
        return RetryDecision(False, None, error_class, "not_retryable")
    if attempt >= o.attempts:
        return RetryDecision(False, None, error_class, "attempts")
    backoff = o.backoff_by_class.get(error_class, o.backoff)  # type: ignore[arg-type]
    ceiling = MAX_DURATION if o.max_delay is None else min(o.max_delay, MAX_DURATION)
    delay = min(backoff.delay(attempt, previous, rng), ceiling)
    hint = None if exception is None else rs.classify(exception).retry_after
    if hint is not None and o.respect_retry_after and hint > delay:
        cap = getattr(backoff.options, "cap", math.inf)
        if not math.isfinite(cap):
            cap = math.inf if o.max_delay is not None else DEFAULT_RETRY_AFTER_CEILING
        delay = max(delay, min(hint, cap, ceiling))
    if o.deadline is not None and elapsed + delay >= o.deadline:
        return RetryDecision(False, None, error_class, "deadline")
    return RetryDecision(True, delay, error_class, None)


backoffs = st.sampled_from(
    [
        rs.Backoff.constant(0.5),
        rs.Backoff.constant(2.0, jitter="full"),
        rs.Backoff.linear(0.5, 1.5, cap=4.0, jitter="equal"),
        rs.Backoff.linear(1.0, 2.0),
        rs.Backoff.exponential(0.1, 20.0, jitter="none"),
        rs.Backoff.exponential(0.2, 8.0),
        rs.Backoff.exponential(0.3, 30.0, jitter="decorrelated"),
        rs.Backoff.schedule([1, 5, 30], jitter="equal"),
    ]
)
hints = st.none() | st.floats(0.0, 1e4) | st.sampled_from([math.inf, math.nan, -1.0])


@st.composite
def failures(draw: st.DrawFn) -> BaseException:
    kind = draw(st.sampled_from(["network", "timeout", "permanent", "rate_limited", "base"]))
    if kind == "network":
        return ConnectionError("reset")
    if kind == "timeout":
        return TimeoutError("slow")
    if kind == "permanent":
        return ValueError("bad input")
    if kind == "base":
        return KeyboardInterrupt()
    return rs.RateLimitExceeded("api", draw(hints))


@st.composite
def retries(draw: st.DrawFn) -> dict[str, Any]:
    options: dict[str, Any] = {
        "attempts": draw(st.integers(1, 8)),
        "backoff": draw(backoffs),
        "respect_retry_after": draw(st.booleans()),
    }
    if draw(st.booleans()):
        options["max_delay"] = draw(st.floats(0.01, 50.0))
    if draw(st.booleans()):
        options["deadline"] = draw(st.floats(0.1, 200.0))
    if draw(st.booleans()):
        options["backoff_by_class"] = {EC.RATE_LIMITED: draw(backoffs)}
    return options


@settings(max_examples=300)
@given(
    options=retries(),
    attempt=st.integers(1, 10),
    failure=failures(),
    elapsed=st.floats(0.0, 300.0),
    seed=st.integers(0, 2**16),
)
def test_decide_matches_the_model(
    options: dict[str, Any], attempt: int, failure: BaseException, elapsed: float, seed: int
) -> None:
    retry = rs.Retry(**options, rng=random.Random(seed))
    decision = retry.decide(attempt, failure, elapsed=elapsed)
    assert decision == model(retry, attempt, failure, elapsed, random.Random(seed))


@settings(max_examples=300)
@given(
    options=retries(),
    attempt=st.integers(1, 10),
    failure=failures(),
    elapsed=st.floats(0.0, 300.0),
    seed=st.integers(0, 2**16),
)
def test_a_delay_never_passes_max_delay_the_ceiling_or_the_deadline(
    options: dict[str, Any], attempt: int, failure: BaseException, elapsed: float, seed: int
) -> None:
    retry = rs.Retry(**options, rng=random.Random(seed))
    decision = retry.decide(attempt, failure, elapsed=elapsed)
    assert decision.retry is (decision.delay is not None)
    assert decision.retry is (decision.reason is None)
    if not decision.retry:
        return
    assert decision.delay is not None
    assert decision.delay >= 0.0
    if "max_delay" in options:
        assert decision.delay <= options["max_delay"]
    if "deadline" in options:
        assert elapsed + decision.delay < options["deadline"]
    backoff = options.get("backoff_by_class", {}).get(decision.error_class, options["backoff"])
    # At most what the backoff allows, or what a hint asked for up to its ceiling.
    hint_ceiling = getattr(backoff.options, "cap", math.inf)
    if not math.isfinite(hint_ceiling):
        hint_ceiling = math.inf if "max_delay" in options else DEFAULT_RETRY_AFTER_CEILING
    assert decision.delay <= max(backoff.max_delay, hint_ceiling)


@given(attempts=st.integers(1, 20), failure=failures())
def test_attempts_run_out_exactly_at_the_limit(attempts: int, failure: BaseException) -> None:
    retry = rs.Retry(attempts=attempts, backoff=rs.Backoff.constant(1.0))
    retryable = isinstance(failure, Exception) and not isinstance(failure, ValueError)
    last = retry.decide(attempts, failure)
    assert last.reason == ("attempts" if retryable else "not_retryable")
    assert retry.decide(attempts + 5, failure).reason == last.reason
    if attempts > 1:
        before = retry.decide(attempts - 1, failure)
        assert before.retry is retryable
        assert before.reason == (None if retryable else "not_retryable")


@pytest.mark.parametrize(
    "error", [ValueError("bad"), TypeError("bad"), KeyError("k"), PermissionError("no")]
)
def test_a_permanent_error_is_not_retryable(error: Exception) -> None:
    decision = rs.Retry(attempts=5).decide(1, error)
    assert decision == RetryDecision(False, None, EC.PERMANENT, "not_retryable")


def test_retry_on_and_a_classifier_decide_what_is_retryable() -> None:
    only_timeouts = rs.Retry(attempts=3, retry_on=[EC.TIMEOUT], backoff=rs.Backoff.constant(1))
    assert only_timeouts.decide(1, ConnectionError()).reason == "not_retryable"
    assert only_timeouts.decide(1, TimeoutError()) == RetryDecision(True, 1.0, EC.TIMEOUT, None)

    class Quota(Exception):
        pass

    quota = rs.Retry(classifier={Quota: EC.RATE_LIMITED}, backoff=rs.Backoff.constant(1))
    assert quota.decide(1, Quota()).error_class is EC.RATE_LIMITED
    assert rs.Retry().decide(1, KeyboardInterrupt()).reason == "not_retryable"


@pytest.mark.parametrize(
    ("backoff", "max_delay", "hint", "delay"),
    [
        (rs.Backoff.exponential(0.1, 20.0, jitter="none"), None, 7.0, 7.0),  # honoured
        (rs.Backoff.exponential(0.1, 20.0, jitter="none"), None, 120.0, 20.0),  # the cap
        (rs.Backoff.exponential(0.1, 20.0, jitter="none"), 5.0, 120.0, 5.0),  # max_delay
        (rs.Backoff.constant(0.1), None, 1e6, DEFAULT_RETRY_AFTER_CEILING),  # no cap at all
        (rs.Backoff.constant(0.1), 900.0, 1e6, 900.0),
        (rs.Backoff.constant(0.1), None, math.inf, DEFAULT_RETRY_AFTER_CEILING),
        (rs.Backoff.constant(3.0), None, 1.0, 3.0),  # a shorter hint: the backoff's wait
        (rs.Backoff.constant(3.0), None, math.nan, 3.0),  # not a number: no hint
        (rs.Backoff.constant(3.0), None, -5.0, 3.0),
    ],
)
def test_retry_after_is_honoured_and_capped(
    backoff: rs.Backoff, max_delay: float | None, hint: float, delay: float
) -> None:
    retry = rs.Retry(attempts=3, backoff=backoff, max_delay=max_delay)
    error = rs.RateLimitExceeded("api", hint)
    assert retry.decide(1, error) == RetryDecision(True, delay, EC.RATE_LIMITED, None)
    ignoring = rs.Retry(attempts=3, backoff=backoff, max_delay=max_delay, respect_retry_after=False)
    assert ignoring.decide(1, error).delay == min(backoff.ceiling(1), max_delay or math.inf)


def test_backoff_by_class_is_used() -> None:
    retry = rs.Retry(
        attempts=5,
        backoff=rs.Backoff.constant(1.0),
        backoff_by_class={
            EC.RATE_LIMITED: rs.Backoff.constant(30.0),
            "timeout": {"kind": "constant", "delay": 5.0},
        },
    )
    assert retry.decide(1, TimeoutError()).delay == 5.0
    assert retry.decide(2, ConnectionError()).delay == 1.0
    assert retry.decide(3, rs.RateLimitExceeded("x")).delay == 30.0
    assert retry.decide(1, result=None).delay is None  # no check: a result is a success


def test_the_deadline_counts_elapsed_time_and_the_next_wait() -> None:
    retry = rs.Retry(attempts=10, backoff=rs.Backoff.constant(4.0), deadline=10.0)
    assert retry.decide(1, ConnectionError(), elapsed=5.9).delay == 4.0
    # 6 s in, a 4 s wait reaches the deadline itself: no time left to try.
    assert retry.decide(2, ConnectionError(), elapsed=6.0).reason == "deadline"
    assert retry.decide(2, ConnectionError(), elapsed=datetime.timedelta(seconds=6)).reason == (
        "deadline"
    )
    hinted = rs.Retry(attempts=3, backoff=rs.Backoff.constant(0.1), deadline=5.0)
    assert hinted.decide(1, rs.RateLimitExceeded("api", 60.0)).reason == "deadline"


# -- results, successes, statistics, hooks and events -------------------------------------------


def test_results_are_judged_by_retry_if_result() -> None:
    retry = rs.Retry(
        attempts=3, backoff=rs.Backoff.constant(2.0), retry_if_result=lambda r: r == "pending"
    )
    assert retry.decide(1, result="pending") == RetryDecision(True, 2.0, None, None)
    assert retry.decide(2, result="done") == RetryDecision(False, None, None, None)
    assert retry.decide(3, result="pending") == RetryDecision(False, None, None, "attempts")
    assert retry.decide(1) == RetryDecision(False, None, None, None)  # nothing to judge


def test_statistics_count_a_job_as_the_loop_counts_a_call() -> None:
    job = rs.Retry(attempts=3, backoff=rs.Backoff.constant(0))
    assert job.decide(1, ConnectionError()).retry
    assert job.decide(2, TimeoutError()).retry
    assert not job.decide(3, result="ok").retry
    assert job.decide(1) == RetryDecision(False, None, None, None)
    assert job.decide(1, ConnectionError()).retry
    assert job.decide(2, ConnectionError()).retry
    assert job.decide(3, ConnectionError()).reason == "attempts"

    loop = rs.Retry(attempts=3, backoff=rs.Backoff.constant(0))
    outcomes = iter([ConnectionError(), TimeoutError(), "ok", "ok", *[ConnectionError()] * 3])

    def op() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    loop.call(op)
    loop.call(op)
    with pytest.raises(ConnectionError):
        loop.call(op)
    assert (
        job.statistics
        == loop.statistics
        == RetryStatistics(calls=3, attempts=7, retries=4, successes=2, give_ups=1)
    )


def test_hooks_and_events_are_those_of_the_loop(received: list[events.Event]) -> None:
    scheduled: list[RetryInfo] = []
    gave_up: list[RetryInfo] = []
    retry = rs.Retry(
        attempts=2,
        backoff=rs.Backoff.constant(3.0),
        name="jobs",
        on_retry=scheduled.append,
        on_give_up=gave_up.append,
    )
    first, second = ConnectionError("one"), ConnectionError("two")
    retry.decide(1, first, elapsed=1.5)
    retry.decide(2, second, elapsed=datetime.timedelta(seconds=6))
    assert scheduled == [RetryInfo("jobs", 1, 3.0, first, None, EC.NETWORK, 1.5, None)]
    assert gave_up == [RetryInfo("jobs", 2, None, second, None, EC.NETWORK, 6.0, "attempts")]
    assert received == [
        events.RetryScheduled("jobs", 1, 3.0, "network", first),
        events.GaveUp("jobs", 2, 6.0, "attempts", "network", second),
    ]
    assert not getattr(second, "__notes__", [])  # decide raises nothing, notes nothing


def test_decide_ignores_per_process_state() -> None:
    clock = FakeClock(T0)
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(5.0), clock=clock)
    scope = DEADLINE.set((clock.now() + 1.0, clock, "outer", 1.0))
    try:
        with testing_mode(attempts=1):
            decision = retry.decide(1, ConnectionError())
    finally:
        DEADLINE.reset(scope)
    assert decision == RetryDecision(True, 5.0, EC.NETWORK, None)
    assert clock.now() == T0 and clock.sleeps == []  # nothing waited


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"attempt": 0}, "attempt"),
        ({"attempt": -1}, "attempt"),
        ({"attempt": True}, "attempt"),
        ({"attempt": 1.0}, "attempt"),
        ({"attempt": "1"}, "attempt"),
        ({"attempt": 1, "elapsed": math.nan}, "elapsed"),
        ({"attempt": 1, "elapsed": -0.5}, "elapsed"),
        ({"attempt": 1, "elapsed": math.inf}, "elapsed"),
        ({"attempt": 1, "elapsed": True}, "elapsed"),
        ({"attempt": 1, "elapsed": "1s"}, "elapsed"),
        ({"attempt": 1, "elapsed": datetime.timedelta(seconds=-1)}, "elapsed"),
        ({"attempt": 1, "previous_delay": -1.0}, "previous_delay"),
        ({"attempt": 1, "exception": "boom"}, "exception"),
        ({"attempt": 1, "exception": ConnectionError(), "result": 1}, "result"),
    ],
)
def test_invalid_arguments_name_the_argument(arguments: dict[str, Any], field: str) -> None:
    retry = rs.Retry(name="jobs")
    with pytest.raises(rs.ConfigurationError) as caught:
        retry.decide(**arguments)
    assert caught.value.fields == (field,)
    assert "jobs" in str(caught.value)
    assert retry.statistics == RetryStatistics(0, 0, 0, 0, 0)


def test_a_decision_is_a_frozen_value() -> None:
    decision = rs.Retry().decide(1, ValueError())
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.retry = True  # type: ignore[misc]
    assert not hasattr(decision, "__dict__")
    assert decision == RetryDecision(
        retry=False, delay=None, error_class=EC.PERMANENT, reason="not_retryable"
    )


# -- decide and the loop agree ------------------------------------------------------------------


def run_the_loop(
    options: dict[str, Any], seed: int, failures: int, duration: float
) -> tuple[list[RetryInfo], list[RetryInfo], list[float]]:
    """Run a call that fails ``failures`` times, each attempt taking ``duration``:
    the hooks' infos (retries, give-up) and the sleeps."""
    clock = FakeClock(T0)
    scheduled: list[RetryInfo] = []
    gave_up: list[RetryInfo] = []
    retry = rs.Retry(
        **options,
        clock=clock,
        rng=random.Random(seed),
        on_retry=scheduled.append,
        on_give_up=gave_up.append,
    )
    made = 0

    def op() -> str:
        nonlocal made
        made += 1
        clock.advance(duration)
        if made <= failures:
            raise TimeoutError(made)
        return "ok"

    with contextlib.suppress(TimeoutError):
        retry.call(op)
    return scheduled, gave_up, clock.sleeps


@settings(max_examples=150, deadline=None)
@given(
    options=retries(),
    seed=st.integers(0, 2**16),
    failures=st.integers(1, 10),
    duration=st.floats(0.0, 20.0),
)
def test_the_loop_waits_what_successive_decisions_say(
    options: dict[str, Any], seed: int, failures: int, duration: float
) -> None:
    scheduled, gave_up, sleeps = run_the_loop(options, seed, failures, duration)
    assert [info.delay for info in scheduled if info.delay] == sleeps  # 0: no sleep at all
    job = rs.Retry(**options, rng=random.Random(seed))
    previous = None
    for info in scheduled:
        decision = job.decide(
            info.attempt, info.exception, elapsed=info.elapsed, previous_delay=previous
        )
        assert decision == RetryDecision(True, info.delay, info.error_class, None)
        previous = decision.delay
    for info in gave_up:
        decision = job.decide(
            info.attempt, info.exception, elapsed=info.elapsed, previous_delay=previous
        )
        assert decision == RetryDecision(False, None, info.error_class, info.reason)
    assert len(gave_up) == (0 if len(scheduled) == failures else 1)


def test_the_loop_and_decide_agree_on_a_known_schedule() -> None:
    options: dict[str, Any] = {
        "attempts": 5,
        "backoff": rs.Backoff.exponential(1.0, 60.0, jitter="full"),
        "deadline": 30.0,
    }
    scheduled, gave_up, sleeps = run_the_loop(options, seed=7, failures=10, duration=2.0)
    job = rs.Retry(**options, rng=random.Random(7))
    elapsed, delays = 2.0, []
    for attempt in range(1, 6):
        decision = job.decide(attempt, TimeoutError(), elapsed=elapsed)
        if not decision.retry:
            assert decision.reason == gave_up[0].reason
            break
        assert decision.delay is not None
        delays.append(decision.delay)
        elapsed += decision.delay + 2.0
    assert delays == sleeps == [info.delay for info in scheduled]
    assert job.statistics == RetryStatistics(
        calls=1, attempts=1 + len(delays), retries=len(delays), successes=0, give_ups=1
    )

"""Circuit breaker behaviour: opening, half-open probes, classification, manual control."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

import resilience as rs
from resilience.breaker import CircuitBreaker, CircuitState
from resilience.retry import Retry
from resilience.testing import FakeClock


class HTTPError(Exception):
    """A stand-in for an HTTP client's status error (classified by status)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def http_classifier(exc: BaseException) -> rs.Classification | None:
    if isinstance(exc, HTTPError):
        return (
            rs.Classification(rs.ErrorClass.PERMANENT)
            if 400 <= exc.status < 500
            else rs.Classification(rs.ErrorClass.TRANSIENT)
        )
    return None


def fail(exc: BaseException) -> Any:
    def raiser() -> None:
        raise exc

    return raiser


def ok() -> str:
    return "ok"


def call(breaker: CircuitBreaker, fn: Any) -> Any:
    """Call through the breaker; return the exception instead of raising it."""
    try:
        return breaker.call(fn)
    except BaseException as exc:
        return exc


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- consecutive mode ---------------------------------------------------------------


def test_opens_after_consecutive_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_threshold=3, break_duration=15.0, clock=clock)
    for _ in range(2):
        call(breaker, fail(ConnectionError()))
    assert breaker.state is CircuitState.CLOSED
    call(breaker, fail(ConnectionError()))
    assert breaker.state is CircuitState.OPEN
    rejected = call(breaker, ok)
    assert isinstance(rejected, rs.CircuitOpenError)
    assert rejected.retry_after == 15.0
    assert rejected.name == "p"
    clock.advance(5)
    assert call(breaker, ok).retry_after == 10.0
    assert breaker.retry_after == 10.0


def test_a_success_restarts_the_consecutive_count(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_threshold=3, clock=clock)
    for _ in range(5):
        call(breaker, fail(ConnectionError()))
        call(breaker, fail(ConnectionError()))
        assert call(breaker, ok) == "ok"
    assert breaker.state is CircuitState.CLOSED


def test_default_is_five_consecutive_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", clock=clock)
    for _ in range(4):
        call(breaker, fail(TimeoutError()))
    assert breaker.state is CircuitState.CLOSED
    call(breaker, fail(TimeoutError()))
    assert breaker.state is CircuitState.OPEN


# -- what counts as a failure -----------------------------------------------------------


def test_permanent_errors_do_not_open_it(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_threshold=2, classifier=http_classifier, clock=clock)
    for exc in [ValueError("bad"), KeyError("k"), HTTPError(404), HTTPError(404)]:
        assert call(breaker, fail(exc)) is exc
    assert breaker.state is CircuitState.CLOSED
    # A non-failure exception counts as a success: it restarts the streak.
    call(breaker, fail(HTTPError(503)))
    call(breaker, fail(HTTPError(404)))
    call(breaker, fail(HTTPError(503)))
    assert breaker.state is CircuitState.CLOSED
    call(breaker, fail(HTTPError(503)))
    assert breaker.state is CircuitState.OPEN
    stats = breaker.statistics
    assert stats.failures == 3
    assert stats.successes == 5


def test_failure_on_error_classes(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_threshold=1, failure_on=["timeout"], clock=clock)
    call(breaker, fail(ConnectionError()))
    assert breaker.state is CircuitState.CLOSED
    call(breaker, fail(TimeoutError()))
    assert breaker.state is CircuitState.OPEN


def test_failure_on_exception_types(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_threshold=1, failure_on=[KeyError], clock=clock)
    call(breaker, fail(TimeoutError()))
    assert breaker.state is CircuitState.CLOSED
    call(breaker, fail(KeyError("k")))  # PERMANENT by default, but named here
    assert breaker.state is CircuitState.OPEN


def test_failure_on_mixed_classes_and_types(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "p", failure_threshold=1, failure_on=[rs.ErrorClass.NETWORK, KeyError], clock=clock
    )
    call(breaker, fail(TimeoutError()))
    assert breaker.state is CircuitState.CLOSED
    call(breaker, fail(ConnectionResetError()))
    assert breaker.state is CircuitState.OPEN


def test_failure_on_predicate(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "p",
        failure_threshold=1,
        failure_on=lambda exc: isinstance(exc, HTTPError) and exc.status >= 500,
        clock=clock,
    )
    call(breaker, fail(HTTPError(429)))
    assert breaker.state is CircuitState.CLOSED
    call(breaker, fail(HTTPError(500)))
    assert breaker.state is CircuitState.OPEN


def test_failure_if_result(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "p", failure_threshold=2, failure_if_result=lambda r: r is None, clock=clock
    )
    assert breaker.call(lambda: None) is None  # the result is still returned
    assert breaker.call(lambda: 1) == 1
    breaker.call(lambda: None)
    assert breaker.state is CircuitState.CLOSED
    breaker.call(lambda: None)
    assert breaker.state is CircuitState.OPEN


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(1), asyncio.CancelledError()])
def test_base_exceptions_count_as_nothing(clock: FakeClock, exc: BaseException) -> None:
    breaker = CircuitBreaker("p", failure_threshold=1, clock=clock)
    assert call(breaker, fail(exc)) is exc
    assert breaker.state is CircuitState.CLOSED
    assert breaker.statistics.ignored == 1
    assert breaker.statistics.failures == 0


# -- ratio modes ------------------------------------------------------------------------


def test_count_window_ratio_needs_minimum_calls(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_ratio=0.5, window_size=10, minimum_calls=4, clock=clock)
    call(breaker, fail(ConnectionError()))
    call(breaker, fail(ConnectionError()))
    call(breaker, ok)
    assert breaker.state is CircuitState.CLOSED  # 2/3 but only 3 calls
    call(breaker, ok)  # 2/4 = 0.5 >= 0.5: even a success can complete the evidence
    assert breaker.state is CircuitState.OPEN


def test_count_window_forgets_old_outcomes(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_ratio=0.5, window_size=4, minimum_calls=4, clock=clock)
    call(breaker, fail(ConnectionError()))
    for _ in range(3):
        call(breaker, ok)
    # The window holds [F, S, S, S]; each new failure pushes a fact out.
    call(breaker, fail(ConnectionError()))  # [S, S, S, F] 1/4
    assert breaker.state is CircuitState.CLOSED
    call(breaker, fail(ConnectionError()))  # [S, S, F, F] 2/4
    assert breaker.state is CircuitState.OPEN


def test_time_window_forgets_old_outcomes(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "p", failure_ratio=0.5, window=10.0, minimum_calls=2, window_buckets=10, clock=clock
    )
    call(breaker, fail(ConnectionError()))
    clock.advance(10.0)  # the failure's slice has left the window
    call(breaker, ok)
    call(breaker, ok)
    call(breaker, fail(ConnectionError()))  # 1/3
    assert breaker.state is CircuitState.CLOSED
    clock.advance(5.0)
    call(breaker, fail(ConnectionError()))  # 2/4
    assert breaker.state is CircuitState.OPEN


def test_default_ratio_window_is_100_calls_with_10_minimum(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_ratio=1.0, clock=clock)
    for _ in range(9):
        call(breaker, fail(ConnectionError()))
    assert breaker.state is CircuitState.CLOSED
    call(breaker, fail(ConnectionError()))
    assert breaker.state is CircuitState.OPEN


# -- slow calls ---------------------------------------------------------------------------


def slow(clock: FakeClock, seconds: float) -> Any:
    def work() -> str:
        clock.advance(seconds)
        return "slow"

    return work


def test_slow_calls_count_as_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_threshold=2, slow_call_duration=1.0, clock=clock)
    assert breaker.call(slow(clock, 1.0)) == "slow"
    breaker.call(slow(clock, 0.5))
    breaker.call(slow(clock, 2.0))
    assert breaker.state is CircuitState.CLOSED
    breaker.call(slow(clock, 1.5))
    assert breaker.state is CircuitState.OPEN
    assert breaker.statistics.slow_calls == 3


def test_slow_call_ratio_is_a_separate_threshold(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "p",
        failure_ratio=1.0,
        window_size=4,
        minimum_calls=4,
        slow_call_duration=1.0,
        slow_call_ratio=0.5,
        clock=clock,
    )
    breaker.call(slow(clock, 3.0))
    breaker.call(ok)
    breaker.call(ok)
    assert breaker.state is CircuitState.CLOSED
    breaker.call(slow(clock, 3.0))
    assert breaker.state is CircuitState.OPEN


# -- half-open ------------------------------------------------------------------------------


def open_breaker(clock: FakeClock, **options: Any) -> CircuitBreaker:
    breaker = CircuitBreaker("p", failure_threshold=1, clock=clock, **options)
    call(breaker, fail(ConnectionError()))
    assert breaker.state is CircuitState.OPEN
    return breaker


def test_a_successful_probe_closes_it(clock: FakeClock) -> None:
    breaker = open_breaker(clock, break_duration=10.0)
    clock.advance(9.99)
    assert isinstance(call(breaker, ok), rs.CircuitOpenError)
    clock.advance(0.01)
    assert breaker.state is CircuitState.OPEN  # lazily: the next call probes
    assert call(breaker, ok) == "ok"
    assert breaker.state is CircuitState.CLOSED


def test_a_failed_probe_reopens_it_with_a_growing_break(clock: FakeClock) -> None:
    breaker = open_breaker(
        clock, break_duration=10.0, break_multiplier=2.0, max_break_duration=30.0
    )
    durations = []
    for _ in range(4):
        durations.append(breaker.retry_after)
        clock.advance(breaker.retry_after or 0.0)
        call(breaker, fail(ConnectionError()))
        assert breaker.state is CircuitState.OPEN
    assert durations == [10.0, 20.0, 30.0, 30.0]
    clock.advance(30.0)
    call(breaker, ok)
    assert breaker.state is CircuitState.CLOSED
    call(breaker, fail(ConnectionError()))
    assert breaker.retry_after == 10.0  # closing forgets the history


def test_half_open_needs_half_open_calls_successes(clock: FakeClock) -> None:
    breaker = open_breaker(clock, break_duration=1.0, half_open_calls=3)
    clock.advance(1.0)
    call(breaker, ok)
    call(breaker, ok)
    assert breaker.state is CircuitState.HALF_OPEN
    call(breaker, ok)
    assert breaker.state is CircuitState.CLOSED


def test_half_open_rejects_beyond_the_permits(clock: FakeClock) -> None:
    breaker = open_breaker(clock, break_duration=1.0, half_open_calls=1)
    clock.advance(1.0)
    seen = []

    def probe() -> str:
        seen.append(call(breaker, ok))  # a second call while the probe runs
        return "probe"

    assert breaker.call(probe) == "probe"
    assert isinstance(seen[0], rs.CircuitOpenError)
    assert seen[0].retry_after is None
    assert breaker.state is CircuitState.CLOSED


def test_a_permanent_error_in_a_probe_counts_as_success(clock: FakeClock) -> None:
    breaker = open_breaker(clock, break_duration=1.0)
    clock.advance(1.0)
    call(breaker, fail(ValueError()))
    assert breaker.state is CircuitState.CLOSED


def test_a_cancelled_probe_releases_its_permit(clock: FakeClock) -> None:
    breaker = open_breaker(clock, break_duration=1.0)
    clock.advance(1.0)
    call(breaker, fail(KeyboardInterrupt()))
    assert breaker.state is CircuitState.HALF_OPEN
    assert call(breaker, ok) == "ok"  # the permit came back
    assert breaker.state is CircuitState.CLOSED


def test_a_slow_probe_reopens_it(clock: FakeClock) -> None:
    breaker = open_breaker(clock, break_duration=1.0, slow_call_duration=2.0)
    clock.advance(1.0)
    breaker.call(slow(clock, 2.0))
    assert breaker.state is CircuitState.OPEN


# -- manual control ----------------------------------------------------------------------------


def test_isolate_rejects_until_reset(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", clock=clock)
    breaker.isolate()
    assert breaker.state is CircuitState.FORCED_OPEN
    clock.advance(10_000)
    rejected = call(breaker, ok)
    assert isinstance(rejected, rs.CircuitOpenError)
    assert rejected.retry_after is None
    breaker.reset()
    assert breaker.state is CircuitState.CLOSED
    assert call(breaker, ok) == "ok"


def test_disable_lets_everything_through(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_threshold=1, clock=clock)
    breaker.disable()
    for _ in range(5):
        call(breaker, fail(ConnectionError()))
    assert breaker.state is CircuitState.DISABLED
    assert call(breaker, ok) == "ok"
    breaker.reset()
    call(breaker, fail(ConnectionError()))
    assert breaker.state is CircuitState.OPEN


def test_reset_clears_the_window(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_threshold=2, clock=clock)
    call(breaker, fail(ConnectionError()))
    breaker.reset()
    call(breaker, fail(ConnectionError()))
    assert breaker.state is CircuitState.CLOSED


async def test_async_manual_control(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", clock=clock)
    await breaker.aisolate()
    assert breaker.state is CircuitState.FORCED_OPEN
    await breaker.adisable()
    assert breaker.state is CircuitState.DISABLED
    await breaker.areset()
    assert breaker.state is CircuitState.CLOSED


# -- listeners and statistics ---------------------------------------------------------------------


def test_listeners_see_every_transition(clock: FakeClock) -> None:
    changes: list[tuple[CircuitState, CircuitState, str]] = []
    breaker = CircuitBreaker(
        "p",
        failure_threshold=1,
        break_duration=1.0,
        clock=clock,
        on_state_change=lambda old, new, reason: changes.append((old, new, reason)),
    )
    extra = breaker.add_listener(lambda old, new, reason: changes.append((old, new, "extra")))
    call(breaker, fail(ConnectionError()))
    breaker.remove_listener(extra)
    clock.advance(1.0)
    call(breaker, ok)
    breaker.isolate()
    breaker.reset()
    assert [(old.value, new.value) for old, new, _ in changes] == [
        ("closed", "open"),
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
        ("closed", "forced_open"),
        ("forced_open", "closed"),
    ]
    assert changes[0][2] == "1 consecutive failures reached failure_threshold"
    assert changes[1][2] == "extra"
    assert breaker.statistics.state_changes == 5


def test_a_failing_listener_does_not_break_calls(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(old: CircuitState, new: CircuitState, reason: str) -> None:
        raise RuntimeError("listener bug")

    breaker = CircuitBreaker("p", failure_threshold=1, clock=clock, on_state_change=broken)
    exc = ConnectionError()
    assert call(breaker, fail(exc)) is exc
    assert breaker.state is CircuitState.OPEN
    assert "listener" in caplog.text


def test_statistics_count_everything(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_threshold=2, clock=clock)
    call(breaker, ok)
    call(breaker, fail(ValueError()))
    call(breaker, fail(ConnectionError()))
    call(breaker, fail(KeyboardInterrupt()))
    call(breaker, fail(ConnectionError()))
    call(breaker, ok)
    stats = breaker.statistics
    assert (stats.calls, stats.successes, stats.failures, stats.ignored) == (5, 2, 2, 1)
    assert stats.rejections == 1
    assert stats.state is CircuitState.OPEN
    assert stats.state_changes == 1
    with pytest.raises(AttributeError):
        stats.calls = 0  # type: ignore[misc]


# -- forms: decorator, with, async --------------------------------------------------------------


def test_decorator_keeps_the_function_and_exposes_the_policy(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", clock=clock)

    @breaker
    def add(a: int, b: int = 0) -> int:
        """Adds."""
        return a + b

    assert add(1, b=2) == 3
    assert add.__name__ == "add"
    assert add.__doc__ == "Adds."
    assert add.policy is breaker  # type: ignore[attr-defined]


def test_with_block(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_threshold=2, break_duration=5.0, clock=clock)
    for _ in range(2):
        with pytest.raises(ConnectionError), breaker:
            raise ConnectionError
    with pytest.raises(rs.CircuitOpenError), breaker:
        pytest.fail("must not run")
    clock.advance(5.0)
    with breaker:
        pass
    assert breaker.state is CircuitState.CLOSED
    assert breaker.statistics.successes == 1


def test_with_block_times_slow_calls(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_threshold=1, slow_call_duration=1.0, clock=clock)
    with breaker:
        clock.advance(1.0)
    assert breaker.state is CircuitState.OPEN


def test_nested_with_blocks(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_threshold=1, break_duration=1.0, clock=clock)
    with breaker:
        with pytest.raises(ConnectionError), breaker:
            raise ConnectionError
        assert breaker.state is CircuitState.OPEN
    assert breaker.statistics.calls == 2


def test_exit_without_enter_is_an_error(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", clock=clock)
    with pytest.raises(RuntimeError):
        breaker.__exit__(None, None, None)


async def test_async_decorator_and_async_with(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_threshold=2, break_duration=5.0, clock=clock)

    @breaker
    async def fetch(fail_it: bool) -> str:
        await asyncio.sleep(0)
        if fail_it:
            raise ConnectionError
        return "ok"

    assert await fetch(False) == "ok"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await fetch(True)
    with pytest.raises(rs.CircuitOpenError):
        await fetch(False)
    with pytest.raises(rs.CircuitOpenError):
        async with breaker:
            pytest.fail("must not run")
    clock.advance(5.0)
    async with breaker:
        await asyncio.sleep(0)
    assert breaker.state is CircuitState.CLOSED
    assert await breaker.acall(fetch.__wrapped__, False) == "ok"  # type: ignore[attr-defined]


async def test_async_checked_path(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "p", failure_ratio=0.5, window_size=2, minimum_calls=2, clock=clock, break_duration=1.0
    )

    async def work(value: int) -> int:
        if value < 0:
            raise ConnectionError
        return value

    assert await breaker.acall(work, 1) == 1
    with pytest.raises(ConnectionError):
        await breaker.acall(work, -1)
    assert breaker.state is CircuitState.OPEN
    clock.advance(1.0)
    assert await breaker.acall(work, 2) == 2
    assert breaker.state is CircuitState.CLOSED


async def test_cancelled_task_counts_as_nothing(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_threshold=1, clock=clock)
    started = asyncio.Event()

    @breaker
    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is CircuitState.CLOSED
    assert breaker.statistics.ignored == 1


# -- with retry ---------------------------------------------------------------------------------


def test_a_retry_outside_the_breaker_waits_out_the_break(clock: FakeClock) -> None:
    breaker = CircuitBreaker("p", failure_threshold=2, break_duration=10.0, clock=clock)
    for _ in range(2):
        call(breaker, fail(ConnectionError()))
    calls = []

    @Retry(attempts=3, backoff=rs.Backoff.constant(0.1), clock=clock)
    @breaker
    def fetch() -> str:
        calls.append(clock.now())
        return "ok"

    assert fetch() == "ok"
    assert clock.sleeps == [10.0]  # CircuitOpenError's retry_after, not the 0.1 s backoff
    assert calls == [10.0]
    assert breaker.state is CircuitState.CLOSED


def test_circuit_open_error_is_transient_with_retry_after() -> None:
    classification = rs.classify(rs.CircuitOpenError("p", 3.5))
    assert classification == rs.Classification(rs.ErrorClass.TRANSIENT, 3.5)


# -- probes that never come back, predicates that raise, the root cause (issue 11) ------------

FAR = 1_700_000_000.25  # far from zero: a clock at 0 hides "now" mistakes


def _tripped(clock: FakeClock, **options: Any) -> CircuitBreaker:
    breaker = CircuitBreaker("p", failure_threshold=1, break_duration=5.0, clock=clock, **options)
    with pytest.raises(ConnectionError):
        breaker.call(_raise, ConnectionError("down"))
    return breaker


def _raise(error: BaseException) -> None:
    raise error


def test_a_probe_that_never_returns_lapses_after_its_lease() -> None:
    clock = FakeClock(FAR)
    breaker = _tripped(clock, probe_lease=30.0)
    clock.advance(5.0)
    stuck = breaker.__enter__()  # a probe whose thread hangs forever: never exits
    assert stuck.state is CircuitState.HALF_OPEN
    clock.advance(29.0)
    with pytest.raises(rs.CircuitOpenError):
        breaker.call(int)  # the permit is still held
    clock.advance(1.0)
    assert breaker.call(int) == 0  # lapsed: a new probe runs, and closes the circuit
    assert breaker.state is CircuitState.CLOSED


def test_the_default_lease_frees_a_wedged_half_open_circuit() -> None:
    clock = FakeClock(FAR)
    breaker = _tripped(clock)
    clock.advance(5.0)
    breaker.__enter__()
    clock.advance(59.0)
    with pytest.raises(rs.CircuitOpenError):
        breaker.call(int)
    clock.advance(1.0)
    assert breaker.call(int) == 0


@pytest.mark.parametrize("lease", [0, 0.0, -1.0, math.inf, math.nan, True])
def test_probe_lease_is_validated(lease: Any) -> None:
    with pytest.raises(rs.ConfigurationError, match="probe_lease"):
        CircuitBreaker("p", probe_lease=lease)


@pytest.mark.parametrize("field", ["break_duration", "max_break_duration"])
def test_an_infinite_break_is_refused(field: str) -> None:
    with pytest.raises(rs.ConfigurationError, match=field):
        CircuitBreaker("p", **{field: math.inf})


@pytest.mark.parametrize(
    ("field", "value"),
    [("window_size", 10**26), ("failure_threshold", 10**26), ("half_open_calls", 10**9)],
)
def test_counts_have_an_upper_bound(field: str, value: int) -> None:
    options: dict[str, Any] = {field: value}
    if field == "window_size":
        options["failure_ratio"] = 0.5
    with pytest.raises(rs.ConfigurationError, match=field):
        CircuitBreaker("p", **options)


def test_a_grown_break_stays_finite() -> None:
    from resilience._core.breaker import MAX_BREAK, break_duration

    assert break_duration(10_000, 1.0, 2.0, math.inf) == MAX_BREAK
    assert break_duration(1, 1e300, 1.0, math.inf) == MAX_BREAK


def _raising_failure_on(exc: BaseException) -> bool:
    raise RuntimeError("broken predicate")


@pytest.mark.parametrize("form", ["call", "with"])
def test_a_raising_failure_on_during_a_probe_hands_the_permit_back(
    form: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(FAR)
    calls: list[int] = []

    def judge(exc: BaseException) -> bool:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("broken predicate")
        return True

    breaker = _tripped(clock, failure_on=judge)
    clock.advance(5.0)
    with pytest.raises(ValueError, match="the call's own"):  # the call's outcome survives
        if form == "call":
            breaker.call(_raise, ValueError("the call's own error"))
        else:
            with breaker:
                raise ValueError("the call's own error")
    assert "failure_on" in caplog.text
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.call(int) == 0  # the permit came back: the next probe runs
    assert breaker.state is CircuitState.CLOSED


async def test_a_raising_failure_if_result_during_an_async_probe_hands_the_permit_back() -> None:
    clock = FakeClock(FAR)
    results: list[object] = []

    def judge(result: object) -> bool:
        results.append(result)
        if result == "bad":
            raise RuntimeError("broken predicate")
        return False

    breaker = CircuitBreaker(
        "p", failure_threshold=1, break_duration=5.0, clock=clock, failure_if_result=judge
    )
    with pytest.raises(ConnectionError):
        await breaker.acall(_araise, ConnectionError("down"))
    clock.advance(5.0)

    async def bad() -> str:
        return "bad"

    assert await breaker.acall(bad) == "bad"  # the result is returned, not the predicate's error
    assert breaker.state is CircuitState.HALF_OPEN
    assert await breaker.acall(asyncio.sleep, 0) is None
    assert breaker.state is CircuitState.CLOSED


async def _araise(error: BaseException) -> None:
    raise error


def test_a_rejection_carries_the_failure_that_opened_the_circuit() -> None:
    clock = FakeClock(FAR)
    breaker = _tripped(clock)
    with pytest.raises(rs.CircuitOpenError) as rejected:
        breaker.call(int)
    assert isinstance(rejected.value.opened_by, ConnectionError)
    assert rejected.value.__cause__ is rejected.value.opened_by
    breaker.isolate()
    with pytest.raises(rs.CircuitOpenError) as forced:
        breaker.call(int)
    assert forced.value.opened_by is None  # isolated by hand: no failure to blame


def test_a_retry_giving_up_on_an_open_circuit_keeps_the_root_cause() -> None:
    clock = FakeClock(FAR)
    breaker = CircuitBreaker("p", failure_threshold=2, break_duration=600.0, clock=clock)
    # The deadline is shorter than the break: the retry gives up on the rejection.
    retry = Retry(attempts=4, backoff=rs.Backoff.constant(1.0), deadline=30.0, clock=clock)

    class PaymentGatewayDown(ConnectionError):
        pass

    def pay() -> None:
        raise PaymentGatewayDown("gateway 502")

    with pytest.raises(rs.CircuitOpenError) as gave_up:
        retry.call(breaker.wrap_sync(pay))
    assert isinstance(gave_up.value.__cause__, PaymentGatewayDown)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_threshold", True),
        ("half_open_calls", False),
        ("failure_ratio", True),
        ("break_duration", True),
        ("break_multiplier", math.inf),
        ("name", "a\x00b"),
        ("name", "a\ud800"),
        ("name", "x" * 10_000),
    ],
)
def test_bad_values_are_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(rs.ConfigurationError, match=field):
        CircuitBreaker(**{field: value})

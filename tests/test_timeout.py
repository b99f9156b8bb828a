"""Timeout: cooperative (sync), cancelling (async) and thread modes; the deadline it
sets. Timing on FakeClock only; the thread-mode test blocks its worker on a real
Event and asserts behaviour, not timing."""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading

import pytest

import resilience as rs
from resilience._deadline import check_deadline, remaining_time
from resilience.testing import FakeClock
from resilience.timeout import Timeout


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_returns_a_result_within_the_time(clock: FakeClock) -> None:
    timeout = Timeout(5.0, clock=clock)
    assert timeout.call(lambda: 42) == 42
    assert timeout.statistics.calls == 1
    assert timeout.statistics.timeouts == 0


def test_the_deadline_flows_inward_and_not_outward(clock: FakeClock) -> None:
    seen: list[float | None] = []

    @Timeout(5.0, clock=clock)
    def work() -> None:
        seen.append(remaining_time())
        clock.advance(2.0)
        seen.append(remaining_time())

    assert remaining_time() is None
    work()
    assert seen == [5.0, 3.0]
    assert remaining_time() is None


def test_nested_timeouts_keep_the_tighter_deadline(clock: FakeClock) -> None:
    seen: list[float | None] = []
    outer = Timeout(3.0, clock=clock, name="outer")
    inner = Timeout(10.0, clock=clock, name="inner")
    outer.call(inner.call, lambda: seen.append(remaining_time()))
    inner.call(Timeout(1.0, clock=clock).call, lambda: seen.append(remaining_time()))
    assert seen == [3.0, 1.0]


def test_a_late_result_raises_timeout_exceeded(clock: FakeClock) -> None:
    def slow() -> str:
        clock.advance(6.0)
        return "late"

    timeout = Timeout(5.0, clock=clock, name="slow")
    with pytest.raises(rs.TimeoutExceeded) as caught:
        timeout.call(slow)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.name == "slow"
    assert caught.value.seconds == 5.0
    assert timeout.statistics.timeouts == 1


def test_a_late_failure_raises_timeout_exceeded_caused_by_it(clock: FakeClock) -> None:
    def slow_failure() -> None:
        clock.advance(6.0)
        raise ConnectionError("reset")

    with pytest.raises(rs.TimeoutExceeded) as caught:
        Timeout(5.0, clock=clock).call(slow_failure)
    assert isinstance(caught.value.__cause__, ConnectionError)


def test_a_failure_in_time_propagates_unchanged(clock: FakeClock) -> None:
    error = ConnectionError("reset")

    def fail() -> None:
        raise error

    with pytest.raises(ConnectionError) as caught:
        Timeout(5.0, clock=clock).call(fail)
    assert caught.value is error


def test_check_deadline_is_a_cancellation_point(clock: FakeClock) -> None:
    steps: list[int] = []

    def long_job() -> None:
        for step in range(10):
            check_deadline()
            steps.append(step)
            clock.advance(1.0)

    timeout = Timeout(3.0, clock=clock)
    with pytest.raises(rs.TimeoutExceeded):
        timeout.call(long_job)
    assert steps == [0, 1, 2]
    assert timeout.statistics.timeouts == 1
    check_deadline()  # outside any timeout: never raises


def test_a_retry_inside_never_sleeps_past_the_deadline(clock: FakeClock) -> None:
    attempts: list[float] = []

    def always_fails() -> None:
        attempts.append(clock.now())
        raise ConnectionError("down")

    retry = rs.Retry(attempts=10, backoff=rs.Backoff.constant(2.0), clock=clock)
    with pytest.raises(ConnectionError) as caught:
        Timeout(5.0, clock=clock).call(retry.wrap_sync(always_fails))
    # 0, 2, 4: a third 2 s sleep would end at 6 s, past the 5 s deadline.
    assert attempts == [0.0, 2.0, 4.0]
    assert clock.sleeps == [2.0, 2.0]
    assert any("deadline" in note for note in caught.value.__notes__)


async def test_async_a_retry_inside_never_sleeps_past_the_deadline(clock: FakeClock) -> None:
    attempts: list[float] = []

    async def always_fails() -> None:
        attempts.append(clock.now())
        raise ConnectionError("down")

    retry = rs.Retry(attempts=10, backoff=rs.Backoff.constant(2.0), clock=clock)
    with pytest.raises(ConnectionError):
        await Timeout(5.0, clock=clock).acall(retry.wrap_async(always_fails))
    assert attempts == [0.0, 2.0, 4.0]
    assert clock.sleeps == [2.0, 2.0]


def test_accepts_timedelta_and_rejects_bad_seconds() -> None:
    assert Timeout(datetime.timedelta(milliseconds=1500)).seconds == 1.5
    for bad in (0, -1.0, float("nan"), "soon"):
        with pytest.raises(rs.ConfigurationError) as caught:
            Timeout(bad)
        assert caught.value.fields == ("seconds",)
    with pytest.raises(rs.ConfigurationError) as caught:
        Timeout(1.0, mode="signal")  # type: ignore[arg-type]
    assert caught.value.fields == ("mode",)


# -- async: real cancellation ----------------------------------------------------------------


async def test_async_cancels_the_call_and_raises_timeout_exceeded() -> None:
    cancelled = asyncio.Event()

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    timeout = Timeout(0.01, name="hang")
    with pytest.raises(rs.TimeoutExceeded) as caught:
        await timeout.acall(hangs)
    assert cancelled.is_set()
    assert caught.value.name == "hang"
    assert timeout.statistics.timeouts == 1


async def test_async_the_deadline_flows_inward(clock: FakeClock) -> None:
    seen: list[float | None] = []

    @Timeout(5.0, clock=clock)
    async def work() -> int:
        seen.append(remaining_time())
        await clock.asleep(1.0)
        seen.append(remaining_time())
        return 1

    assert await work() == 1
    assert seen == [5.0, 4.0]


async def test_async_a_late_result_on_a_virtual_clock_is_a_timeout(clock: FakeClock) -> None:
    async def slow() -> str:
        await clock.asleep(6.0)
        return "late"

    with pytest.raises(rs.TimeoutExceeded):
        await Timeout(5.0, clock=clock).acall(slow)


async def test_async_a_timeout_error_of_the_callee_is_not_ours(clock: FakeClock) -> None:
    async def own_timeout() -> None:
        raise TimeoutError("socket read")

    with pytest.raises(TimeoutError) as caught:
        await Timeout(5.0, clock=clock).acall(own_timeout)
    assert not isinstance(caught.value, rs.TimeoutExceeded)


async def test_async_nested_timeouts_the_inner_one_fires() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    inner = Timeout(0.01, name="inner")
    outer = Timeout(60.0, name="outer")
    with pytest.raises(rs.TimeoutExceeded) as caught:
        await outer.acall(inner.wrap_async(hangs))
    assert caught.value.name == "inner"
    assert inner.statistics.timeouts == 1
    assert outer.statistics.timeouts == 0  # its own deadline had not passed


# -- sync: thread mode -----------------------------------------------------------------------


def test_thread_mode_stops_waiting_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    release, finished = threading.Event(), threading.Event()

    def blocks() -> str:
        release.wait(10)
        finished.set()
        return "too late"

    timeout = Timeout(0.02, mode="thread", name="stuck")
    with (
        caplog.at_level(logging.WARNING, logger="resilience.timeout"),
        pytest.raises(rs.TimeoutExceeded),
    ):
        timeout.call(blocks)
    assert not finished.is_set()  # the caller got control back while the thread runs on
    assert "keeps running" in caplog.text
    assert timeout.statistics.abandoned_threads == 1
    release.set()
    assert finished.wait(10)


def test_thread_mode_returns_results_and_raises_errors() -> None:
    timeout = Timeout(30.0, mode="thread")
    assert timeout.call(lambda: threading.current_thread().name).startswith("resilience-timeout")

    def fail() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        timeout.call(fail)
    assert timeout.statistics.timeouts == 0


def test_thread_mode_lets_the_calls_own_timeout_error_through() -> None:
    def socket_timeout() -> None:
        raise TimeoutError("read timed out")

    timeout = Timeout(30.0, mode="thread")
    with pytest.raises(TimeoutError) as caught:
        timeout.call(socket_timeout)
    assert not isinstance(caught.value, rs.TimeoutExceeded)
    assert timeout.statistics.abandoned_threads == 0


def test_thread_mode_passes_the_deadline_to_the_thread(clock: FakeClock) -> None:
    assert Timeout(30.0, mode="thread", clock=clock).call(remaining_time) == 30.0


async def test_thread_mode_on_a_coroutine_function_cancels_like_async() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    with pytest.raises(rs.TimeoutExceeded):
        await Timeout(0.01, mode="thread").acall(hangs)


def test_timeouts_are_reported_as_events(clock: FakeClock) -> None:
    from resilience.telemetry import events, subscribe

    seen: list[events.Event] = []
    unsubscribe = subscribe(seen.append)
    try:
        with pytest.raises(rs.TimeoutExceeded):
            Timeout(1.0, clock=clock, name="slow").call(clock.advance, 2.0)
    finally:
        unsubscribe()
    expired = [event for event in seen if isinstance(event, events.TimeoutExpired)]
    assert [(event.policy, event.seconds) for event in expired] == [("slow", 1.0)]

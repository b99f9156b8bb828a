"""The timeout's driver (async, and the cooperative sync mode) in every form.

Written once, async; scripts/unasync.py generates the sync twin in tests/_sync.
Timing on FakeClock: the callee advances it, so the loop's real timer (set to
the timeout's real seconds) never fires; what is checked is the verdict after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import resilience as rs
from resilience.telemetry import events, subscribe
from resilience.testing import FakeClock

FORMS = ["call", "decorator"]


async def run(form: str, policy: Any, fn: Callable[..., Any]) -> Any:
    if form == "call":
        return await policy.acall(fn)
    return await policy(fn)()


def taking(clock: FakeClock, seconds: float, outcome: object = "done") -> Callable[..., Any]:
    """A call that takes ``seconds`` of ``clock``, then returns or raises ``outcome``."""

    async def fn() -> object:
        clock.advance(seconds)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return fn


@pytest.fixture
def expired() -> Iterator[list[float]]:
    seconds: list[float] = []
    unsubscribe = subscribe(
        lambda event: (
            seconds.append(event.seconds) if isinstance(event, events.TimeoutExpired) else None
        )
    )
    yield seconds
    unsubscribe()


@pytest.mark.parametrize("form", FORMS)
async def test_a_call_within_the_budget_returns(form: str, expired: list[float]) -> None:
    clock = FakeClock(1000.0)
    timeout = rs.Timeout(30.0, clock=clock, name="drv-ok")
    assert await run(form, timeout, taking(clock, 29.0)) == "done"
    assert expired == []
    assert (timeout.statistics.calls, timeout.statistics.timeouts) == (1, 0)


@pytest.mark.parametrize("form", FORMS)
async def test_a_call_that_ends_late_is_a_timeout(form: str, expired: list[float]) -> None:
    clock = FakeClock(1000.0)
    timeout = rs.Timeout(30.0, clock=clock, name="drv-late")
    with pytest.raises(rs.TimeoutExceeded) as caught:
        await run(form, timeout, taking(clock, 31.0))
    assert caught.value.__cause__ is None
    error = ConnectionError("reset")
    with pytest.raises(rs.TimeoutExceeded) as caught:
        await run(form, timeout, taking(clock, 31.0, error))
    assert caught.value.__cause__ is error
    # A TimeoutError of the callee's own, after the deadline: ours too.
    with pytest.raises(rs.TimeoutExceeded):
        await run(form, timeout, taking(clock, 31.0, TimeoutError("socket")))
    assert expired == [30.0, 30.0, 30.0]
    assert timeout.statistics.timeouts == 3


@pytest.mark.parametrize("form", FORMS)
async def test_an_error_before_the_deadline_is_the_callee_s(form: str) -> None:
    clock = FakeClock(1000.0)
    timeout = rs.Timeout(30.0, clock=clock, name="drv-error")
    with pytest.raises(ConnectionError):
        await run(form, timeout, taking(clock, 1.0, ConnectionError("reset")))
    with pytest.raises(TimeoutError) as caught:
        await run(form, timeout, taking(clock, 1.0, TimeoutError("socket")))
    assert not isinstance(caught.value, rs.TimeoutExceeded)
    assert timeout.statistics.timeouts == 0


@pytest.mark.parametrize("form", FORMS)
async def test_the_deadline_flows_inward_and_the_tighter_one_wins(form: str) -> None:
    clock = FakeClock(1000.0)
    outer = rs.Timeout(10.0, clock=clock, name="drv-outer")
    inner = rs.Timeout(30.0, clock=clock, name="drv-inner")
    left: list[float | None] = []

    async def work() -> str:
        left.append(rs.remaining_time())
        clock.advance(11.0)
        rs.check_deadline()
        return "unreachable"

    async def nested() -> Any:
        return await run(form, inner, work)

    with pytest.raises(rs.TimeoutExceeded) as caught:
        await run(form, outer, nested)
    assert left == [10.0]  # the outer deadline bounds the inner timeout
    assert caught.value.seconds == 10.0
    # Both deadlines are the outer one: each timeout counts the expiry once.
    assert (outer.statistics.timeouts, inner.statistics.timeouts) == (1, 1)
    assert rs.remaining_time() is None  # and both are gone afterwards

"""Every bound the docs promise, attacked (issue 11: defects 6, 7, 16 and 18).

Derived quantities of a rate limiter are validated, every wait has a ceiling
(server hints, penalties, timeouts), interrupted backoff sleeps are not counted
as attempts, and ``Retry-After`` is parsed as RFC 9110 says. Clocks start far
from zero; nothing sleeps for real.
"""

from __future__ import annotations

import asyncio
import email.utils
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilience as rs
from resilience.classify import parse_retry_after
from resilience.clock import MAX_DURATION
from resilience.retry import DEFAULT_RETRY_AFTER_CEILING
from resilience.testing import FakeClock

FAR = 1_700_000_000.25


# -- (6) a rate limiter's derived quantities -------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "per", "burst"),
    [
        (1e-10, 1e300, 1),
        (1e300, 1e-300, 1),
        (1, 1e9, 10),
        (1e-10, 1.0, 1),
        (1e7, 1.0, 1),
        (1, 1.0, 10**400),
    ],
)
def test_a_shape_whose_derived_quantities_overflow_is_refused(
    rate: float, per: float, burst: int
) -> None:
    with pytest.raises(rs.ConfigurationError) as refused:
        rs.RateLimiter("x", rate=rate, per=per, burst=burst)
    assert any(field in str(refused.value) for field in ("rate", "per", "burst"))


def _shapes() -> st.SearchStrategy[tuple[float, float, int]]:
    exponents = st.integers(-12, 12)
    return st.tuples(
        exponents.map(lambda e: 10.0**e),
        exponents.map(lambda e: 10.0**e),
        st.integers(1, 10**12),
    )


@settings(max_examples=300, deadline=None)
@given(
    shape=_shapes(),
    steps=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=30),
)
def test_an_accepted_shape_never_grants_past_its_bound(
    shape: tuple[float, float, int], steps: list[float]
) -> None:
    rate, per, burst = shape
    clock = FakeClock(FAR)
    try:
        limiter = rs.RateLimiter("x", rate=rate, per=per, burst=burst, clock=clock)
    except rs.ConfigurationError:
        return  # refused at construction: the point of (6)
    interval = per / rate
    assert math.isfinite(interval) and interval > 0
    granted, elapsed, takes = 0, 0.0, 0
    for step in steps:
        clock.advance(step)
        elapsed += step
        for _ in range(3):
            granted += limiter.try_acquire()
            takes += 1
        # The oracle: a full bucket, then one token per interval; each take may
        # round by half the float spacing of the clock's value (documented).
        grid = takes * math.ulp(clock.now()) / (2 * interval)
        assert granted <= burst + elapsed / interval + grid + 1e-6 * (1 + elapsed / interval)


# -- (7) every wait has a ceiling -----------------------------------------------------------


def _hinted(seconds: float) -> rs.RateLimitExceeded:
    return rs.RateLimitExceeded("upstream", retry_after=seconds)


@pytest.mark.parametrize(
    "backoff",
    [rs.Backoff.constant(1.0), rs.Backoff.schedule([1, 5]), rs.Backoff.linear(1.0, 1.0)],
    ids=["constant", "schedule", "linear"],
)
@pytest.mark.parametrize("hint", [86_400.0, 1e308, math.inf])
def test_a_server_hint_without_a_cap_waits_at_most_the_default_ceiling(
    backoff: rs.Backoff, hint: float
) -> None:
    clock = FakeClock(FAR)
    retry = rs.Retry(attempts=2, backoff=backoff, clock=clock)
    with pytest.raises(rs.RateLimitExceeded):
        retry.call(_raise, _hinted(hint))
    assert clock.sleeps == [DEFAULT_RETRY_AFTER_CEILING]


@pytest.mark.parametrize("hint", [86_400.0, math.inf])
def test_max_delay_bounds_a_server_hint(hint: float) -> None:
    clock = FakeClock(FAR)
    retry = rs.Retry(attempts=2, backoff=rs.Backoff.constant(1.0), max_delay=10.0, clock=clock)
    with pytest.raises(rs.RateLimitExceeded):
        retry.call(_raise, _hinted(hint))
    assert clock.sleeps == [10.0]


def test_a_capped_backoff_bounds_a_server_hint_by_its_cap() -> None:
    clock = FakeClock(FAR)
    retry = rs.Retry(attempts=2, backoff=rs.Backoff.exponential(1.0, cap=30.0), clock=clock)
    with pytest.raises(rs.RateLimitExceeded):
        retry.call(_raise, _hinted(86_400.0))
    assert clock.sleeps == [30.0]


def _raise(error: BaseException) -> None:
    raise error


@pytest.mark.parametrize("seconds", [1e12, 1e308, math.inf])
def test_a_huge_penalty_then_acquire_never_overflows(seconds: float) -> None:
    clock = FakeClock(FAR)
    limiter = rs.RateLimiter("api", rate=1, per=1.0, clock=clock)
    limiter.penalize(seconds)
    with pytest.raises(rs.RateLimitExceeded) as refused:
        limiter.acquire(timeout=0)
    assert refused.value.retry_after is not None
    assert 0 < refused.value.retry_after <= MAX_DURATION + 1
    limiter.acquire(timeout=None)  # waits the (bounded) pause on the fake clock
    assert all(0 <= sleep <= MAX_DURATION + 1 for sleep in clock.sleeps)


@pytest.mark.parametrize("timeout", [1e308, math.inf])
def test_a_huge_acquire_timeout_never_overflows_a_real_wait(timeout: float) -> None:
    limiter = rs.RateLimiter("api", rate=1000, per=1.0, burst=1)
    limiter.acquire(timeout=timeout)
    limiter.acquire(timeout=timeout)  # waits about a millisecond on the real clock


async def test_a_huge_async_timeout_never_overflows_a_real_wait() -> None:
    limiter = rs.RateLimiter("api", rate=1000, per=1.0, burst=1)
    await limiter.aacquire(timeout=1e308)
    await limiter.aacquire(timeout=1e308)


# -- (16) an interrupted backoff sleep is not an attempt -------------------------------------


class _SleepInterrupted(Exception):
    pass


class _InterruptingClock(FakeClock):
    def sleep(self, seconds: float) -> None:
        raise _SleepInterrupted


def _down() -> None:
    raise ConnectionError("down")


def test_a_sync_retry_whose_sleep_raises_counts_no_further_attempt() -> None:
    retry = rs.Retry(attempts=5, backoff=rs.Backoff.constant(1.0), clock=_InterruptingClock(FAR))
    with pytest.raises(_SleepInterrupted):
        retry.call(_down)
    stats = retry.statistics
    assert (stats.calls, stats.attempts, stats.retries) == (1, 1, 0)


async def test_an_async_retry_cancelled_in_its_sleep_counts_no_further_attempt() -> None:
    retry = rs.Retry(attempts=5, backoff=rs.Backoff.constant(3600.0))  # the real clock
    started = asyncio.Event()

    async def down() -> None:
        started.set()
        raise ConnectionError("down")

    task = asyncio.create_task(retry.acall(down))
    await started.wait()
    for _ in range(3):
        await asyncio.sleep(0)  # into the backoff sleep
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = retry.statistics
    assert (stats.attempts, stats.retries) == (1, 0)


# -- (18) Retry-After as RFC 9110 defines it ---------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "-5",
        "+5",
        "1_000",
        "1e3",
        "1.5",
        "١٢",
        "\uff15",
        "0x10",
        "",
        " ",
        "5s",
        "inf",
        "nan",
        "1e308",
    ],
)
def test_retry_after_that_is_not_delay_seconds_nor_a_date_is_none(value: str) -> None:
    assert parse_retry_after(value) is None


@given(st.integers(0, 10**30))
def test_delay_seconds_are_ascii_digits_bounded_by_the_ceiling(seconds: int) -> None:
    assert parse_retry_after(str(seconds)) == min(float(seconds), MAX_DURATION)


@given(st.text(max_size=12))
def test_any_text_gives_none_or_a_bounded_delay(text: str) -> None:
    parsed = parse_retry_after(text)
    assert parsed is None or 0.0 <= parsed <= MAX_DURATION


@pytest.mark.parametrize("offset", [-86_400.0, -1.0, 120.0])
def test_an_http_date_is_a_delay_from_now_and_a_past_date_is_zero(offset: float) -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + offset, usegmt=True)
    assert parse_retry_after(header, now=now) == max(0.0, offset)


def test_a_date_far_ahead_is_clamped() -> None:
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now=0.0) == MAX_DURATION

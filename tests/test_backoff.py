"""Backoff strategies: bounds, exact schedules, validation."""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

import resilience as rs
from resilience._core import backoff as core_backoff
from resilience._validation import MAX_COUNT
from resilience.backoff import Backoff, Jitter
from resilience.testing import FakeClock

durations = st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False)
retries = st.integers(min_value=1, max_value=10_000)
seeds = st.integers(min_value=0, max_value=2**32)
jitters = st.sampled_from(["none", "full", "equal"])


@st.composite
def exponentials(draw: st.DrawFn) -> Backoff:
    base = draw(st.floats(min_value=0.001, max_value=100.0))
    cap = draw(st.floats(min_value=base, max_value=1e5))
    multiplier = draw(st.floats(min_value=1.0, max_value=10.0))
    jitter = draw(st.sampled_from(list(Jitter)))
    return Backoff.exponential(base, cap, multiplier=multiplier, jitter=jitter)


@st.composite
def any_backoff(draw: st.DrawFn) -> Backoff:
    kind = draw(st.sampled_from(["constant", "linear", "exponential", "schedule"]))
    if kind == "constant":
        return Backoff.constant(draw(durations), jitter=draw(jitters))
    if kind == "linear":
        base, step = draw(durations), draw(durations)
        cap = draw(st.floats(min_value=base, max_value=1e6) | st.just(math.inf))
        return Backoff.linear(base, step, cap=cap, jitter=draw(jitters))
    if kind == "schedule":
        return Backoff.schedule(
            draw(st.lists(durations, min_size=1, max_size=8)), jitter=draw(jitters)
        )
    return draw(exponentials())


@given(any_backoff(), st.lists(retries, min_size=1, max_size=20), seeds)
def test_every_delay_within_its_bounds(backoff: Backoff, numbers: list[int], seed: int) -> None:
    rng = random.Random(seed)
    previous: float | None = None
    for n in numbers:
        delay = backoff.delay(n, previous, rng)
        assert backoff.floor(n) - 1e-9 <= delay <= backoff.ceiling(n) + 1e-9
        assert 0.0 <= delay <= backoff.max_delay + 1e-9
        previous = delay


@given(exponentials(), retries)
def test_exponential_never_passes_its_cap(backoff: Backoff, n: int) -> None:
    assert backoff.ceiling(n) <= backoff.options.cap  # type: ignore[union-attr]


def test_exponential_sequence_without_jitter() -> None:
    backoff = Backoff.exponential(0.5, 10.0, jitter="none")
    rng = random.Random(0)
    assert [backoff.delay(n, None, rng) for n in range(1, 8)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        10.0,
        10.0,
    ]
    assert backoff.ceiling(10**6) == 10.0  # no overflow for huge retry numbers


def test_decorrelated_jitter_follows_brooker() -> None:
    backoff = Backoff.exponential(1.0, 20.0, jitter="decorrelated")
    rng = random.Random(7)
    previous = None
    for n in range(1, 50):
        delay = backoff.delay(n, previous, rng)
        low, high = 1.0, min(20.0, 3 * (1.0 if previous is None else previous))
        assert low <= delay <= max(low, high)
        previous = delay


@given(st.lists(durations, min_size=1, max_size=10))
def test_schedule_followed_exactly_then_repeats_last(delays: list[float]) -> None:
    backoff = Backoff.schedule(delays)
    rng = random.Random(0)
    got = [backoff.delay(n, None, rng) for n in range(1, len(delays) + 3)]
    assert got == [*delays, delays[-1], delays[-1]]


def test_linear() -> None:
    backoff = Backoff.linear(1.0, 2.0, cap=6.0)
    assert [backoff.ceiling(n) for n in range(1, 6)] == [1.0, 3.0, 5.0, 6.0, 6.0]


def test_timedelta_accepted() -> None:
    assert Backoff.constant(datetime.timedelta(milliseconds=250)).ceiling(1) == 0.25


def test_seeded_rng_is_reproducible() -> None:
    backoff = Backoff.exponential(0.1, 5.0, jitter="full")
    first = [backoff.delay(n, None, random.Random(3)) for n in range(1, 6)]
    second = [backoff.delay(n, None, random.Random(3)) for n in range(1, 6)]
    assert first == second


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Backoff.constant(-1), "delay"),
        (lambda: Backoff.constant(math.nan), "delay"),
        (lambda: Backoff.constant(math.inf), "delay"),
        (lambda: Backoff.exponential(-0.1), "base"),
        (lambda: Backoff.exponential(2.0, 1.0), "cap"),
        (lambda: Backoff.exponential(0.1, 1.0, multiplier=0.5), "multiplier"),
        (lambda: Backoff.exponential(0.0, 1.0, jitter="decorrelated"), "jitter"),
        (lambda: Backoff.exponential(jitter="wobbly"), "jitter"),
        (lambda: Backoff.linear(1.0, -1.0), "step"),
        (lambda: Backoff.linear(5.0, 1.0, cap=1.0), "cap"),
        (lambda: Backoff.linear(1.0, 1.0, jitter="decorrelated"), "jitter"),
        (lambda: Backoff.schedule([]), "delays"),
        (lambda: Backoff.schedule([1, -5, 30]), "delays.1"),
        (lambda: Backoff.from_options({"kind": "fibonacci"}), "kind"),
    ],
)
def test_invalid_options_name_the_field(build: object, field: str) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        build()  # type: ignore[operator]
    assert field in caught.value.fields
    assert isinstance(caught.value, ValueError)
    assert field in str(caught.value)


def test_from_options_round_trip() -> None:
    for backoff in (
        Backoff.constant(1.0),
        Backoff.linear(1.0, 2.0, cap=10.0, jitter="equal"),
        Backoff.exponential(0.2, 30.0, jitter="decorrelated"),
        Backoff.schedule([1, 5, 30, 300, 1800]),
    ):
        rebuilt = Backoff.from_options(backoff.options.model_dump())
        assert rebuilt == backoff
        assert repr(rebuilt) == repr(backoff)


# -- the pure rules behind the public strategies --------------------------------------------


@given(any_backoff() | exponentials(), st.lists(retries, min_size=1, max_size=20), seeds)
def test_each_strategy_is_its_pure_rule(backoff: Backoff, numbers: list[int], seed: int) -> None:
    rule = backoff.rule
    assert type(rule).__module__ == "resilience._core.backoff"
    assert backoff.max_delay == rule.max_delay  # type: ignore[attr-defined]
    rng, rule_rng = random.Random(seed), random.Random(seed)
    previous = None
    for n in numbers:
        assert backoff.ceiling(n) == rule.ceiling(n)  # type: ignore[attr-defined]
        assert backoff.floor(n) == rule.floor(n)  # type: ignore[attr-defined]
        delay = backoff.delay(n, previous, rng)
        assert delay == rule.delay(n, previous, rule_rng)
        previous = delay


def test_the_rules_are_frozen_values_without_pydantic() -> None:
    rule = Backoff.linear(1.0, 0.5, cap=3.0, jitter="equal").rule
    assert rule == core_backoff.Linear(1.0, 0.5, 3.0, Jitter.EQUAL)
    assert hash(rule) == hash(core_backoff.Linear(1.0, 0.5, 3.0, Jitter.EQUAL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.base = 2.0  # type: ignore[misc]
    assert "pydantic" not in inspect.getsource(core_backoff)
    assert core_backoff.MAX_RETRY_NUMBER == MAX_COUNT
    # A retry number past any attempts limit keeps the last linear step's delay.
    far = core_backoff.Linear(0.0, 1e-300)
    assert far.ceiling(10**30) == far.ceiling(MAX_COUNT)


def test_a_custom_strategy_is_its_own_rule() -> None:
    class Doubling(Backoff):
        __slots__ = ()

        @property
        def options(self) -> rs.backoff.ConstantOptions:
            return Backoff.constant(1.0).options

        def ceiling(self, retry: int) -> float:
            return 2.0**retry

        def floor(self, retry: int) -> float:
            return 2.0**retry

        def delay(self, retry: int, previous: float | None, rng: random.Random) -> float:
            return 2.0**retry

        @property
        def max_delay(self) -> float:
            return math.inf

    doubling = Doubling()
    assert doubling.rule is doubling
    clock = FakeClock(1_700_000_000.25)
    retry = rs.Retry(attempts=4, backoff=doubling, max_delay=5.0, clock=clock)
    with pytest.raises(ConnectionError):
        retry.call(lambda: (_ for _ in ()).throw(ConnectionError()))
    assert clock.sleeps == [2.0, 4.0, 5.0]

"""Invalid circuit breaker options raise ConfigurationError naming the field."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

import resilience as rs
from resilience.breaker import BreakerOptions, CircuitBreaker, CircuitState
from resilience.storage.breakers import MemoryBreakerStore
from resilience.testing import FakeClock


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"failure_ratio": 0.0}, "failure_ratio"),
        ({"failure_ratio": -0.1}, "failure_ratio"),
        ({"failure_ratio": 1.5}, "failure_ratio"),
        ({"failure_ratio": float("nan")}, "failure_ratio"),
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_threshold": 5, "failure_ratio": 0.5}, "failure_ratio"),
        ({"failure_ratio": 0.5, "window": 0}, "window"),
        ({"failure_ratio": 0.5, "window": -1.0}, "window"),
        ({"failure_ratio": 0.5, "window_size": 0}, "window_size"),
        ({"failure_ratio": 0.5, "window_size": 10, "window": 30.0}, "window"),
        ({"failure_ratio": 0.5, "window_size": 10, "minimum_calls": 11}, "minimum_calls"),
        ({"failure_ratio": 0.5, "minimum_calls": 0}, "minimum_calls"),
        ({"window_size": 10}, "window_size"),
        ({"window": 10.0}, "window"),
        ({"minimum_calls": 3}, "minimum_calls"),
        ({"failure_ratio": 0.5, "window": 10.0, "window_buckets": 0}, "window_buckets"),
        ({"break_duration": -1.0}, "break_duration"),
        ({"break_duration": 0}, "break_duration"),
        ({"break_duration": float("nan")}, "break_duration"),
        ({"break_duration": datetime.timedelta(seconds=-5)}, "break_duration"),
        ({"break_multiplier": 0.5}, "break_multiplier"),
        ({"break_multiplier": float("nan")}, "break_multiplier"),
        ({"break_duration": 10.0, "max_break_duration": 5.0}, "max_break_duration"),
        ({"half_open_calls": 0}, "half_open_calls"),
        ({"slow_call_duration": -1.0}, "slow_call_duration"),
        ({"slow_call_duration": 0}, "slow_call_duration"),
        ({"failure_ratio": 0.5, "slow_call_ratio": 0.5}, "slow_call_ratio"),
        (
            {"failure_ratio": 0.5, "slow_call_duration": 1.0, "slow_call_ratio": 0.0},
            "slow_call_ratio",
        ),
        ({"slow_call_duration": 1.0, "slow_call_ratio": 0.5}, "slow_call_ratio"),
        ({"failure_on": ["not-a-class"]}, "failure_on"),
        ({"failure_on": [42]}, "failure_on"),
        ({"classifier": 42}, "classifier"),
        ({"store": object()}, "store"),
        ({"clock": object()}, "clock"),
        ({"on_state_change": 3}, "on_state_change"),
    ],
)
def test_invalid_option_names_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        CircuitBreaker("payments", **options)
    assert field in caught.value.fields
    assert isinstance(caught.value, ValueError)
    assert field in str(caught.value)
    assert "'payments'" in str(caught.value)


def test_empty_name_is_rejected() -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        CircuitBreaker("")
    assert caught.value.fields == ("name",)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        CircuitBreaker("x", failure_treshold=3)  # type: ignore[call-arg]


def test_design_contract_signatures() -> None:
    clock = FakeClock()
    store = MemoryBreakerStore()
    consecutive = CircuitBreaker("payments", failure_threshold=5, break_duration=15.0)
    ratio = CircuitBreaker(
        "payments",
        failure_ratio=0.5,
        minimum_calls=20,
        window=30.0,
        break_duration=15.0,
        half_open_calls=1,
        store=store,
        clock=clock,
    )
    assert consecutive.state is CircuitState.CLOSED
    assert ratio.state is CircuitState.CLOSED
    assert ratio.options.window == 30.0


def test_timedelta_durations_are_seconds() -> None:
    breaker = CircuitBreaker(
        "x",
        break_duration=datetime.timedelta(seconds=15),
        max_break_duration=datetime.timedelta(minutes=2),
        slow_call_duration=datetime.timedelta(milliseconds=500),
    )
    assert breaker.options.break_duration == 15.0
    assert breaker.options.max_break_duration == 120.0
    assert breaker.options.slow_call_duration == 0.5


def test_from_options_builds_the_same_breaker() -> None:
    options = BreakerOptions(name="x", failure_threshold=2, break_duration=3.0)
    breaker = CircuitBreaker.from_options(options)
    assert breaker.name == "x"
    assert breaker.options is options


def test_failure_on_accepts_a_single_class_or_type() -> None:
    by_class = CircuitBreaker("a", failure_on="timeout")
    by_type = CircuitBreaker("b", failure_on=KeyError)
    assert by_class.options.failure_on == (rs.ErrorClass.TIMEOUT,)
    assert by_type.options.failure_on == (KeyError,)

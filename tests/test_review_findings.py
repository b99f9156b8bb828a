"""Regressions found reviewing the restructuring (options declared once, Retry.decide)."""

from __future__ import annotations

import pytest

import resilience as rs
from resilience.config import build_policy
from resilience.errors import ConfigurationError
from resilience.registry import Registry
from resilience.retry import RetryOptions
from resilience.testing import FakeClock


@pytest.mark.parametrize("bad", [3, "exponential", 1.5, [1]])
def test_a_bad_backoff_is_named_as_the_backoff_field(bad: object) -> None:
    # The derived model validated ``backoff`` by its declared union type, and each
    # failed branch became a field: "backoff.is-instance[Backoff]", "backoff.dict[str,any]".
    clock = FakeClock(1_700_000_000.25)
    with pytest.raises(ConfigurationError) as caught:
        rs.Retry(backoff=bad, clock=clock)  # type: ignore[arg-type]
    assert caught.value.fields == ("backoff",)
    with pytest.raises(ConfigurationError) as from_document:
        build_policy("retry", {"backoff": bad}, clock=clock)
    assert from_document.value.fields == ("backoff",)


def test_options_built_from_a_mapping_backoff_make_a_working_retry() -> None:
    # The declared type admits a mapping: the model used to keep it as a dict, and
    # Retry.from_options then failed with an AttributeError.
    options = RetryOptions(backoff={"kind": "constant", "delay": 2})
    retry = rs.Retry.from_options(options)
    assert retry.options.backoff == rs.Backoff.constant(2)
    assert retry.decide(1, ConnectionError("down")).delay == 2.0
    assert rs.Retry.from_options(retry.options).options == retry.options


@pytest.mark.parametrize("argument", ["elapsed", "previous_delay"])
def test_decide_refuses_an_integer_too_large_for_a_float(argument: str) -> None:
    # It raised OverflowError (float(10**400)) instead of naming the argument.
    retry = rs.Retry(clock=FakeClock(1_700_000_000.25))
    with pytest.raises(ConfigurationError) as caught:
        retry.decide(1, ConnectionError("down"), **{argument: 10**400})
    assert caught.value.fields == (argument,)


def test_a_breaker_without_a_clock_has_the_system_clock_in_its_options() -> None:
    # Every other policy's model fills the default clock in; the breaker's kept None
    # (before the restructuring its options held the system clock too).
    for breaker in (rs.CircuitBreaker("plain"), build_policy("breaker", {"name": "doc"})):
        assert breaker.options.clock is rs.clock.SYSTEM_CLOCK
    clock = FakeClock(1_700_000_000.25)
    assert rs.CircuitBreaker("faked", clock=clock).options.clock is clock


def test_a_limiter_from_a_document_shares_its_buckets_with_one_rebuilt_from_its_options() -> None:
    clock = FakeClock(1_700_000_000.25)
    options = {"rate": 1, "per": 3600, "burst": 1, "max_wait": 0}
    first = build_policy("rate_limiter", options, name="x", clock=clock)
    rebuilt = type(first).from_options(first.options)
    first.acquire()
    with pytest.raises(rs.RateLimitExceeded):
        rebuilt.acquire()  # the one token is gone: the same bucket


def test_the_registry_returns_the_same_limiter_for_the_same_request() -> None:
    registry = Registry(clock=FakeClock(1_700_000_000.25))
    limiter = registry.rate_limiter("emails", rate=5)
    assert registry.rate_limiter("emails", rate=5) is limiter
    with pytest.raises(rs.ConfigurationError, match="different options"):
        registry.rate_limiter("emails", rate=6)

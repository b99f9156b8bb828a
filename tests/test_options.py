"""Each policy declares its options once: its constructor's signature.

The options model used for validation (and for documents, in
``resilience.config``) is derived from that signature; ``with_retry`` spells
``Retry``'s keywords out for type checkers, and this holds the two equal.
"""

from __future__ import annotations

import inspect
import typing

import pytest

import resilience as rs
from resilience.breaker import BreakerOptions
from resilience.bulkhead import BulkheadOptions
from resilience.fallback import CachedFallbackOptions, FallbackOptions
from resilience.ratelimit import RateLimiterOptions
from resilience.retry import RetryKeywords, RetryOptions, with_retry
from resilience.timeout import TimeoutOptions

DERIVED = [
    (rs.Retry, RetryOptions),
    (rs.CircuitBreaker, BreakerOptions),
    (rs.RateLimiter, RateLimiterOptions),
    (rs.Timeout, TimeoutOptions),
    (rs.Bulkhead, BulkheadOptions),
    (rs.Fallback, FallbackOptions),
    (rs.CachedFallback, CachedFallbackOptions),
]


def _parameters(function: typing.Callable[..., object]) -> dict[str, object]:
    hints = typing.get_type_hints(function)  # Annotated[...] stripped: what a caller sees
    return {
        name: hints[name]
        for name, parameter in inspect.signature(function).parameters.items()
        if name != "self" and parameter.kind is not inspect.Parameter.POSITIONAL_ONLY
    }


@pytest.mark.parametrize(("policy", "model"), DERIVED, ids=lambda x: getattr(x, "__name__", x))
def test_the_options_model_is_the_constructor_signature(policy: type, model: type) -> None:
    signature = inspect.signature(policy.__init__)
    parameters = [name for name in signature.parameters if name != "self"]
    assert list(model.model_fields) == parameters
    for name in parameters:
        default = signature.parameters[name].default
        field = model.model_fields[name]
        if default is inspect.Parameter.empty:
            assert field.is_required()
        else:
            assert field.default == default, name


def test_with_retry_and_the_presets_take_exactly_the_keywords_of_retry() -> None:
    assert typing.get_type_hints(RetryKeywords) == _parameters(rs.Retry.__init__)
    takers = [*typing.get_overloads(with_retry), rs.Retry.default, rs.Retry.aggressive]
    takers.append(rs.Retry.fast)
    keyword_takers = [
        taker
        for taker in takers
        if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(taker).parameters.values())
    ]
    assert len(keyword_takers) == 4  # the keyword overload and the three presets
    for taker in keyword_takers:
        annotation = typing.get_type_hints(taker)[
            next(
                p.name
                for p in inspect.signature(taker).parameters.values()
                if p.kind is p.VAR_KEYWORD
            )
        ]
        assert annotation == typing.Unpack[RetryKeywords], taker


def test_a_misspelled_option_is_refused_naming_it() -> None:
    with pytest.raises(TypeError, match="attemps"):
        rs.Retry(attemps=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="attemps"):
        with_retry(attemps=2)  # type: ignore[call-overload]

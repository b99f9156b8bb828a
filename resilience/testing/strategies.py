"""Hypothesis strategies for property tests of code that uses resilience.

Needs ``hypothesis`` (a test dependency; this module is never imported by the
library itself)::

    from hypothesis import given
    from resilience.testing.strategies import backoffs, retry_options

    @given(retry_options())
    def test_my_client_survives_any_retry_policy(options): ...
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

from ..backoff import Backoff, Jitter
from ..classify import ErrorClass

__all__ = ["backoffs", "error_classes", "exceptions_of", "retry_options"]

_durations = st.floats(min_value=0.0, max_value=3600.0, allow_nan=False, allow_infinity=False)
_simple_jitter = st.sampled_from([Jitter.NONE, Jitter.FULL, Jitter.EQUAL])


def error_classes() -> st.SearchStrategy[ErrorClass]:
    """Any :class:`ErrorClass`."""
    return st.sampled_from(list(ErrorClass))


_EXAMPLES: dict[ErrorClass, list[type[Exception]]] = {
    ErrorClass.TRANSIENT: [],
    ErrorClass.PERMANENT: [ValueError, TypeError, KeyError, AttributeError],
    ErrorClass.RATE_LIMITED: [],
    ErrorClass.TIMEOUT: [TimeoutError],
    ErrorClass.NETWORK: [ConnectionError, ConnectionResetError, ConnectionRefusedError],
    ErrorClass.UNKNOWN: [RuntimeError, Exception],
}


def exceptions_of(error_class: ErrorClass | None = None) -> st.SearchStrategy[Exception]:
    """Exceptions the default classifier puts in ``error_class`` (any class if None)."""
    from ..errors import CircuitOpenError, RateLimitExceeded

    def build(kind: ErrorClass) -> st.SearchStrategy[Exception]:
        if kind is ErrorClass.TRANSIENT:
            return st.builds(CircuitOpenError, st.just("breaker"), _durations)
        if kind is ErrorClass.RATE_LIMITED:
            return st.builds(RateLimitExceeded, st.just("limiter"), _durations)
        return st.sampled_from(_EXAMPLES[kind]).map(lambda exc_type: exc_type("generated"))

    if error_class is not None:
        return build(error_class)
    return st.one_of([build(kind) for kind in ErrorClass])


@st.composite
def backoffs(draw: st.DrawFn) -> Backoff:
    """Any valid :class:`Backoff`, of every kind and jitter."""
    kind = draw(st.sampled_from(["constant", "linear", "exponential", "schedule"]))
    if kind == "constant":
        return Backoff.constant(draw(_durations), jitter=draw(_simple_jitter))
    if kind == "linear":
        base, step = draw(_durations), draw(_durations)
        cap = draw(st.just(math.inf) | st.floats(min_value=base, max_value=1e5))
        return Backoff.linear(base, step, cap=cap, jitter=draw(_simple_jitter))
    if kind == "schedule":
        delays = draw(st.lists(_durations, min_size=1, max_size=8))
        return Backoff.schedule(delays, jitter=draw(_simple_jitter))
    base = draw(st.floats(min_value=0.001, max_value=60.0))
    cap = draw(st.floats(min_value=base, max_value=3600.0))
    multiplier = draw(st.floats(min_value=1.0, max_value=5.0))
    return Backoff.exponential(
        base, cap, multiplier=multiplier, jitter=draw(st.sampled_from(Jitter))
    )


@st.composite
def retry_options(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments for a valid :class:`~resilience.Retry` (clock and rng excluded)."""
    options: dict[str, Any] = {
        "attempts": draw(st.integers(min_value=1, max_value=10)),
        "backoff": draw(backoffs()),
    }
    if draw(st.booleans()):
        options["deadline"] = draw(st.floats(min_value=0.001, max_value=3600.0))
    if draw(st.booleans()):
        options["max_delay"] = draw(st.floats(min_value=0.001, max_value=3600.0))
    if draw(st.booleans()):
        options["retry_on"] = draw(st.sets(error_classes(), min_size=1))
    return options

"""The circuit breaker's option types and rules, and the window the options ask for.

Each option is declared once, as a parameter of :class:`CircuitBreaker`'s
constructor; ``BreakerOptions`` is derived from that signature
(:func:`resilience._validation.options_model`) with :class:`BreakerRules` as
its base: the rules no single parameter's type can say.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeAlias

from pydantic import Field, ValidationInfo, field_validator

from ._core.breaker import (
    CircuitState,
    ConsecutiveWindow,
    CountWindow,
    TimeWindow,
    TripRule,
    Window,
)
from ._validation import FiniteNumber, FinitePositiveDuration, Integer, OptionsModel
from .classify import ErrorClass, checked_classifier, normalize_error_selector
from .clock import SYSTEM_CLOCK, Clock
from .storage.breakers import BreakerStore

__all__ = [
    "BreakSeconds",
    "BreakerRules",
    "CallCount",
    "FailureOn",
    "Multiplier",
    "Ratio",
    "StateListener",
    "WindowBuckets",
    "WindowSize",
    "make_window",
]

StateListener: TypeAlias = Callable[[CircuitState, CircuitState, str], object]
"""``listener(old_state, new_state, reason)``, called after every state change."""

FailureOn: TypeAlias = (
    Iterable[ErrorClass | str | type[BaseException]] | Callable[[BaseException], bool]
)
"""What ``failure_on=`` accepts: error classes, exception types, or a predicate."""

_DEFAULT_THRESHOLD = 5
# Bounds that keep windows allocatable and counts meaningful.
_MAX_WINDOW_SIZE = 1_000_000
_MAX_COUNT = 1_000_000
_DEFAULT_WINDOW_SIZE = 100
_DEFAULT_MINIMUM_CALLS = 10


#: A number of calls (a threshold, a minimum, probes in flight).
CallCount = Annotated[Integer, Field(ge=1, le=_MAX_COUNT)]
#: A count-based window's size, in calls.
WindowSize = Annotated[Integer, Field(ge=1, le=_MAX_WINDOW_SIZE)]
#: How many slices a time-based window is kept in.
WindowBuckets = Annotated[Integer, Field(ge=1, le=10_000)]
#: A ratio of calls: in (0, 1].
Ratio = Annotated[FiniteNumber, Field(gt=0, le=1)]
#: How much longer each re-opening in a row makes the break: >= 1.
Multiplier = Annotated[FiniteNumber, Field(ge=1)]
#: A break: a finite, positive duration.
BreakSeconds = FinitePositiveDuration


class BreakerRules(OptionsModel):
    """What :class:`CircuitBreaker`'s signature cannot say: rules across options."""

    # Cross-field rules live on the later field, so the error names it.

    @field_validator("failure_ratio", check_fields=False)
    @classmethod
    def _one_mode(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("failure_threshold") is not None:
            raise ValueError(
                "cannot be combined with failure_threshold: choose consecutive failures "
                "(failure_threshold) or a failure ratio over a window (failure_ratio)"
            )
        return value

    @field_validator(
        "window_size", "window", "minimum_calls", "slow_call_ratio", check_fields=False
    )
    @classmethod
    def _ratio_mode_only(cls, value: Any, info: ValidationInfo) -> Any:
        # failure_ratio is absent from info.data when it was itself invalid: no second error.
        if (
            value is not None
            and "failure_ratio" in info.data
            and info.data["failure_ratio"] is None
        ):
            raise ValueError("only applies to the failure_ratio mode; set failure_ratio too")
        if info.field_name == "window" and value is not None and info.data.get("window_size"):
            raise ValueError("cannot be combined with window_size: choose one window")
        return value

    @field_validator("minimum_calls", check_fields=False)
    @classmethod
    def _fits_window(cls, value: int | None, info: ValidationInfo) -> int | None:
        size = info.data.get("window_size")
        if value is not None and size is not None and value > size:
            raise ValueError(f"must be <= window_size ({size}), or the ratio never counts")
        return value

    @field_validator("slow_call_ratio", check_fields=False)
    @classmethod
    def _needs_duration(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("slow_call_duration") is None:
            raise ValueError("needs slow_call_duration (what counts as slow)")
        return value

    @field_validator("max_break_duration", check_fields=False)
    @classmethod
    def _not_below_break(cls, value: float | None, info: ValidationInfo) -> float | None:
        base = info.data.get("break_duration")
        if value is not None and base is not None and value < base:
            raise ValueError(f"must be >= break_duration ({base})")
        return value

    @field_validator("failure_on", check_fields=False)
    @classmethod
    def _check_failure_on(cls, value: Any) -> Any:
        return normalize_error_selector(value)

    _check_classifier = field_validator("classifier", check_fields=False)(checked_classifier)

    @field_validator("clock", check_fields=False)
    @classmethod
    def _default_clock(cls, value: Clock | None) -> Clock:
        return SYSTEM_CLOCK if value is None else value

    @field_validator("store", check_fields=False)
    @classmethod
    def _check_store(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, BreakerStore):
            raise ValueError(f"expected a BreakerStore, got {type(value).__name__}")
        return value


def make_window(options: Any) -> Window:
    """The closed-state window the options ask for."""
    if options.failure_ratio is None:
        return ConsecutiveWindow(options.failure_threshold or _DEFAULT_THRESHOLD)
    size = options.window_size
    if options.window is None and size is None:
        size = _DEFAULT_WINDOW_SIZE
    minimum = options.minimum_calls
    if minimum is None:
        minimum = min(_DEFAULT_MINIMUM_CALLS, size) if size is not None else _DEFAULT_MINIMUM_CALLS
    rule = TripRule(
        failure_ratio=options.failure_ratio,
        slow_call_ratio=options.slow_call_ratio,
        minimum_calls=minimum,
    )
    if size is not None:
        return CountWindow(size, rule)
    assert options.window is not None
    return TimeWindow(options.window, options.window_buckets, rule)

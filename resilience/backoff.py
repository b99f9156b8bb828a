"""Backoff strategies: how long to wait before retry number ``n``.

The public face of :mod:`resilience._core.backoff`: each strategy validates its
options (pydantic models, what configuration files hold) and delegates the
arithmetic to a pure rule there, which a :class:`~resilience.Retry` calls
directly. See that module for the jitter formulas.

Every parameter is a finite duration of at most ``MAX_DURATION`` (10^9 s), or a
cap of ``inf``, and no strategy ever returns more than ``MAX_DURATION``: a delay
can always be slept.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from random import Random
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from ._core import backoff as core
from ._core.backoff import DelayRule, Jitter
from ._validation import (
    FiniteNumber,
    FiniteSeconds,
    OptionsModel,
    Seconds,
    build_options,
)
from .errors import ConfigurationError

__all__ = [
    "Backoff",
    "BackoffOptions",
    "ConstantBackoff",
    "ExponentialBackoff",
    "Jitter",
    "LinearBackoff",
    "ScheduleBackoff",
]


class _JitterOptions(OptionsModel):
    jitter: Jitter = Jitter.NONE

    @field_validator("jitter")
    @classmethod
    def _decorrelated_needs_exponential(cls, value: Jitter) -> Jitter:
        if value is Jitter.DECORRELATED:
            raise ValueError("decorrelated jitter needs an exponential backoff")
        return value


class ConstantOptions(_JitterOptions):
    kind: Literal["constant"] = "constant"
    delay: FiniteSeconds


class LinearOptions(_JitterOptions):
    kind: Literal["linear"] = "linear"
    base: FiniteSeconds
    step: FiniteSeconds
    cap: Seconds = math.inf

    @field_validator("cap")
    @classmethod
    def _cap_not_below_base(cls, value: float, info: ValidationInfo) -> float:
        base = info.data.get("base")
        if base is not None and value < base:
            raise ValueError(f"must be >= base ({base}), got {value}")
        return value


class ExponentialOptions(OptionsModel):
    kind: Literal["exponential"] = "exponential"
    base: FiniteSeconds = 0.1
    multiplier: Annotated[FiniteNumber, Field(ge=1.0)] = 2.0
    cap: Seconds = 30.0
    jitter: Jitter = Jitter.FULL

    @field_validator("cap")
    @classmethod
    def _cap_not_below_base(cls, value: float, info: ValidationInfo) -> float:
        base = info.data.get("base")
        if base is not None and value < base:
            raise ValueError(f"must be >= base ({base}), got {value}")
        return value

    @field_validator("jitter")
    @classmethod
    def _decorrelated_needs_positive_base(cls, value: Jitter, info: ValidationInfo) -> Jitter:
        if value is Jitter.DECORRELATED and info.data.get("base") == 0:
            raise ValueError("decorrelated jitter needs base > 0")
        return value


class ScheduleOptions(_JitterOptions):
    kind: Literal["schedule"] = "schedule"
    delays: Annotated[list[FiniteSeconds], Field(min_length=1)]


_MODELS_BY_KIND: dict[str, type[OptionsModel]] = {
    "constant": ConstantOptions,
    "linear": LinearOptions,
    "exponential": ExponentialOptions,
    "schedule": ScheduleOptions,
}

BackoffOptions = Annotated[
    ConstantOptions | LinearOptions | ExponentialOptions | ScheduleOptions,
    Field(discriminator="kind"),
]
"""The options of any backoff, tagged by ``kind``: what configuration files hold."""


class Backoff(ABC):
    """A backoff strategy. Build one with the static constructors below."""

    __slots__ = ()

    @property
    @abstractmethod
    def options(self) -> ConstantOptions | LinearOptions | ExponentialOptions | ScheduleOptions:
        """The validated options this strategy was built from."""

    @abstractmethod
    def ceiling(self, retry: int) -> float:
        """The un-jittered delay before retry ``retry``: the most it can be."""

    @abstractmethod
    def floor(self, retry: int) -> float:
        """The least the delay before retry ``retry`` can be, given the jitter."""

    @abstractmethod
    def delay(self, retry: int, previous: float | None, rng: Random) -> float:
        """The delay before retry ``retry`` (1-based); ``previous`` is the last delay."""

    @property
    @abstractmethod
    def max_delay(self) -> float:
        """The largest delay this strategy ever returns (``inf`` if unbounded)."""

    @property
    def rule(self) -> DelayRule:
        """The pure rule a retry calls for each delay: the built-in strategies'
        frozen arithmetic (:mod:`resilience._core.backoff`); a subclass is its own."""
        return self

    # -- constructors -------------------------------------------------------

    @staticmethod
    def constant(delay: float, *, jitter: Jitter | str = Jitter.NONE) -> ConstantBackoff:
        """Wait ``delay`` seconds before every retry."""
        return ConstantBackoff(
            build_options(ConstantOptions, "Backoff.constant", delay=delay, jitter=jitter)
        )

    @staticmethod
    def linear(
        base: float, step: float, *, cap: float = math.inf, jitter: Jitter | str = Jitter.NONE
    ) -> LinearBackoff:
        """Wait ``base``, then ``base + step``, ``base + 2*step``… up to ``cap``."""
        return LinearBackoff(
            build_options(
                LinearOptions, "Backoff.linear", base=base, step=step, cap=cap, jitter=jitter
            )
        )

    @staticmethod
    def exponential(
        base: float = 0.1,
        cap: float = 30.0,
        *,
        multiplier: float = 2.0,
        jitter: Jitter | str = Jitter.FULL,
    ) -> ExponentialBackoff:
        """Wait ``base * multiplier**(n-1)`` before retry ``n``, up to ``cap``, jittered."""
        return ExponentialBackoff(
            build_options(
                ExponentialOptions,
                "Backoff.exponential",
                base=base,
                cap=cap,
                multiplier=multiplier,
                jitter=jitter,
            )
        )

    @staticmethod
    def schedule(delays: Sequence[float], *, jitter: Jitter | str = Jitter.NONE) -> ScheduleBackoff:
        """Follow an explicit schedule; past its end, keep its last delay."""
        return ScheduleBackoff(
            build_options(ScheduleOptions, "Backoff.schedule", delays=list(delays), jitter=jitter)
        )

    @staticmethod
    def from_options(options: Any) -> Backoff:
        """Build a strategy from validated options or a dict with a ``kind`` key."""
        if isinstance(options, dict):
            kind = options.get("kind")
            model = _MODELS_BY_KIND.get(kind) if isinstance(kind, str) else None
            if model is None:
                raise ConfigurationError(
                    "Backoff",
                    [("kind", f"must be one of {', '.join(_MODELS_BY_KIND)}, got {kind!r}")],
                )
            options = build_options(model, f"Backoff.{kind}", **options)
        if isinstance(options, ConstantOptions):
            return ConstantBackoff(options)
        if isinstance(options, LinearOptions):
            return LinearBackoff(options)
        if isinstance(options, ExponentialOptions):
            return ExponentialBackoff(options)
        if isinstance(options, ScheduleOptions):
            return ScheduleBackoff(options)
        raise TypeError(f"not backoff options: {options!r}")

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={value!r}"
            for name, value in self.options.model_dump().items()
            if name != "kind"
        )
        return f"Backoff.{self.options.kind}({fields})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Backoff) and self.options == other.options

    def __hash__(self) -> int:
        return hash((type(self), repr(self)))


class _RuleBackoff(Backoff):
    """A built-in strategy: validated options, and the pure rule built from them."""

    __slots__ = ("_rule",)

    _rule: core.Constant | core.Linear | core.Exponential | core.Schedule

    @property
    def rule(self) -> DelayRule:
        return self._rule

    def ceiling(self, retry: int) -> float:
        return self._rule.ceiling(retry)

    def floor(self, retry: int) -> float:
        return self._rule.floor(retry)

    def delay(self, retry: int, previous: float | None, rng: Random) -> float:
        return self._rule.delay(retry, previous, rng)

    @property
    def max_delay(self) -> float:
        return self._rule.max_delay


class ConstantBackoff(_RuleBackoff):
    __slots__ = ("_options",)

    def __init__(self, options: ConstantOptions) -> None:
        self._options = options
        self._rule = core.Constant(options.delay, options.jitter)

    @property
    def options(self) -> ConstantOptions:
        return self._options


class LinearBackoff(_RuleBackoff):
    __slots__ = ("_options",)

    def __init__(self, options: LinearOptions) -> None:
        self._options = options
        self._rule = core.Linear(options.base, options.step, options.cap, options.jitter)

    @property
    def options(self) -> LinearOptions:
        return self._options


class ExponentialBackoff(_RuleBackoff):
    __slots__ = ("_options",)

    def __init__(self, options: ExponentialOptions) -> None:
        self._options = options
        self._rule = core.Exponential(options.base, options.multiplier, options.cap, options.jitter)

    @property
    def options(self) -> ExponentialOptions:
        return self._options


class ScheduleBackoff(_RuleBackoff):
    __slots__ = ("_options",)

    def __init__(self, options: ScheduleOptions) -> None:
        self._options = options
        self._rule = core.Schedule(tuple(options.delays), options.jitter)

    @property
    def options(self) -> ScheduleOptions:
        return self._options

"""Retry's options: the rules its signature cannot say, and its keywords for type checkers.

Each option is declared once, as a parameter of :class:`resilience.Retry`;
``RetryOptions`` is derived from that signature with :class:`RetryRulesModel`
as its base. :class:`RetryKeywords` spells the same keywords out for
``with_retry(...)`` and the presets (tests/test_options.py holds them equal).
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypedDict

from pydantic import field_validator

from ._retry_values import RetryInfo
from ._validation import OptionsModel
from .backoff import Backoff
from .classify import ClassifierLike, ErrorClass, checked_classifier, normalize_error_selector
from .clock import SYSTEM_CLOCK, Clock
from .errors import ConfigurationError

__all__ = ["RetryKeywords", "RetryOn", "RetryRulesModel", "coerce_backoff"]


def coerce_backoff(value: Any, field: str, owner: str) -> Any:
    """Build a Backoff from a dict (as configuration files give it), naming ``field``."""
    if not isinstance(value, Mapping):
        return value
    try:
        return Backoff.from_options(dict(value))
    except ConfigurationError as error:
        nested = [
            (f"{field}.{name}", message.partition(": ")[2])
            for name, message in zip(error.fields, error.errors, strict=True)
        ]
        raise ConfigurationError(owner, nested) from error


RetryOn = Iterable[ErrorClass | str | type[BaseException]] | Callable[[BaseException], bool]


class RetryRulesModel(OptionsModel):
    """What :class:`Retry`'s signature cannot say; ``RetryOptions`` derives from it."""

    @field_validator("retry_on", check_fields=False)
    @classmethod
    def _check_retry_on(cls, value: Any) -> Any:
        return normalize_error_selector(value)

    _check_classifier = field_validator("classifier", check_fields=False)(checked_classifier)

    @field_validator("backoff", check_fields=False)
    @classmethod
    def _default_backoff(cls, value: Any) -> Backoff:
        # The parameter is not validated by its type (a union would name its
        # branches as fields, ``backoff.is-instance[Backoff]``): checked here.
        if value is None:
            return Backoff.exponential(0.1, 10.0)
        if isinstance(value, Mapping):  # a model built directly from a document
            try:
                return Backoff.from_options(dict(value))
            except ConfigurationError as error:
                raise ValueError("; ".join(error.errors)) from None
        if not isinstance(value, Backoff):
            raise ValueError(f"expected a Backoff, got {type(value).__name__}")
        return value

    @field_validator("clock", check_fields=False)
    @classmethod
    def _default_clock(cls, value: Clock | None) -> Clock:
        return SYSTEM_CLOCK if value is None else value

    @field_validator("backoff_by_class", check_fields=False)
    @classmethod
    def _check_backoff_by_class(cls, value: Any) -> dict[ErrorClass, Backoff]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError(f"must be a mapping of error class to Backoff, got {value!r}")
        checked: dict[ErrorClass, Backoff] = {}
        for key, backoff in value.items():
            try:
                error_class = ErrorClass(key)
            except ValueError:
                raise ValueError(f"{key!r} is not an error class") from None
            if not isinstance(backoff, Backoff):
                raise ValueError(f"{key}: expected a Backoff, got {type(backoff).__name__}")
            checked[error_class] = backoff
        return checked


class RetryKeywords(TypedDict, total=False):
    """The keywords of :class:`Retry`, for type checkers: what ``with_retry(...)`` and
    the presets (``Retry.default(...)``) accept. tests/test_options.py holds them
    equal to ``Retry.__init__``'s, name for name and type for type."""

    attempts: int
    backoff: Backoff | Mapping[str, Any] | None
    deadline: float | datetime.timedelta | None
    max_delay: float | datetime.timedelta | None
    retry_on: RetryOn | None
    backoff_by_class: Mapping[ErrorClass | str, Backoff | Mapping[str, Any]] | None
    respect_retry_after: bool
    retry_if_result: Callable[[Any], bool] | None
    classifier: ClassifierLike | Sequence[ClassifierLike]
    on_retry: Callable[[RetryInfo], object] | None
    on_give_up: Callable[[RetryInfo], object] | None
    name: str
    clock: Clock | None
    rng: random.Random | None

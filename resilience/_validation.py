"""Shared pieces of option validation.

Options are pydantic models validated once, when a policy is built; the per-call
path never touches pydantic. Validation failures are re-raised as
:class:`~resilience.errors.ConfigurationError` naming each offending field.
"""

from __future__ import annotations

import datetime
import math
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from .errors import ConfigurationError

__all__ = [
    "OptionsModel",
    "Seconds",
    "PositiveSeconds",
    "build_options",
    "to_seconds",
]

M = TypeVar("M", bound=BaseModel)


def to_seconds(value: Any) -> Any:
    """Accept ``datetime.timedelta`` wherever a duration in seconds is expected."""
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return value


def _finite_non_negative(value: float) -> float:
    if math.isnan(value):
        raise ValueError("must be a number, not NaN")
    if value < 0:
        raise ValueError(f"must be >= 0 seconds, got {value!r}")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"must be > 0 seconds, got {value!r}")
    return value


#: A duration in seconds (float or ``timedelta``), ``>= 0``, not NaN; may be ``inf``.
Seconds = Annotated[float, BeforeValidator(to_seconds), AfterValidator(_finite_non_negative)]
#: A duration in seconds that must be strictly positive.
PositiveSeconds = Annotated[Seconds, AfterValidator(_positive)]


class OptionsModel(BaseModel):
    """Base of every options model: immutable, no unknown fields, types checked."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        arbitrary_types_allowed=True,
        validate_default=True,
    )


def _field_name(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def build_options(model: type[M], owner: str, /, **values: Any) -> M:
    """Validate ``values`` into ``model``, naming every bad field on failure."""
    try:
        return model(**values)
    except ValidationError as error:
        problems = [
            (_field_name(tuple(item["loc"])), item["msg"].removeprefix("Value error, "))
            for item in error.errors()
        ]
        raise ConfigurationError(owner, problems) from error

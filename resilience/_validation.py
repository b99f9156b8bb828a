"""Shared pieces of option validation.

Options are pydantic models validated once, when a policy is built; the per-call
path never touches pydantic. Validation failures are re-raised as
:class:`~resilience.errors.ConfigurationError` naming each offending field.

The annotated types below are what every options model uses, so that a number
means the same everywhere:

* no booleans where a number is meant (``attempts=True`` is refused, not read
  as 1), no strings either;
* every integer and every finite duration has an upper bound
  (:data:`MAX_COUNT`, :data:`MAX_DURATION`), so no option can overflow when it
  is converted to a float or multiplied out;
* NaN is never a valid number.

``Integer`` and ``Number`` take further bounds as usual:
``Annotated[Integer, Field(ge=1, le=10_000)]``.
"""

from __future__ import annotations

import datetime
import inspect
import math
import operator
import re
import typing
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
)

from .clock import MAX_DURATION
from .errors import ConfigurationError

__all__ = [
    "MAX_COUNT",
    "MAX_DURATION",
    "MAX_NAME_LENGTH",
    "Count",
    "DerivedError",
    "Duration",
    "FiniteDuration",
    "FinitePositiveDuration",
    "PositiveDuration",
    "FiniteNumber",
    "FiniteSeconds",
    "Integer",
    "NonNegativeCount",
    "Number",
    "OptionsModel",
    "PolicyName",
    "PositiveNumber",
    "Seconds",
    "build_options",
    "clamp_seconds",
    "check_policy_name",
    "options_from",
    "options_model",
    "to_seconds",
]

M = TypeVar("M", bound=BaseModel)

MAX_COUNT = 1_000_000_000
"""The largest integer any option accepts unless its own bound is smaller."""

MAX_NAME_LENGTH = 200
"""The longest policy name, in characters."""


# -- numbers -----------------------------------------------------------------------------

# Numbers written as text (a document, an environment variable): ASCII only, no
# "_", no NaN; "inf" is a number (a duration may give it a meaning).
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
_NUMBER_TEXT = re.compile(
    r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+]?inf(?:inity)?"
)
_MAX_TEXT_DIGITS = 400


def _integer(value: Any) -> int:
    """An integer option: an ``int`` (or an integral float, or anything with
    ``__index__``), never a boolean or a string."""
    if isinstance(value, bool):
        raise ValueError(f"must be an integer, not a boolean ({value!r})")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError(f"must be an integer, got {value!r}")
    if isinstance(value, str):  # from a document: ASCII digits only
        text = value.strip()
        if _INTEGER_TEXT.fullmatch(text) and len(text) <= _MAX_TEXT_DIGITS:
            return int(text)
        raise ValueError(f"must be an integer, got {value!r}")
    if isinstance(value, bytes | bytearray):
        raise ValueError(f"must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"must be an integer, got {value!r}") from None


def _number(value: Any) -> float:
    """A real-number option: an ``int`` or ``float`` (or anything with ``__float__``),
    never a boolean, a string or NaN; an integer too large for a float is refused."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not a boolean ({value!r})")
    if isinstance(value, str):  # from a document: a plain ASCII decimal number
        text = value.strip()
        if not _NUMBER_TEXT.fullmatch(text) or len(text) > _MAX_TEXT_DIGITS:
            raise ValueError(f"must be a number, got {value!r}")
        value = float(text)
        if math.isinf(value) and "inf" not in text:
            raise ValueError("is too large: more than a float can hold")
    if isinstance(value, bytes | bytearray):
        raise ValueError(f"must be a number, got {value!r}")
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            raise ValueError("is too large: more than a float can hold") from None
    try:
        number = float(value)
    except OverflowError:
        raise ValueError("is too large: more than a float can hold") from None
    except (TypeError, ValueError):
        raise ValueError(f"must be a number, got {value!r}") from None
    if math.isnan(number):
        raise ValueError("must be a number, not NaN")
    return number


def _finite(value: float) -> float:
    if math.isinf(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return value


#: An integer (not a boolean, not a string); add ``Field(ge=..., le=...)`` bounds.
Integer = Annotated[int, BeforeValidator(_integer)]
#: A count: an integer in ``[1, MAX_COUNT]``.
Count = Annotated[Integer, Field(ge=1, le=MAX_COUNT)]
#: A count that may be zero: an integer in ``[0, MAX_COUNT]``.
NonNegativeCount = Annotated[Integer, Field(ge=0, le=MAX_COUNT)]
#: A real number (int or float; not a boolean, a string or NaN); may be infinite.
Number = Annotated[float, BeforeValidator(_number)]
#: A finite real number.
FiniteNumber = Annotated[Number, AfterValidator(_finite)]
#: A finite number > 0.
PositiveNumber = Annotated[FiniteNumber, AfterValidator(_positive)]


# -- durations ---------------------------------------------------------------------------


def to_seconds(value: Any) -> Any:
    """Accept ``datetime.timedelta`` wherever a duration in seconds is expected."""
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return value


def _seconds(value: Any) -> float:
    return _number(to_seconds(value))


def _duration(value: float) -> float:
    if value < 0:
        raise ValueError(f"must be >= 0 seconds, got {value!r}")
    if value > MAX_DURATION and not math.isinf(value):
        raise ValueError(
            f"must be at most {MAX_DURATION:.0e} seconds (about 31 years), got {value!r}"
        )
    return value


def _positive_seconds(value: float) -> float:
    if value <= 0:
        raise ValueError(f"must be > 0 seconds, got {value!r}")
    return value


def _finite_seconds(value: float) -> float:
    if math.isinf(value):
        raise ValueError(f"must be a finite number of seconds, got {value!r}")
    return value


#: A duration in seconds (a number or ``timedelta``), ``>= 0``, not NaN, at most
#: :data:`MAX_DURATION`; may be ``inf`` (where a field gives that a meaning).
Seconds = Annotated[float, BeforeValidator(_seconds), AfterValidator(_duration)]
#: A duration in seconds that must be finite.
FiniteSeconds = Annotated[Seconds, AfterValidator(_finite_seconds)]


# The same durations as a constructor's parameters declare them: the type a
# caller (and mypy) sees is ``float | timedelta``, the validators the same as
# above, so an options model derived from the signature (``options_model``)
# validates exactly like a model declared with ``Seconds``; the value it holds
# is always a float.

#: A duration parameter: seconds as a number, or a ``timedelta``; ``>= 0``.
Duration = Annotated[
    float | datetime.timedelta, BeforeValidator(_seconds), AfterValidator(_duration)
]
#: A duration parameter that must be strictly positive.
PositiveDuration = Annotated[
    float | datetime.timedelta,
    BeforeValidator(_seconds),
    AfterValidator(_duration),
    AfterValidator(_positive_seconds),
]
#: A duration parameter that must be finite.
FiniteDuration = Annotated[
    float | datetime.timedelta,
    BeforeValidator(_seconds),
    AfterValidator(_duration),
    AfterValidator(_finite_seconds),
]
#: A duration parameter that must be finite and strictly positive.
FinitePositiveDuration = Annotated[
    float | datetime.timedelta,
    BeforeValidator(_seconds),
    AfterValidator(_duration),
    AfterValidator(_positive_seconds),
    AfterValidator(_finite_seconds),
]


def clamp_seconds(value: Any, field: str, owner: str) -> float:
    """A duration given per call (a timeout, a pause): a number or ``timedelta``,
    ``>= 0``; clamped to :data:`MAX_DURATION` (``inf`` included), so it can never
    overflow a wait. Anything else raises ``ConfigurationError`` naming ``field``."""
    if type(value) is float:  # the common case, no conversion
        seconds = value
    elif type(value) is int:
        seconds = MAX_DURATION if value > MAX_DURATION else float(value)  # no overflow
    else:
        try:
            seconds = _seconds(value)
        except ValueError as error:
            raise ConfigurationError(owner, [(field, str(error))]) from None
    if not seconds >= 0:  # NaN too
        raise ConfigurationError(owner, [(field, f"must be >= 0 seconds, got {value!r}")])
    return seconds if seconds <= MAX_DURATION else MAX_DURATION


# -- names -------------------------------------------------------------------------------

_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def check_policy_name(value: Any) -> str:
    """A policy name: a ``str`` of 1 to :data:`MAX_NAME_LENGTH` characters, with no
    control characters (NUL included), no line or paragraph separators and no lone
    surrogates. Kept exactly as given: nothing is stripped or normalised."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type(value).__name__}")
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"must be at most {MAX_NAME_LENGTH} characters, got {len(value)}")
    if not value.isprintable():  # the rare case: look for what is not allowed
        for position, char in enumerate(value):
            category = unicodedata.category(char)
            if category in _FORBIDDEN_CATEGORIES:
                what = "a lone surrogate" if category == "Cs" else "a control character"
                raise ValueError(f"must not contain {what} ({char!r} at position {position})")
    return str.__str__(value)  # a plain str, even from a subclass


#: A policy's name (see :func:`check_policy_name`).
PolicyName = Annotated[str, BeforeValidator(check_policy_name)]


# -- models ------------------------------------------------------------------------------


class OptionsModel(BaseModel):
    """Base of every options model: immutable, no unknown fields, types checked."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        arbitrary_types_allowed=True,
        validate_default=True,
    )


class DerivedError(ValueError):
    """Raised by a model validator when fields fine on their own do not go
    together (a derived quantity overflows): names every field involved."""

    def __init__(self, fields: Sequence[str], message: str) -> None:
        super().__init__(message)
        self.fields = tuple(fields)
        self.message = message


def _field_name(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def build_options(model: type[M], owner: str, /, **values: Any) -> M:
    """Validate ``values`` into ``model``, naming every bad field on failure."""
    try:
        return model(**values)
    except ValidationError as error:
        problems: list[tuple[str, str]] = []
        for item in error.errors():
            loc = tuple(item["loc"])
            cause = item.get("ctx", {}).get("error")
            if isinstance(cause, DerivedError):
                # Name the fields the caller gave: a default they never wrote is no
                # place to look (unless only defaults are involved).
                given = [field for field in cause.fields if loc or field in values]
                problems.extend(
                    (_field_name((*loc, field)), cause.message) for field in given or cause.fields
                )
            else:
                problems.append((_field_name(loc), item["msg"].removeprefix("Value error, ")))
        raise ConfigurationError(owner, problems) from error


# -- one declaration: the constructor's signature -----------------------------------------

_SKIPPED_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def options_model(
    constructor: Callable[..., None], name: str, base: type[OptionsModel] = OptionsModel
) -> type[OptionsModel]:
    """The options model of a policy, derived from its constructor's signature.

    A policy declares each option once, as a typed parameter of ``__init__``
    (the types above carry their validators, so mypy and pydantic read the same
    declaration); this builds the pydantic model used to validate it, and to
    validate the same options from a document (``resilience.config``).
    ``base`` holds what a signature cannot say: validators of one field that
    normalise it, and rules across fields (``check_fields=False`` validators and
    ``model_validator``s).
    """
    hints = typing.get_type_hints(constructor, include_extras=True)
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(constructor).parameters.values():
        if parameter.name == "self" or parameter.kind in _SKIPPED_KINDS:
            continue
        required = parameter.default is inspect.Parameter.empty
        fields[parameter.name] = (hints[parameter.name], ... if required else parameter.default)
    model: type[OptionsModel] = create_model(
        name, __base__=base, __module__=constructor.__module__, **fields
    )
    model.__doc__ = f"Validated options, as the parameters of :meth:`{constructor.__qualname__}`."
    return model


def options_from(model: type[M], owner: str, arguments: Mapping[str, Any]) -> M:
    """Validate a constructor's own arguments (its ``locals()``) into ``model``."""
    values = {name: arguments[name] for name in model.model_fields if name in arguments}
    return build_options(model, owner, **values)

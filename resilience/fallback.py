"""Fallback: answer something useful when the protected call fails.

Two policies:

* :class:`Fallback` returns a fixed ``value``, or what ``handler(exc)`` returns
  (an async handler is awaited in async code). The result type is unchanged.
* :class:`CachedFallback` (``Fallback.cached(max_age=...)``) remembers the last
  successful result per function and arguments, and serves it when a call
  fails, for "cached data with a staleness badge". It always returns a
  :class:`Cached` wrapper so that the caller cannot miss staleness:
  ``.value``, ``.stale``, ``.age`` (seconds since it was fetched) and
  ``.error`` (why the fresh call failed). Put it outermost in a pipeline.

Both act on the errors chosen by ``on``: error classes, exception types, or a
predicate. By default every error except a PERMANENT one (programming errors,
4xx): a fallback should hide an unavailable dependency, not a bug.

The wrapping closures are written once, in :mod:`resilience._async.fallback`;
the sync ones are generated from it (:mod:`resilience._sync.fallback`).
"""

from __future__ import annotations

import datetime
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import SkipValidation, ValidationInfo, field_validator

from ._async import fallback as _async_fallback
from ._counters import counter_value
from ._policy import Policy
from ._sync import fallback as _sync_fallback
from ._validation import (
    Count,
    OptionsModel,
    PolicyName,
    PositiveDuration,
    options_from,
    options_model,
)
from .classify import ErrorClass, classify, error_filter, normalize_error_selector
from .clock import SYSTEM_CLOCK, Clock
from .telemetry.channel import Telemetry
from .telemetry.events import FallbackUsed

__all__ = [
    "Cached",
    "CachedFallback",
    "CachedFallbackOptions",
    "Fallback",
    "FallbackOn",
    "FallbackOptions",
    "FallbackStatistics",
]

T = TypeVar("T")

FallbackOn = Iterable[ErrorClass | str | type[BaseException]] | Callable[[BaseException], bool]
"""What ``on=`` accepts: error classes, exception types, or a predicate."""

_UNSET: Any = object()


def _report(telemetry: Telemetry, exc: BaseException, stale: bool) -> None:
    if telemetry.wants(FallbackUsed):
        error_class = classify(exc).error_class.value
        telemetry.emit(FallbackUsed(telemetry.name, error_class, exc, stale))


def _handles(on: Any) -> Callable[[BaseException], bool]:
    selected = error_filter(on)
    return lambda exc: selected(exc, None)


class _FallbackRules(OptionsModel):
    """What :class:`Fallback`'s signature cannot say: ``value`` or ``handler``, not both."""

    _check_on = field_validator("on", check_fields=False)(normalize_error_selector)

    @field_validator("value", check_fields=False)
    @classmethod
    def _unset_is_none(cls, value: Any) -> Any:
        return None if value is _UNSET else value

    @field_validator("handler", check_fields=False)
    @classmethod
    def _value_or_handler(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("value") is not None:
            raise ValueError("give a value or a handler, not both")
        return value


class _CachedFallbackRules(OptionsModel):
    """What :class:`CachedFallback`'s signature cannot say."""

    _check_on = field_validator("on", check_fields=False)(normalize_error_selector)

    @field_validator("clock", check_fields=False)
    @classmethod
    def _default_clock(cls, value: Clock | None) -> Clock:
        return SYSTEM_CLOCK if value is None else value


@dataclass(frozen=True, slots=True)
class FallbackStatistics:
    """Counts kept by a fallback policy since it was built."""

    name: str
    calls: int
    failures: int
    """Calls that failed with an error the fallback handles."""
    fallbacks: int
    """Of those, the ones it answered (a cached fallback may have nothing young enough)."""


class _Counts:
    __slots__ = ("calls", "failures", "fallbacks")

    def __init__(self) -> None:
        self.calls = itertools.count()
        self.failures = itertools.count()
        self.fallbacks = itertools.count()

    def statistics(self, name: str) -> FallbackStatistics:
        return FallbackStatistics(
            name=name,
            calls=counter_value(self.calls),
            failures=counter_value(self.failures),
            fallbacks=counter_value(self.fallbacks),
        )


class Fallback(Policy):
    """On a handled error, return ``value`` or ``handler(exc)`` instead of raising.

    ``Fallback(value)``, ``Fallback(handler=fn)``; ``on=`` chooses the errors.
    See :meth:`cached` for the cached-last-good mode.
    """

    kind = "fallback"

    __slots__ = (
        "__weakref__",
        "_counts",
        "_handler",
        "_handles",
        "_telemetry",
        "_value",
        "name",
        "options",
    )

    def __init__(
        self,
        value: SkipValidation[Any] = _UNSET,
        *,
        handler: Callable[[BaseException], Any] | None = None,
        on: SkipValidation[FallbackOn | None] = None,
        name: PolicyName = "fallback",
    ) -> None:
        """Each option is declared here once; ``FallbackOptions`` is derived from it."""
        self._configure(options_from(FallbackOptions, f"Fallback {name!r}", locals()))

    def _configure(self, options: Any) -> None:
        self.options = options
        self.name = options.name
        self._telemetry = Telemetry(self.kind, options.name)
        self._value = options.value
        self._handler = options.handler
        self._handles = _handles(options.on)
        self._counts = _Counts()

    @staticmethod
    def cached(
        max_age: float | datetime.timedelta,
        *,
        on: FallbackOn | None = None,
        key: Callable[..., Hashable] | None = None,
        max_entries: int = 1024,
        name: str = "cached_fallback",
        clock: Clock | None = None,
    ) -> CachedFallback:
        """Serve the last good result (at most ``max_age`` seconds old) on failure.

        See :class:`CachedFallback`.
        """
        return CachedFallback(
            max_age, on=on, key=key, max_entries=max_entries, name=name, clock=clock
        )

    @property
    def statistics(self) -> FallbackStatistics:
        return self._counts.statistics(self.name)

    def _substitute(self, exc: Exception) -> Any:
        next(self._counts.fallbacks)
        _report(self._telemetry, exc, stale=False)
        return self._value if self._handler is None else self._handler(exc)

    wrap_sync = _sync_fallback.wrap_sync
    wrap_async = _async_fallback.wrap_async

    def __repr__(self) -> str:
        what = f"handler={self._handler!r}" if self._handler else f"value={self._value!r}"
        return f"Fallback({what}, name={self.name!r})"


@dataclass(frozen=True, slots=True)
class Cached(Generic[T]):
    """What a :class:`CachedFallback` returns: a value, and how fresh it is."""

    value: T
    stale: bool = False
    """True when the fresh call failed and this is an earlier result."""
    age: float = 0.0
    """Seconds since the value was fetched (0.0 when fresh)."""
    error: BaseException | None = None
    """The error of the failed fresh call, when ``stale``."""


def _default_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    return (args, tuple(sorted(kwargs.items()))) if kwargs else args


class CachedFallback(Policy):
    """Remember each good result; on a handled error serve the last one younger than
    ``max_age`` seconds, marked stale. With nothing young enough, the error propagates.

    Results are kept per decorated function and per arguments (``key(*args,
    **kwargs)`` if given; unhashable arguments are not cached), at most
    ``max_entries`` of them, least recently stored first out. Every call returns
    a :class:`Cached`, fresh or stale.
    """

    kind = "cached_fallback"

    __slots__ = (
        "__weakref__",
        "_cache",
        "_clock",
        "_counts",
        "_handles",
        "_key",
        "_lock",
        "_max_age",
        "_max_entries",
        "_telemetry",
        "name",
        "options",
    )

    def __init__(
        self,
        max_age: PositiveDuration,
        *,
        on: SkipValidation[FallbackOn | None] = None,
        key: Callable[..., Hashable] | None = None,
        max_entries: Count = 1024,
        name: PolicyName = "cached_fallback",
        clock: Clock | None = None,
    ) -> None:
        """Each option is declared here once; ``CachedFallbackOptions`` is derived from it."""
        self._configure(options_from(CachedFallbackOptions, f"CachedFallback {name!r}", locals()))

    def _configure(self, options: Any) -> None:
        self.options = options
        self.name = options.name
        self._telemetry = Telemetry(self.kind, options.name)
        self._max_age = options.max_age
        self._max_entries = options.max_entries
        self._key = options.key
        self._clock = options.clock
        self._handles = _handles(options.on)
        self._cache: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._counts = _Counts()

    @property
    def statistics(self) -> FallbackStatistics:
        return self._counts.statistics(self.name)

    def clear(self) -> None:
        """Forget every remembered result."""
        with self._lock:
            self._cache.clear()

    def _cache_key(self, fn: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        key = _default_key(args, kwargs) if self._key is None else self._key(*args, **kwargs)
        try:
            hash(key)
        except TypeError:
            return None
        return (fn, key)

    def _remember(self, key: Hashable, value: T) -> Cached[T]:
        """Keep ``value`` as ``key``'s last good result; returns it as the fresh answer."""
        if key is not None:
            with self._lock:
                cache = self._cache
                cache[key] = (self._clock.now(), value)
                cache.move_to_end(key)
                if len(cache) > self._max_entries:
                    cache.popitem(last=False)
        return Cached(value)

    def _serve(self, key: Hashable, exc: Exception) -> Cached[Any] | None:
        next(self._counts.failures)
        if key is None:
            return None
        now = self._clock.now()
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            age = now - entry[0]
            if age > self._max_age:
                del self._cache[key]  # too old to ever serve again
                return None
        next(self._counts.fallbacks)
        _report(self._telemetry, exc, stale=True)
        return Cached(entry[1], stale=True, age=age, error=exc)

    # Wrapping changes the result type to Cached[R]: the Policy signature cannot say so.
    wrap_sync = _sync_fallback.wrap_cached_sync  # type: ignore[assignment]
    wrap_async = _async_fallback.wrap_cached_async  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CachedFallback(max_age={self._max_age!r}, name={self.name!r})"


FallbackOptions = options_model(Fallback.__init__, "FallbackOptions", _FallbackRules)
CachedFallbackOptions = options_model(
    CachedFallback.__init__, "CachedFallbackOptions", _CachedFallbackRules
)

"""The shape every policy shares: wrap a sync or an async callable.

A policy turns a callable into a protected callable once, at decoration time;
the per-call path is then one closure, with no dispatch and no allocation on
success. ``Pipeline`` composes policies by wrapping one inside the other.
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, Self, TypeVar, overload

if TYPE_CHECKING:
    from .telemetry.otel import CallObserver

__all__ = ["Policy", "is_async_callable"]

P = ParamSpec("P")
R = TypeVar("R")


def is_async_callable(fn: object) -> bool:
    """True for coroutine functions, including bound methods, partials and callables."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


class Policy(ABC):
    """Base of every policy: a decorator for sync and async callables."""

    __slots__ = ()

    name: str
    kind: ClassVar[str] = "policy"
    """What the policy is, for telemetry: ``retry``, ``circuit_breaker``…"""

    @abstractmethod
    def wrap_sync(self, fn: Callable[P, R], observer: CallObserver | None = None) -> Callable[P, R]:
        """Return ``fn`` protected by this policy (``fn`` is synchronous).

        With an ``observer``, the protected callable reports every call to
        OpenTelemetry (a span and metrics) whenever an SDK is configured; a
        pipeline gives one only to its outermost policy.
        """

    @abstractmethod
    def wrap_async(
        self, fn: Callable[P, Awaitable[R]], observer: CallObserver | None = None
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        """Return ``fn`` protected by this policy (``fn`` returns an awaitable)."""

    @classmethod
    def from_options(cls, options: Any) -> Self:
        """Build the policy from already-validated options (its ``…Options`` model)."""
        policy = cls.__new__(cls)
        policy._configure(options)
        return policy

    def _configure(self, options: Any) -> None:
        """Set the policy up from validated options; ``__init__`` validates, then calls it."""
        raise NotImplementedError(f"{type(self).__name__} is not built from options")

    def observer(self) -> CallObserver:
        """The telemetry observer for a callable this policy decorates."""
        from .telemetry.otel import CallObserver

        return CallObserver(self.kind, self.name)

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn``: sync functions stay sync, coroutine functions stay async."""
        wrapped: Callable[P, Any]
        observer = self.observer()
        if is_async_callable(fn):
            wrapped = self.wrap_async(fn, observer)
        else:
            wrapped = self.wrap_sync(fn, observer)
        functools.update_wrapper(wrapped, fn)
        wrapped.__dict__["policy"] = self  # reach the policy (and its statistics) from fn
        return wrapped

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` under this policy."""
        return self.wrap_sync(fn)(*args, **kwargs)

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call and await ``fn(*args, **kwargs)`` under this policy."""
        return await self.wrap_async(fn)(*args, **kwargs)

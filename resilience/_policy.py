"""The shape every policy shares: wrap a sync or an async callable.

A policy turns a callable into a protected callable once, at decoration time;
the per-call path is then one closure, with no dispatch and no allocation on
success. ``Pipeline`` composes policies by wrapping one inside the other.
Each policy reports through one telemetry channel, :attr:`Policy.telemetry`.

A policy implements :meth:`Policy.wrap_sync` and :meth:`Policy.wrap_async`
(the protection alone); the base class adds the call's span and metrics
(:meth:`Policy._wrap_sync`, one extra frame), which the hottest policies
override to inline. A pipeline gives the span to its outermost policy only.
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, ParamSpec, Self, TypeVar, overload

from .telemetry.channel import Telemetry
from .telemetry.otel import OTEL, CallObserver, observe_async, observe_sync

__all__ = ["Policy", "is_async_callable"]

P = ParamSpec("P")
R = TypeVar("R")

# The channel of each policy that does not keep its own in ``_telemetry``.
_CHANNELS: weakref.WeakKeyDictionary[Policy, Telemetry] = weakref.WeakKeyDictionary()
_CHANNELS_LOCK = threading.Lock()


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
    def wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Return ``fn`` protected by this policy (``fn`` is synchronous).

        The protection only: decorating (``policy(fn)``) adds the call's span and
        metrics around it. A pipeline wraps its inner policies with this.
        """

    @abstractmethod
    def wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        """Return ``fn`` protected by this policy (``fn`` returns an awaitable)."""

    def _wrap_sync(self, fn: Callable[P, R], observer: CallObserver) -> Callable[P, R]:
        """:meth:`wrap_sync`, each call reporting its span and metrics through
        ``observer`` while an OpenTelemetry SDK is set (what decorating does).

        One extra frame per call; the hottest policies override this to make
        the test inline, in the protected callable itself.
        """
        return observe_sync(self.wrap_sync(fn), observer)

    def _wrap_async(
        self, fn: Callable[P, Awaitable[R]], observer: CallObserver
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        """:meth:`wrap_async` reporting through ``observer`` (see :meth:`_wrap_sync`)."""
        return observe_async(self.wrap_async(fn), observer)

    @classmethod
    def from_options(cls, options: Any) -> Self:
        """Build the policy from already-validated options (its ``…Options`` model)."""
        policy = cls.__new__(cls)
        policy._configure(options)
        return policy

    def _configure(self, options: Any) -> None:
        """Set the policy up from validated options; ``__init__`` validates, then calls it."""
        raise NotImplementedError(f"{type(self).__name__} is not built from options")

    @property
    def telemetry(self) -> Telemetry:
        """This policy's telemetry channel, built on first use.

        A policy keeps it in ``_telemetry`` (declare that slot, or set it in
        ``_configure``); one that cannot has it kept for as long as it lives.
        """
        own = getattr(self, "_telemetry", None)
        if isinstance(own, Telemetry):
            return own
        with _CHANNELS_LOCK:
            own = getattr(self, "_telemetry", None)
            if isinstance(own, Telemetry):
                return own
            telemetry = Telemetry(self.kind, self.name)
            try:
                # Not in Policy's own slots: a subclass declares it (or has a __dict__).
                object.__setattr__(self, "_telemetry", telemetry)
                return telemetry
            except AttributeError:  # slotted without ``_telemetry``
                pass
            try:
                return _CHANNELS.setdefault(self, telemetry)
            except TypeError:  # nor weakly referenced: a channel per use
                return telemetry

    def _call_observer(self) -> CallObserver:
        """The telemetry observer for a callable this policy decorates."""
        OTEL.watch()  # decorating is when a provider set since is noticed at once
        return self.telemetry.observer

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn``: sync functions stay sync, coroutine functions stay async."""
        wrapped: Callable[P, Any]
        observer = self._call_observer()
        if is_async_callable(fn):
            wrapped = self._wrap_async(fn, observer)
        else:
            wrapped = self._wrap_sync(fn, observer)
        functools.update_wrapper(wrapped, fn)
        wrapped.__dict__["policy"] = self  # reach the policy (and its statistics) from fn
        return wrapped

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` under this policy (span and metrics as decorated)."""
        protected = self.wrap_sync(fn)
        if OTEL.on:
            return self.telemetry.observer.call_sync(protected, args, kwargs)
        return protected(*args, **kwargs)

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call and await ``fn(*args, **kwargs)`` under this policy (span and metrics too)."""
        protected = self.wrap_async(fn)
        if OTEL.on:
            return await self.telemetry.observer.call_async(protected, args, kwargs)
        return await protected(*args, **kwargs)

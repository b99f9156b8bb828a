"""The fallbacks' drivers, written once (see :mod:`resilience.fallback`).

Functions taking the policy first; :class:`~resilience.fallback.Fallback` and
:class:`~resilience.fallback.CachedFallback` bind them as their methods. In
async code a handler that returns an awaitable has it awaited.
"""

from __future__ import annotations

import inspect  # unasync: async only
from typing import TYPE_CHECKING, ParamSpec, TypeVar, cast

if TYPE_CHECKING:
    # unasync: sync from collections.abc import Callable
    from collections.abc import Awaitable, Callable, Coroutine  # unasync: async only
    from typing import Any  # unasync: async only

    from ..fallback import Cached, CachedFallback, Fallback

P = ParamSpec("P")
R = TypeVar("R")


def wrap_async(
    fallback: Fallback, fn: Callable[P, Awaitable[R]]
) -> Callable[P, Coroutine[Any, Any, R]]:
    """``fn`` answering ``value`` or ``handler(exc)`` on a handled error."""
    handles, substitute, counts = fallback._handles, fallback._substitute, fallback._counts
    tick = counts.calls.__next__

    async def with_fallback(*args: P.args, **kwargs: P.kwargs) -> R:
        tick()
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if not handles(exc):
                raise
            next(counts.failures)
            result = substitute(exc)
            if inspect.isawaitable(result):  # unasync: async only
                result = await result  # unasync: async only
            return cast(R, result)

    return with_fallback


# Wrapping changes the result type to Cached[R]: the Policy signature cannot say so.


def wrap_cached_async(
    cached: CachedFallback, fn: Callable[P, Awaitable[R]]
) -> Callable[P, Coroutine[Any, Any, Cached[R]]]:
    """``fn`` remembering each good result, and serving it stale on a handled error."""
    key_of, remember, serve = cached._cache_key, cached._remember, cached._serve
    handles = cached._handles
    tick = cached._counts.calls.__next__

    async def with_cache(*args: P.args, **kwargs: P.kwargs) -> Cached[R]:
        tick()
        key = key_of(fn, args, kwargs)
        try:
            value = await fn(*args, **kwargs)
        except Exception as exc:
            if not handles(exc):
                raise
            stale = serve(key, exc)
            if stale is None:
                raise
            return stale
        return remember(key, value)

    return with_cache

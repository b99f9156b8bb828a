"""The pipeline's drivers, written once (see :mod:`resilience.pipeline`).

Functions taking the pipeline first; :class:`~resilience.pipeline.Pipeline`
binds them as its methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ParamSpec, TypeVar

from .._primitives import as_coroutine_function  # unasync: async only
from ..telemetry.otel import observe_async

if TYPE_CHECKING:
    # unasync: sync from collections.abc import Callable
    from collections.abc import Awaitable, Callable, Coroutine  # unasync: async only
    from typing import Any  # unasync: async only

    from ..pipeline import Pipeline
    from ..telemetry.otel import CallObserver

P = ParamSpec("P")
R = TypeVar("R")


def wrap_async(
    pipeline: Pipeline, fn: Callable[P, Awaitable[R]], observer: CallObserver | None = None
) -> Callable[P, Coroutine[Any, Any, R]]:
    """``fn`` wrapped by every policy, the first outermost.

    One telemetry span for the whole pipeline (with an ``observer``): only the
    outermost policy gets it, so an observed call costs no extra frame and no
    nested spans.
    """
    if not pipeline.policies:
        bare = as_coroutine_function(fn)  # unasync: async only
        # unasync: sync bare = fn
        return bare if observer is None else observe_async(bare, observer)
    outermost, *inner = pipeline.policies
    wrapped: Callable[P, Awaitable[R]] = fn
    for policy in reversed(inner):
        wrapped = policy.wrap_async(wrapped)
    if observer is None:
        return outermost.wrap_async(wrapped)
    return outermost._wrap_async(wrapped, observer)


async def acall(
    pipeline: Pipeline, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
) -> R:
    """Call ``fn(*args, **kwargs)`` through every policy of the pipeline (awaited, if
    async), with the span and metrics of a decorated call."""
    chain = pipeline._chain(pipeline._async_chains, fn, pipeline._wrap_async)
    return await chain(*args, **kwargs)  # type: ignore[no-any-return]

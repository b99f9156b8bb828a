"""Pipeline: compose policies, the first one outermost.

``Pipeline(a, b, c)(fn)`` is ``a(b(c(fn)))``: each policy wraps the next once,
at decoration time, so a call runs through a chain of closures with no loop
over the policies and no per-call allocation; its cost is the sum of the
policies' own fast paths. A pipeline is itself a policy, so pipelines nest.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, ParamSpec, TypeVar

from ._policy import Policy
from .telemetry.otel import CallObserver, observe_async, observe_sync

__all__ = ["Pipeline"]

P = ParamSpec("P")
R = TypeVar("R")

# ``call``/``acall`` reuse the chain built for a function; bounded, since a
# program may pass a fresh lambda or bound method each time.
_CHAIN_CACHE_SIZE = 256


class Pipeline(Policy):
    """Policies applied in order, the first outermost: ``Pipeline(timeout, retry, breaker)``."""

    kind = "pipeline"

    __slots__ = ("__weakref__", "_async_chains", "_lock", "_sync_chains", "name", "policies")

    def __init__(self, *policies: Policy, name: str = "pipeline") -> None:
        for index, policy in enumerate(policies):
            if not isinstance(policy, Policy):
                raise TypeError(
                    f"policies[{index}]: expected a Policy, got {type(policy).__name__}"
                )
        self.policies: tuple[Policy, ...] = policies
        self.name = name
        self._sync_chains: dict[Callable[..., Any], Callable[..., Any]] = {}
        self._async_chains: dict[Callable[..., Any], Callable[..., Any]] = {}
        self._lock = threading.Lock()

    # One telemetry span for the whole pipeline: only the outermost policy gets
    # the observer, so an observed call costs no extra frame and no nested spans.

    def wrap_sync(self, fn: Callable[P, R], observer: CallObserver | None = None) -> Callable[P, R]:
        if not self.policies:
            return observe_sync(fn, observer)
        outermost, *inner = self.policies
        for policy in reversed(inner):
            fn = policy.wrap_sync(fn)
        return outermost.wrap_sync(fn, observer)

    def wrap_async(
        self, fn: Callable[P, Awaitable[R]], observer: CallObserver | None = None
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        if not self.policies:
            return observe_async(_as_coroutine_function(fn), observer)
        outermost, *inner = self.policies
        wrapped: Callable[P, Awaitable[R]] = fn
        for policy in reversed(inner):
            wrapped = policy.wrap_async(wrapped)
        return outermost.wrap_async(wrapped, observer)

    def _chain(
        self,
        chains: dict[Callable[..., Any], Callable[..., Any]],
        fn: Callable[..., Any],
        wrap: Callable[[Callable[..., Any]], Callable[..., Any]],
    ) -> Callable[..., Any]:
        try:
            chain = chains.get(fn)
        except TypeError:  # an unhashable callable: wrap it for this call only
            return wrap(fn)
        if chain is None:
            chain = wrap(fn)
            with self._lock:
                if len(chains) >= _CHAIN_CACHE_SIZE:
                    chains.clear()
                chains[fn] = chain
        return chain

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` through every policy of the pipeline."""
        chain = self._chain(self._sync_chains, fn, self.wrap_sync)
        return chain(*args, **kwargs)  # type: ignore[no-any-return]

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call and await ``fn(*args, **kwargs)`` through every policy of the pipeline."""
        chain = self._chain(self._async_chains, fn, self.wrap_async)
        return await chain(*args, **kwargs)  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Policy]:
        return iter(self.policies)

    def __len__(self) -> int:
        return len(self.policies)

    def __getitem__(self, index: int) -> Policy:
        return self.policies[index]

    def __repr__(self) -> str:
        inner = ", ".join(repr(policy) for policy in self.policies)
        return (
            f"Pipeline({inner}, name={self.name!r})" if inner else f"Pipeline(name={self.name!r})"
        )


def _as_coroutine_function(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    async def passthrough(*args: P.args, **kwargs: P.kwargs) -> R:
        return await fn(*args, **kwargs)

    return passthrough

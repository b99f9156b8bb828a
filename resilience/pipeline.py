"""Pipeline: compose policies, the first one outermost.

``Pipeline(a, b, c)(fn)`` is ``a(b(c(fn)))``: each policy wraps the next once,
at decoration time, so a call runs through a chain of closures with no loop
over the policies and no per-call allocation; its cost is the sum of the
policies' own fast paths. A pipeline is itself a policy, so pipelines nest.

Wrapping and calling are written once, in :mod:`resilience._async.pipeline`;
the sync forms are generated from it (:mod:`resilience._sync.pipeline`).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, ParamSpec, TypeVar

from ._async import pipeline as _async_pipeline
from ._policy import Policy
from ._sync import pipeline as _sync_pipeline
from .telemetry.channel import Telemetry
from .telemetry.otel import CallObserver

__all__ = ["Pipeline"]

P = ParamSpec("P")
R = TypeVar("R")

# ``call``/``acall`` reuse the chain built for a function; bounded, since a
# program may pass a fresh lambda or bound method each time.
_CHAIN_CACHE_SIZE = 256


class Pipeline(Policy):
    """Policies applied in order, the first outermost: ``Pipeline(timeout, retry, breaker)``."""

    kind = "pipeline"

    __slots__ = (
        "__weakref__",
        "_async_chains",
        "_lock",
        "_sync_chains",
        "_telemetry",
        "name",
        "policies",
    )

    def __init__(self, *policies: Policy, name: str = "pipeline") -> None:
        for index, policy in enumerate(policies):
            if not isinstance(policy, Policy):
                raise TypeError(
                    f"policies[{index}]: expected a Policy, got {type(policy).__name__}"
                )
        self.policies: tuple[Policy, ...] = policies
        self.name = name
        self._telemetry = Telemetry(self.kind, name)
        self._sync_chains: dict[Callable[..., Any], Callable[..., Any]] = {}
        self._async_chains: dict[Callable[..., Any], Callable[..., Any]] = {}
        self._lock = threading.Lock()

    def wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        return _sync_pipeline.wrap_sync(self, fn)

    def wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        return _async_pipeline.wrap_async(self, fn)

    def _wrap_sync(self, fn: Callable[P, R], observer: CallObserver) -> Callable[P, R]:
        return _sync_pipeline.wrap_sync(self, fn, observer)

    def _wrap_async(
        self, fn: Callable[P, Awaitable[R]], observer: CallObserver
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        return _async_pipeline.wrap_async(self, fn, observer)

    def _chain(
        self,
        chains: dict[Callable[..., Any], Callable[..., Any]],
        fn: Callable[..., Any],
        wrap: Callable[[Callable[..., Any], CallObserver], Callable[..., Any]],
    ) -> Callable[..., Any]:
        """The chain ``call``/``acall`` run ``fn`` through: observed, as decorated."""
        try:
            chain = chains.get(fn)
        except TypeError:  # an unhashable callable: wrap it for this call only
            return wrap(fn, self._call_observer())
        if chain is None:
            chain = wrap(fn, self._call_observer())
            with self._lock:
                if len(chains) >= _CHAIN_CACHE_SIZE:
                    chains.clear()
                chains[fn] = chain
        return chain

    call = _sync_pipeline.call
    acall = _async_pipeline.acall

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

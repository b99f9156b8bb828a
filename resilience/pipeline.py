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
from collections.abc import Callable, Iterator
from typing import Any

from ._async import pipeline as _async_pipeline
from ._policy import Policy
from ._sync import pipeline as _sync_pipeline

__all__ = ["Pipeline"]

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

    wrap_sync = _sync_pipeline.wrap_sync
    wrap_async = _async_pipeline.wrap_async

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

"""The outage guard's store calls, written once (see :mod:`resilience.storage._guard`).

Each call goes to the real store unless an outage is backing off; a
:class:`~resilience.StoreUnavailable` starts or continues the outage, and the
guard's failure mode answers instead. The guards' state, and what each mode
answers, live in :mod:`resilience.storage._guard`, whose classes combine these
calls with their sync twins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable  # unasync: async only

    from .._core.bucket import Decision
    from .._core.circuit import CircuitSnapshot, Transition
    from ..storage._guard import BreakerGuardState, BucketGuardState
    from ..storage._guard import _Outage as Outage
    from ..storage.buckets import BucketRequest
else:
    # At run time the state comes from the guard class these calls are mixed into.
    BreakerGuardState = BucketGuardState = object

__all__ = ["BreakerGuardCalls", "BucketGuardCalls"]

R = TypeVar("R")


async def _through_outage(outage: Outage, call: Callable[[], Awaitable[R]]) -> R | StoreUnavailable:
    """``call()``'s result, or the outage that stops it (already under way, or
    raised now); keeps ``outage`` up to date either way."""
    error = outage.backing_off()
    if error is not None:
        return error
    try:
        result = await call()
    except StoreUnavailable as failure:
        outage.failed(failure)
        return failure
    if outage.error is not None:
        outage.recovered()
    return result


class BucketGuardCalls(BucketGuardState):
    """The :class:`~resilience.storage.buckets.BucketStore` calls of a guard."""

    async def _acall(
        self, call: Callable[[], Awaitable[R]], fallback: Callable[[StoreUnavailable], R]
    ) -> R:
        result = await _through_outage(self.outage, call)
        return fallback(result) if isinstance(result, StoreUnavailable) else result

    async def abucket_take(
        self, requests: Sequence[BucketRequest], max_wait: float = 0.0
    ) -> Decision:
        return await self._acall(
            lambda: self.store.abucket_take(requests, max_wait),
            self._take_instead(requests, max_wait),
        )

    async def abucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        await self._acall(
            lambda: self.store.abucket_refund(requests, reserved),
            self._refund_instead(requests, reserved),
        )

    async def abucket_penalize(self, name: str, key: str | None, spec: Any, seconds: float) -> None:
        await self._acall(
            lambda: self.store.abucket_penalize(name, key, spec, seconds),
            self._apply_instead(
                lambda local: local.bucket_penalize(name, key, spec, seconds), None
            ),
        )

    async def abucket_tokens(self, name: str, key: str | None, spec: Any) -> float:
        result: float = await self._acall(
            lambda: self.store.abucket_tokens(name, key, spec),
            self._apply_instead(
                lambda local: local.bucket_tokens(name, key, spec), float(spec.burst)
            ),
        )
        return result


class BreakerGuardCalls(BreakerGuardState):
    """The :class:`~resilience.storage.breakers.BreakerStore` calls of a guard."""

    async def _acall(
        self,
        name: str,
        now: float,
        remote: Callable[[int], Awaitable[R]],
        local: Callable[[], R],
    ) -> R:
        """``remote(offset)`` on the store, or the mode's answer (``local()`` in local mode)."""

        async def call() -> R:
            if self.local is not None:  # back after a local period: sync versions first
                self._come_back(await self.store.abreaker_load(name, now))
            return await remote(self.offset)

        result = await _through_outage(self.outage, call)
        if isinstance(result, StoreUnavailable):
            return self._instead(name, now, local, result)
        return result

    async def abreaker_load(self, name: str, now: float) -> CircuitSnapshot:
        async def remote(offset: int) -> CircuitSnapshot:
            return self._seen(name, await self.store.abreaker_load(name, now), offset)

        return await self._acall(name, now, remote, lambda: self._local_load(name, now))

    async def abreaker_transition(
        self, name: str, change: Transition
    ) -> tuple[bool, CircuitSnapshot]:
        async def remote(offset: int) -> tuple[bool, CircuitSnapshot]:
            won, current = await self.store.abreaker_transition(name, self._shifted(change, offset))
            return won, self._seen(name, current, offset)

        return await self._acall(
            name, change.now, remote, lambda: self._local_transition(name, change)
        )

    async def abreaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        async def remote(offset: int) -> bool:
            return await self.store.abreaker_acquire_probe(
                name, version - offset, limit, lease, now
            )

        return await self._acall(
            name, now, remote, lambda: self._local_acquire(name, version, limit, lease, now)
        )

    async def abreaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        async def remote(offset: int) -> int:
            return await self.store.abreaker_release_probe(name, version - offset, succeeded)

        return await self._acall(
            name,
            self._clock.now(),
            remote,
            lambda: self._local_release(name, version, succeeded),
        )

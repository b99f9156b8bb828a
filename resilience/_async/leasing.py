"""The leasing store's calls, written once (see :mod:`resilience.storage.leasing`).

Functions taking the store first; :class:`~resilience.storage.LeasingBucketStore`
binds them as its protocol methods. The local bookkeeping (held tokens, batch
sizes) is the class's own, shared by both worlds; only the calls to the inner
store are awaited or not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._core.bucket import Decision

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._core.bucket import BucketSpec
    from ..storage.buckets import BucketRequest
    from ..storage.leasing import LeasingBucketStore


async def abucket_take(
    store: LeasingBucketStore, requests: Sequence[BucketRequest], max_wait: float = 0.0
) -> Decision:
    request = store._leasable(requests)
    if request is None:
        store.round_trips += 1
        return await store.inner.abucket_take(requests, max_wait)
    local = store._take_local(request)
    if local is not None:
        return local
    batch = store._batch(request)
    store.round_trips += 1
    decision = await store.inner.abucket_take((batch,), 0.0)
    if not decision.granted and batch.cost > request.cost:
        smaller = store._smaller_batch(decision, request)
        if smaller is not None:
            batch = smaller
            store.round_trips += 1
            decision = await store.inner.abucket_take((batch,), 0.0)
    if decision.granted:
        store._keep(request, batch)
        return decision
    if max_wait > 0:  # a reservation: the inner store queues it, unleased
        store.round_trips += 1
        return await store.inner.abucket_take((request,), max_wait)
    retry_after = store._retry_for_cost(decision, batch, request.cost)
    return Decision(False, 0.0, retry_after, decision.tokens)


async def abucket_refund(
    store: LeasingBucketStore,
    requests: Sequence[BucketRequest],
    reserved: Sequence[tuple[float, float]],
) -> None:
    # Only reservations are refunded, and reservations always went to the inner store.
    await store.inner.abucket_refund(requests, reserved)


async def abucket_penalize(
    store: LeasingBucketStore, name: str, key: str | None, spec: BucketSpec, seconds: float
) -> None:
    store._drop(name, key)
    await store.inner.abucket_penalize(name, key, spec, seconds)


async def abucket_tokens(
    store: LeasingBucketStore, name: str, key: str | None, spec: BucketSpec
) -> float:
    """The shared bucket's tokens plus those leased here (at most ``burst``)."""
    shared = await store.inner.abucket_tokens(name, key, spec)
    return min(float(spec.burst), shared + store.held(name, key))

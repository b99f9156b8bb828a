"""Local token leasing: take tokens from a shared bucket in batches, hand them out locally.

``LeasingBucketStore(RedisStore(...), lease=10)`` turns most acquisitions into
a few hundred nanoseconds of local work: when this process has no leased token
left for a bucket, it takes ``lease`` tokens from the shared store in one round
trip (one ``bucket_take`` of cost ``lease``) and serves the next ``lease - 1``
acquisitions from memory. Round trips per acquisition fall to about
``1 / lease`` while the bucket has tokens.

The price: overshoot, bounded
-----------------------------
Leased tokens are charged to the shared bucket when they are leased, not when
they are used, so a token may be used later than the bucket thinks, never
earlier than it was granted. Every use is thus covered by a grant of the
shared bucket, either in the same window or before it (a token still held at
the window's start). Each store instance holds at most ``lease - 1`` tokens per
bucket (a surplus beyond that is discarded, never kept), so over ANY time
window of length ``t``, the uses of one bucket across the fleet are at most::

    burst + rate * t + instances * (lease - 1)

where ``instances`` is the number of ``LeasingBucketStore`` objects sharing the
bucket (normally one per process). With ``lease=1`` this is the exact limit.
Over a long run the average rate is never exceeded: the overshoot is a one-off
extra burst, not a rate. (Tokens held locally are not given back when a
process exits; they are lost, which only errs on the safe side.)

What is leased, and what is passed through
------------------------------------------
Only single-bucket acquisitions are leased. A composite acquisition (several
buckets, all or nothing) and a reservation that has to wait for tokens go to
the inner store unchanged, one round trip as usual; they never use leased
tokens. An acquisition of ``cost`` larger than ``lease`` is passed through
too. ``bucket_penalize`` drops this instance's leased tokens for the bucket
before pausing it (other processes keep theirs: at most ``lease - 1`` each).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

from .._async import leasing as _async_leasing
from .._core.bucket import Decision
from .._sync import leasing as _sync_leasing
from ..errors import ConfigurationError
from .buckets import BucketRequest, BucketStore

__all__ = ["LeasingBucketStore"]

_BucketId = tuple[str, str | None]


class LeasingBucketStore:
    """A :class:`~resilience.storage.buckets.BucketStore` that leases tokens in batches
    from ``inner`` (see the module docs for the overshoot bound).

    ``lease`` is the batch size (>= 1; 1 leases nothing). Statistics:
    :attr:`round_trips` counts calls made to the inner store, :attr:`local_grants`
    acquisitions served from leased tokens.
    """

    def __init__(self, inner: BucketStore, *, lease: int) -> None:
        if not isinstance(inner, BucketStore):
            raise ConfigurationError(
                "LeasingBucketStore", [("inner", f"expected a BucketStore, got {inner!r}")]
            )
        if type(lease) is not int or lease < 1:
            raise ConfigurationError(
                "LeasingBucketStore", [("lease", f"must be an integer >= 1, got {lease!r}")]
            )
        self.inner = inner
        self.lease = lease
        self._held: dict[_BucketId, int] = {}
        self._lock = threading.Lock()
        self.round_trips = 0
        self.local_grants = 0

    def __repr__(self) -> str:
        return f"LeasingBucketStore({self.inner!r}, lease={self.lease})"

    def held(self, name: str, key: str | None = None) -> int:
        """Tokens of bucket ``(name, key)`` leased by this instance and not yet used."""
        return self._held.get((name, key), 0)

    # -- the local part, shared by the sync and async calls (resilience._async.leasing) --

    def _take_local(self, request: BucketRequest) -> Decision | None:
        bucket = (request.name, request.key)
        with self._lock:
            held = self._held.get(bucket, 0)
            if held < request.cost:
                return None
            held -= request.cost
            if held:
                self._held[bucket] = held
            else:
                del self._held[bucket]
            self.local_grants += 1
        return Decision(True, 0.0, 0.0, float(held))

    def _batch(self, request: BucketRequest) -> BucketRequest:
        size = max(request.cost, min(self.lease, request.spec.burst))
        return request._replace(cost=size)

    def _keep(self, request: BucketRequest, batch: BucketRequest) -> None:
        """Keep what a granted batch left over, never more than ``lease - 1`` in all."""
        surplus = batch.cost - request.cost
        if surplus <= 0:
            return
        bucket = (request.name, request.key)
        with self._lock:
            self._held[bucket] = min(self.lease - 1, self._held.get(bucket, 0) + surplus)

    def _leasable(self, requests: Sequence[BucketRequest]) -> BucketRequest | None:
        if self.lease == 1 or len(requests) != 1 or requests[0].cost > self.lease:
            return None
        return requests[0]

    @staticmethod
    def _retry_for_cost(refused: Decision, batch: BucketRequest, cost: int) -> float:
        """When ``cost`` tokens (not the whole batch) will be there: earlier by the
        tokens the batch needed beyond ``cost``."""
        return max(0.0, refused.retry_after - (batch.cost - cost) * batch.spec.interval)

    def _smaller_batch(self, refused: Decision, request: BucketRequest) -> BucketRequest | None:
        """After a refused batch: a batch of what the bucket holds, if that covers ``cost``."""
        available = math.floor(refused.tokens + 1e-9)
        if available >= request.cost:
            return request._replace(cost=min(available, self.lease))
        return None

    # -- the protocol -------------------------------------------------------------------

    bucket_take = _sync_leasing.bucket_take
    abucket_take = _async_leasing.abucket_take
    bucket_refund = _sync_leasing.bucket_refund
    abucket_refund = _async_leasing.abucket_refund

    def _drop(self, name: str, key: str | None) -> None:
        with self._lock:
            self._held.pop((name, key), None)

    bucket_penalize = _sync_leasing.bucket_penalize
    abucket_penalize = _async_leasing.abucket_penalize
    bucket_tokens = _sync_leasing.bucket_tokens
    abucket_tokens = _async_leasing.abucket_tokens

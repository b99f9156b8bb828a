"""What a policy does while its shared store is unavailable.

A limiter or breaker given a store that can fail (anything but the memory
stores) talks to it through a guard, which implements the same protocol:

* Every call that raises :class:`~resilience.StoreUnavailable` starts (or
  continues) an *outage*. The first failure of an outage is logged once, at
  WARNING, on the ``resilience.storage`` logger; the recovery once, at INFO.
* During an outage the store is not called again for
  :data:`STORE_RETRY_INTERVAL` seconds (on the policy's clock): calls get the
  configured behaviour at once instead of each waiting for a timeout. The
  first call after that tries the store again; success ends the outage.
* The behaviour (``on_store_failure``):

  - ``"fail_closed"`` (the default): the guard raises ``StoreUnavailable``;
    the policy lets no call through that needed the store.
  - ``"fail_open"``: a limiter grants; the guard of a breaker raises, and the
    breaker lets the call through unguarded (see ``CircuitBreaker``).
  - ``"local"``: the guard answers from an in-memory store of the same shape:
    the policy keeps working as a per-process policy until the store is back.
    A breaker's local circuit starts from the last shared state the guard
    saw; on recovery the shared circuit wins (versions are shifted so that the
    breaker adopts it).

The memory stores never fail, so policies on them use no guard: their fast
paths are untouched.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeAlias, TypeVar

from .._clock import Clock
from .._core.breaker import CircuitState
from .._core.bucket import Decision
from ..errors import StoreUnavailable
from .breakers import BreakerStore, CircuitSnapshot, MemoryBreakerStore, SnapshotCallback
from .buckets import BucketRequest, BucketStore, MemoryBucketStore

__all__ = [
    "STORE_RETRY_INTERVAL",
    "FailureMode",
    "GuardedBreakerStore",
    "GuardedBucketStore",
]

T = TypeVar("T")

FailureMode: TypeAlias = Literal["fail_closed", "fail_open", "local"]

STORE_RETRY_INTERVAL = 1.0
"""Seconds between two attempts to reach a store that is down (per policy)."""

_log = logging.getLogger("resilience.storage")

_ACTIONS = {
    "fail_closed": "refusing calls that need it",
    "fail_open": "letting calls through",
    "local": "falling back to in-process state",
}


class _Outage:
    """One policy's view of its store's health: logs once per outage, backs off."""

    __slots__ = ("_clock", "_lock", "_mode", "_owner", "error", "retry_at", "since")

    def __init__(self, owner: str, mode: FailureMode, clock: Clock) -> None:
        self._owner = owner
        self._mode = mode
        self._clock = clock
        self._lock = threading.Lock()
        self.error: StoreUnavailable | None = None
        self.since = 0.0
        self.retry_at = 0.0

    def backing_off(self) -> StoreUnavailable | None:
        """The outage's error while the store should not be tried yet, else None."""
        error = self.error
        if error is None or self._clock.now() >= self.retry_at:
            return None
        return error

    def failed(self, error: StoreUnavailable) -> None:
        now = self._clock.now()
        with self._lock:
            first = self.error is None
            if first:
                self.since = now
            self.error = error
            self.retry_at = now + STORE_RETRY_INTERVAL
        if first:
            _log.warning(
                "%s: store %s unavailable (%s); %s until it recovers",
                self._owner,
                error.store,
                error.reason,
                _ACTIONS[self._mode],
                extra={"store": error.store, "policy": self._owner, "mode": self._mode},
            )

    def recovered(self) -> None:
        with self._lock:
            error, self.error = self.error, None
        if error is not None:
            _log.info(
                "%s: store %s available again after %.3fs",
                self._owner,
                error.store,
                self._clock.now() - self.since,
                extra={"store": error.store, "policy": self._owner},
            )


def _again(error: StoreUnavailable) -> StoreUnavailable:
    """A fresh exception per refused call (re-raising one instance grows its traceback)."""
    fresh = StoreUnavailable(error.store, error.reason)
    fresh.__cause__ = error.__cause__
    return fresh


class GuardedBucketStore:
    """A :class:`BucketStore` that applies ``mode`` while ``store`` is unavailable."""

    def __init__(self, store: BucketStore, mode: FailureMode, clock: Clock, owner: str) -> None:
        self.store = store
        self.mode = mode
        self.outage = _Outage(owner, mode, clock)
        self.local = MemoryBucketStore(clock) if mode == "local" else None

    def _call(self, call: Callable[[], T], fallback: Callable[[StoreUnavailable], T]) -> T:
        outage = self.outage
        error = outage.backing_off()
        if error is None:
            try:
                result = call()
            except StoreUnavailable as failure:
                outage.failed(failure)
                error = failure
            else:
                if outage.error is not None:
                    outage.recovered()
                return result
        return fallback(error)

    async def _acall(
        self, call: Callable[[], Awaitable[T]], fallback: Callable[[StoreUnavailable], T]
    ) -> T:
        outage = self.outage
        error = outage.backing_off()
        if error is None:
            try:
                result = await call()
            except StoreUnavailable as failure:
                outage.failed(failure)
                error = failure
            else:
                if outage.error is not None:
                    outage.recovered()
                return result
        return fallback(error)

    # What each mode answers instead of the store.

    def _take_instead(
        self, requests: Sequence[BucketRequest], max_wait: float
    ) -> Callable[[StoreUnavailable], Decision]:
        def fallback(error: StoreUnavailable) -> Decision:
            if self.local is not None:
                return self.local.bucket_take(requests, max_wait)
            if self.mode == "fail_open":
                return Decision(True, 0.0, 0.0, float(min(r.spec.burst for r in requests)))
            raise _again(error)

        return fallback

    def _apply_instead(self, local_call: Callable[[MemoryBucketStore], T], open_value: T) -> Any:
        def fallback(error: StoreUnavailable) -> T:
            if self.local is not None:
                return local_call(self.local)
            if self.mode == "fail_open":
                return open_value
            raise _again(error)

        return fallback

    def _refund_instead(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> Callable[[StoreUnavailable], None]:
        # A refund runs while a waiter unwinds: it must never raise over the real
        # exception (a cancellation). The tokens stay spent: the safe side.
        def fallback(error: StoreUnavailable) -> None:
            if self.local is not None:
                self.local.bucket_refund(requests, reserved)

        return fallback

    def bucket_take(self, requests: Sequence[BucketRequest], max_wait: float = 0.0) -> Decision:
        return self._call(
            lambda: self.store.bucket_take(requests, max_wait),
            self._take_instead(requests, max_wait),
        )

    def bucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        self._call(
            lambda: self.store.bucket_refund(requests, reserved),
            self._refund_instead(requests, reserved),
        )

    def bucket_penalize(self, name: str, key: str | None, spec: Any, seconds: float) -> None:
        self._call(
            lambda: self.store.bucket_penalize(name, key, spec, seconds),
            self._apply_instead(
                lambda local: local.bucket_penalize(name, key, spec, seconds), None
            ),
        )

    def bucket_tokens(self, name: str, key: str | None, spec: Any) -> float:
        result: float = self._call(
            lambda: self.store.bucket_tokens(name, key, spec),
            self._apply_instead(
                lambda local: local.bucket_tokens(name, key, spec), float(spec.burst)
            ),
        )
        return result

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

    def __repr__(self) -> str:
        return f"GuardedBucketStore({self.store!r}, mode={self.mode!r})"


class GuardedBreakerStore:
    """A :class:`BreakerStore` that applies ``mode`` while ``store`` is unavailable.

    In ``"fail_closed"`` and ``"fail_open"`` modes it raises
    ``StoreUnavailable`` (at once while backing off), and the breaker decides.
    In ``"local"`` mode it answers from a private :class:`MemoryBreakerStore`
    seeded with the last snapshot it relayed. Versions the breaker sees are the
    store's plus ``offset``; on recovery ``offset`` grows past every local
    version, so the breaker adopts the shared circuit as newer.
    """

    def __init__(self, store: BreakerStore, mode: FailureMode, clock: Clock, owner: str) -> None:
        self.store = store
        self.mode = mode
        self.breaker_staleness = store.breaker_staleness
        self.outage = _Outage(owner, mode, clock)
        self._clock = clock
        self._lock = threading.Lock()
        self.offset = 0
        self.local: MemoryBreakerStore | None = None
        # name -> (the newest snapshot relayed, as the breaker saw it; when)
        self._last: dict[str, tuple[CircuitSnapshot, float]] = {}

    # -- versions and snapshots --------------------------------------------------------

    def _seen(self, name: str, snapshot: CircuitSnapshot, offset: int) -> CircuitSnapshot:
        """A store snapshot as the breaker sees it; remembered if newest."""
        if offset:
            snapshot = CircuitSnapshot(
                snapshot.state,
                snapshot.version + offset,
                snapshot.trips,
                snapshot.reason,
                snapshot.break_remaining,
            )
        self._remember(name, snapshot)
        return snapshot

    def _remember(self, name: str, snapshot: CircuitSnapshot) -> None:
        with self._lock:
            last = self._last.get(name)
            if last is None or snapshot.version >= last[0].version:
                self._last[name] = (snapshot, self._clock.now())

    def _go_local(self, name: str, now: float) -> MemoryBreakerStore:
        """The local store, its circuit ``name`` seeded from the last snapshot seen."""
        with self._lock:
            local = self.local
            if local is None:
                local = self.local = MemoryBreakerStore()
                # Permits lapse as they would on the shared store.
                local.probe_lease = getattr(self.store, "probe_lease", local.probe_lease)
            last = self._last.get(name)
            circuit = local._breaker_circuit(name)
            if last is not None and circuit.version < last[0].version:
                snapshot, seen_at = last
                circuit.version = snapshot.version
                circuit.state = snapshot.state
                circuit.trips = snapshot.trips
                circuit.reason = snapshot.reason
                circuit.open_until = (
                    seen_at + snapshot.break_remaining
                    if snapshot.state is CircuitState.OPEN
                    else 0.0
                )
                circuit.probes_out = circuit.probe_successes = 0
                circuit.probes_lapse_at = 0.0
            return local

    def _come_back(self, name: str, snapshot: CircuitSnapshot) -> None:
        """The store answered after a local period: shift versions past the local ones."""
        with self._lock:
            local, self.local = self.local, None
            if local is None:
                return
            highest = max((c.version for c in local._breaker_circuits.values()), default=0)
            self.offset = max(self.offset, highest + 1 - snapshot.version)

    # -- the call wrapper ---------------------------------------------------------------

    def _call(
        self,
        name: str,
        now: float,
        remote: Callable[[int], T],
        local: Callable[[MemoryBreakerStore], T],
    ) -> T:
        """``remote(offset)`` on the store, or the mode's answer; ``local(store)`` in local mode."""
        outage = self.outage
        error = outage.backing_off()
        if error is None:
            try:
                if self.local is not None:  # back after a local period: sync versions first
                    self._come_back(name, self.store.breaker_load(name, now))
                result = remote(self.offset)
            except StoreUnavailable as failure:
                outage.failed(failure)
                error = failure
            else:
                if outage.error is not None:
                    outage.recovered()
                return result
        if self.mode == "local":
            return local(self._go_local(name, now))
        raise _again(error)

    async def _acall(
        self,
        name: str,
        now: float,
        remote: Callable[[int], Awaitable[T]],
        local: Callable[[MemoryBreakerStore], T],
    ) -> T:
        outage = self.outage
        error = outage.backing_off()
        if error is None:
            try:
                if self.local is not None:
                    self._come_back(name, await self.store.abreaker_load(name, now))
                result = await remote(self.offset)
            except StoreUnavailable as failure:
                outage.failed(failure)
                error = failure
            else:
                if outage.error is not None:
                    outage.recovered()
                return result
        if self.mode == "local":
            return local(self._go_local(name, now))
        raise _again(error)

    # -- the protocol --------------------------------------------------------------------

    def breaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return self._call(
            name,
            now,
            lambda offset: self._seen(name, self.store.breaker_load(name, now), offset),
            lambda local: self._local_seen(name, local.breaker_load(name, now)),
        )

    def _local_seen(self, name: str, snapshot: CircuitSnapshot) -> CircuitSnapshot:
        self._remember(name, snapshot)
        return snapshot

    def _transitioned(
        self, name: str, result: tuple[bool, CircuitSnapshot], offset: int
    ) -> tuple[bool, CircuitSnapshot]:
        return result[0], self._seen(name, result[1], offset)

    def breaker_transition(
        self,
        name: str,
        expected_version: int,
        state: CircuitState,
        reason: str,
        trips: int,
        break_duration: float,
        now: float,
    ) -> tuple[bool, CircuitSnapshot]:
        def remote(offset: int) -> tuple[bool, CircuitSnapshot]:
            result = self.store.breaker_transition(
                name, expected_version - offset, state, reason, trips, break_duration, now
            )
            return self._transitioned(name, result, offset)

        def local(store: MemoryBreakerStore) -> tuple[bool, CircuitSnapshot]:
            won, snapshot = store.breaker_transition(
                name, expected_version, state, reason, trips, break_duration, now
            )
            return won, self._local_seen(name, snapshot)

        return self._call(name, now, remote, local)

    def breaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        return self._call(
            name,
            now,
            lambda offset: self.store.breaker_acquire_probe(
                name, version - offset, limit, lease, now
            ),
            lambda local: local.breaker_acquire_probe(name, version, limit, lease, now),
        )

    def breaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        now = self._clock.now()
        return self._call(
            name,
            now,
            lambda offset: self.store.breaker_release_probe(name, version - offset, succeeded),
            lambda local: local.breaker_release_probe(name, version, succeeded),
        )

    def breaker_watch(self, name: str, callback: SnapshotCallback) -> Callable[[], None] | None:
        # The store may hold the callback for long: hold a breaker's bound method weakly.
        ref: Callable[[], SnapshotCallback | None]
        if hasattr(callback, "__self__") and hasattr(callback, "__func__"):
            ref = weakref.WeakMethod(callback)
        else:
            ref = lambda: callback  # noqa: E731 - the same shape as a WeakMethod

        def relay(snapshot: CircuitSnapshot) -> None:
            target = ref()
            if target is not None:
                target(self._seen(name, snapshot, self.offset))

        try:
            return self.store.breaker_watch(name, relay)
        except StoreUnavailable as failure:
            self.outage.failed(failure)
            return None

    async def abreaker_load(self, name: str, now: float) -> CircuitSnapshot:
        async def remote(offset: int) -> CircuitSnapshot:
            return self._seen(name, await self.store.abreaker_load(name, now), offset)

        return await self._acall(
            name, now, remote, lambda local: self._local_seen(name, local.breaker_load(name, now))
        )

    async def abreaker_transition(
        self,
        name: str,
        expected_version: int,
        state: CircuitState,
        reason: str,
        trips: int,
        break_duration: float,
        now: float,
    ) -> tuple[bool, CircuitSnapshot]:
        async def remote(offset: int) -> tuple[bool, CircuitSnapshot]:
            result = await self.store.abreaker_transition(
                name, expected_version - offset, state, reason, trips, break_duration, now
            )
            return self._transitioned(name, result, offset)

        def local(store: MemoryBreakerStore) -> tuple[bool, CircuitSnapshot]:
            won, snapshot = store.breaker_transition(
                name, expected_version, state, reason, trips, break_duration, now
            )
            return won, self._local_seen(name, snapshot)

        return await self._acall(name, now, remote, local)

    async def abreaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        async def remote(offset: int) -> bool:
            return await self.store.abreaker_acquire_probe(
                name, version - offset, limit, lease, now
            )

        return await self._acall(
            name,
            now,
            remote,
            lambda local: local.breaker_acquire_probe(name, version, limit, lease, now),
        )

    async def abreaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        async def remote(offset: int) -> int:
            return await self.store.abreaker_release_probe(name, version - offset, succeeded)

        return await self._acall(
            name,
            self._clock.now(),
            remote,
            lambda local: local.breaker_release_probe(name, version, succeeded),
        )

    def __repr__(self) -> str:
        return f"GuardedBreakerStore({self.store!r}, mode={self.mode!r})"

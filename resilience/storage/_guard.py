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

The store calls, sync and async, are written once in
:mod:`resilience._async.guard` (``resilience._sync.guard`` is generated); the
classes here hold the guards' state and what each mode answers instead.

The memory stores never fail, so policies on them use no guard: their fast
paths are untouched.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeAlias, TypeVar

from .._async.guard import BreakerGuardCalls as _AsyncBreakerCalls
from .._async.guard import BucketGuardCalls as _AsyncBucketCalls
from .._core.bucket import Decision
from .._core.circuit import (
    NEVER_MOVED,
    Circuit,
    CircuitSnapshot,
    Transition,
    acquire_probe,
    lease_or,
    release_probe,
    seeded,
    snapshot,
    transition,
)
from .._sync.guard import BreakerGuardCalls as _SyncBreakerCalls
from .._sync.guard import BucketGuardCalls as _SyncBucketCalls
from ..clock import Clock
from ..errors import StoreUnavailable
from ..telemetry.channel import Telemetry
from ..telemetry.events import StoreOutage, StoreRecovered
from .breakers import DEFAULT_PROBE_LEASE, BreakerStore, SnapshotCallback, hold_weakly
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


class _Outage:
    """One policy's view of its store's health: reports once per outage, backs off."""

    __slots__ = ("_clock", "_lock", "_mode", "_owner", "_telemetry", "error", "retry_at", "since")

    def __init__(
        self, owner: str, mode: FailureMode, clock: Clock, telemetry: Telemetry | None = None
    ) -> None:
        self._owner = owner
        self._mode = mode
        self._clock = clock
        # The owning policy's channel (until a policy hands it over: one named after ``owner``).
        self._telemetry = Telemetry("store", owner) if telemetry is None else telemetry
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
        if first and self._telemetry.wants(StoreOutage):
            self._telemetry.emit(
                StoreOutage(
                    self._telemetry.name, error.store, error.reason, self._mode, self._owner
                )
            )

    def recovered(self) -> None:
        with self._lock:
            error, self.error = self.error, None
        if error is not None and self._telemetry.wants(StoreRecovered):
            downtime = self._clock.now() - self.since
            self._telemetry.emit(
                StoreRecovered(self._telemetry.name, error.store, downtime, self._owner)
            )


def _again(error: StoreUnavailable) -> StoreUnavailable:
    """A fresh exception per refused call (re-raising one instance grows its traceback)."""
    fresh = StoreUnavailable(error.store, error.reason)
    fresh.__cause__ = error.__cause__
    return fresh


class BucketGuardState:
    """A bucket guard's state, and what each mode answers instead of the store."""

    def __init__(
        self,
        store: BucketStore,
        mode: FailureMode,
        clock: Clock,
        owner: str,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.store = store
        self.mode = mode
        self.outage = _Outage(owner, mode, clock, telemetry)
        self.local = MemoryBucketStore(clock) if mode == "local" else None

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


class GuardedBucketStore(_SyncBucketCalls, _AsyncBucketCalls, BucketGuardState):
    """A :class:`BucketStore` that applies ``mode`` while ``store`` is unavailable."""

    def __repr__(self) -> str:
        return f"GuardedBucketStore({self.store!r}, mode={self.mode!r})"


class BreakerGuardState:
    """A breaker guard's state: versions as the breaker sees them, and the local
    circuits that answer in ``"local"`` mode (run by the pure rules of
    :mod:`resilience._core.circuit`, as the memory store runs them)."""

    def __init__(
        self,
        store: BreakerStore,
        mode: FailureMode,
        clock: Clock,
        owner: str,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.store = store
        self.mode = mode
        self.breaker_staleness = store.breaker_staleness
        # Local permits lapse as they would on the shared store.
        self.probe_lease: float = getattr(store, "probe_lease", DEFAULT_PROBE_LEASE)
        self.outage = _Outage(owner, mode, clock, telemetry)
        self._clock = clock
        self._lock = threading.Lock()
        self.offset = 0
        """Added to the store's versions, so that the breaker adopts the shared
        circuit as newer than any local one after an outage."""
        self.local: dict[str, Circuit] | None = None
        """The local circuits, by name, while the store is down in ``"local"`` mode."""
        # name -> (the newest snapshot relayed, as the breaker saw it; when)
        self._last: dict[str, tuple[CircuitSnapshot, float]] = {}

    # -- versions and snapshots --------------------------------------------------------

    def _seen(self, name: str, current: CircuitSnapshot, offset: int) -> CircuitSnapshot:
        """A store snapshot as the breaker sees it; remembered if newest."""
        if offset:
            current = dataclasses.replace(current, version=current.version + offset)
        self._remember(name, current)
        return current

    @staticmethod
    def _shifted(change: Transition, offset: int) -> Transition:
        """``change`` in the store's versions."""
        if not offset:
            return change
        return dataclasses.replace(change, expected_version=change.expected_version - offset)

    def _remember(self, name: str, current: CircuitSnapshot) -> None:
        with self._lock:
            last = self._last.get(name)
            if last is None or current.version >= last[0].version:
                self._last[name] = (current, self._clock.now())

    def _come_back(self, current: CircuitSnapshot) -> None:
        """The store answered after a local period: shift versions past the local ones."""
        with self._lock:
            local, self.local = self.local, None
            if local is None:
                return
            highest = max((circuit.version for circuit in local.values()), default=0)
            self.offset = max(self.offset, highest + 1 - current.version)

    # -- what the modes answer instead of the store ------------------------------------

    def _instead(self, name: str, now: float, local: Callable[[], T], error: StoreUnavailable) -> T:
        if self.mode != "local":
            raise _again(error)
        with self._lock:
            circuits = self.local
            if circuits is None:
                circuits = self.local = {}
            last = self._last.get(name)
            # The local circuit starts from the last shared state the breaker saw.
            if last is not None and circuits.get(name, NEVER_MOVED).version < last[0].version:
                circuits[name] = seeded(*last)
        return local()

    def _local(self, name: str) -> Circuit:
        circuits = self.local  # None: the store came back meanwhile
        return NEVER_MOVED if circuits is None else circuits.get(name, NEVER_MOVED)

    def _store_local(self, name: str, circuit: Circuit) -> None:
        if self.local is not None:  # None: the store came back meanwhile
            self.local[name] = circuit

    def _local_load(self, name: str, now: float) -> CircuitSnapshot:
        with self._lock:
            current = snapshot(self._local(name), now)
        self._remember(name, current)
        return current

    def _local_transition(self, name: str, change: Transition) -> tuple[bool, CircuitSnapshot]:
        with self._lock:
            won, circuit = transition(self._local(name), change)
            if won:
                self._store_local(name, circuit)
        current = snapshot(circuit, change.now)
        self._remember(name, current)
        return won, current

    def _local_acquire(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        held = lease_or(lease, self.probe_lease)
        with self._lock:
            granted, circuit = acquire_probe(self._local(name), version, limit, held, now)
            if granted:
                self._store_local(name, circuit)
        return granted

    def _local_release(self, name: str, version: int, succeeded: bool | None) -> int:
        with self._lock:
            successes, circuit = release_probe(self._local(name), version, succeeded)
            if successes >= 0:
                self._store_local(name, circuit)
        return successes


class GuardedBreakerStore(_SyncBreakerCalls, _AsyncBreakerCalls, BreakerGuardState):
    """A :class:`BreakerStore` that applies ``mode`` while ``store`` is unavailable.

    In ``"fail_closed"`` and ``"fail_open"`` modes it raises
    ``StoreUnavailable`` (at once while backing off), and the breaker decides.
    In ``"local"`` mode it answers from local circuits seeded with the last
    snapshot it relayed. Versions the breaker sees are the store's plus
    ``offset``; on recovery ``offset`` grows past every local version, so the
    breaker adopts the shared circuit as newer.
    """

    def breaker_watch(self, name: str, callback: SnapshotCallback) -> Callable[[], None] | None:
        # The store may hold the callback for long: hold a breaker's bound method weakly.
        ref = hold_weakly(callback)

        def relay(current: CircuitSnapshot) -> None:
            target = ref()
            if target is not None:
                target(self._seen(name, current, self.offset))

        try:
            return self.store.breaker_watch(name, relay)
        except StoreUnavailable as failure:
            self.outage.failed(failure)
            return None

    def __repr__(self) -> str:
        return f"GuardedBreakerStore({self.store!r}, mode={self.mode!r})"

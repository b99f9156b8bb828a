"""Where a circuit breaker keeps the state that several breakers (or processes) share.

What is shared, and what is not
-------------------------------
A breaker's *circuit* lives in the store: its state (closed, open, half-open,
forced open, disabled), a version number, how many times in a row it has
opened (``trips``, which grows the break duration), when the break ends, and
the half-open probe permits. Every breaker object with the same ``name`` on the
same store (in one process, or in many through SQLite, Redis or PostgreSQL)
sees and moves the same circuit.

The *window* of recent outcomes stays in each breaker object: the success path
in the closed state touches no store at all, and a process decides from what it
has seen itself that the circuit must open, exactly as an in-process breaker
does. Opening is then published to the fleet through the store.

The contract
------------
* **Versioned compare-and-set.** Every state change goes through
  :meth:`BreakerStore.breaker_transition` with a :class:`Transition`, which
  applies only if the circuit is still at its ``expected_version``; it then
  bumps the version by one. When several
  processes race to open, half-open or close the same circuit, exactly one
  wins; the others get the winner's snapshot back and adopt it.
* **Bounded probes.** In HALF_OPEN, :meth:`BreakerStore.breaker_acquire_probe`
  hands out at most ``limit`` permits at a time for the given version,
  atomically, so the fleet-wide number of concurrent probes is bounded.
  Permits belong to one version: a transition drops them all.
* **Leased probes.** Permits lapse together ``lease`` seconds after the last
  one was handed out (:mod:`resilience._core.circuit` holds the rules every
  store applies), so a probe whose process was killed, or whose task was
  cancelled while taking or handing back its permit, cannot wedge the circuit
  in HALF_OPEN. ``lease=None`` means the store's own ``probe_lease``.
* **Store time, relative answers.** ``now`` is the caller's monotonic clock.
  A store with an authoritative clock of its own (Redis ``TIME``, PostgreSQL
  ``clock_timestamp()``) uses that instead and ignores ``now``. Either way a
  snapshot reports the break as *seconds remaining*, never as an absolute time,
  so processes whose clocks disagree still agree on the break.
* **Bounded staleness.** A breaker caches the last snapshot it saw. A store that
  can push changes (the memory store calls back at once; Redis could use
  pub/sub, PostgreSQL ``LISTEN``) returns an unsubscribe function from
  :meth:`BreakerStore.breaker_watch`; one that cannot returns ``None``, and the
  breaker then reloads the snapshot at most :attr:`BreakerStore.breaker_staleness`
  seconds after its last look.
* **Sync and async.** Every method has an ``a``-prefixed coroutine twin, used by
  the async driver; a network store implements both over its sync and async
  clients. Method names start with ``breaker_`` so that one class can also
  implement other policies' store protocols.
* **Capabilities.** A store that can never be unavailable (it lives in this
  process's memory) says so with :class:`InfallibleBreakerStore`; a breaker
  then calls it directly, with no outage guard in between.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Literal, Protocol, runtime_checkable

from .._core.circuit import (
    INITIAL,
    NEVER_MOVED,
    Circuit,
    CircuitSnapshot,
    Transition,
    acquire_probe,
    lease_or,
    release_probe,
    snapshot,
    transition,
)

__all__ = [
    "DEFAULT_PROBE_LEASE",
    "INITIAL",
    "BreakerStore",
    "CircuitSnapshot",
    "InfallibleBreakerStore",
    "MemoryBreakerStore",
    "Transition",
]

DEFAULT_PROBE_LEASE = 60.0
"""Seconds a half-open probe permit is held at most, unless the breaker or store says."""

SnapshotCallback = Callable[[CircuitSnapshot], None]


@runtime_checkable
class BreakerStore(Protocol):
    """The narrow interface between a circuit breaker and its shared state."""

    breaker_staleness: float
    """Seconds a breaker may trust a cached snapshot if the store cannot push changes."""

    def breaker_load(self, name: str, now: float) -> CircuitSnapshot:
        """The circuit's current snapshot (CLOSED at version 0 if never seen)."""
        ...

    def breaker_transition(self, name: str, change: Transition) -> tuple[bool, CircuitSnapshot]:
        """Apply ``change`` if the circuit is still at ``change.expected_version``.

        On success the version goes up by one, the break (for OPEN) ends
        ``change.break_duration`` seconds from now, and all probe permits are
        dropped. Returns ``(won, snapshot)``: the new snapshot if this call
        won, else the current one, which the caller adopts.
        """
        ...

    def breaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        """Take a probe permit if the circuit is HALF_OPEN at ``version`` and fewer
        than ``limit`` unlapsed permits are out; the permits then lapse ``lease``
        seconds from now (the store's ``probe_lease`` when ``None``). Atomic."""
        ...

    def breaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        """Give back a permit; ``succeeded`` is the probe's verdict, ``None`` for none
        (cancelled, ignored). Returns the successful probes so far at ``version``,
        or ``-1`` if the circuit has moved on (the verdict is then moot)."""
        ...

    def breaker_watch(self, name: str, callback: SnapshotCallback) -> Callable[[], None] | None:
        """Call ``callback(snapshot)`` after every transition of ``name``; return a
        function that unsubscribes, or ``None`` if this store cannot push."""
        ...

    async def abreaker_load(self, name: str, now: float) -> CircuitSnapshot: ...

    async def abreaker_transition(
        self, name: str, change: Transition
    ) -> tuple[bool, CircuitSnapshot]: ...

    async def abreaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool: ...

    async def abreaker_release_probe(
        self, name: str, version: int, succeeded: bool | None
    ) -> int: ...


@runtime_checkable
class InfallibleBreakerStore(Protocol):
    """Capability: this store never raises :class:`~resilience.StoreUnavailable`.

    Declared by the attribute alone (checked once, when a breaker is built):
    such a store is called directly, with no outage guard in front of it.
    """

    breaker_infallible: Literal[True]


def hold_weakly(callback: SnapshotCallback) -> Callable[[], SnapshotCallback | None]:
    """A reference to ``callback`` that does not keep a breaker alive: a bound
    method is held weakly (a long-lived shared store must not pin its breakers)."""
    if hasattr(callback, "__self__") and hasattr(callback, "__func__"):
        return weakref.WeakMethod(callback)
    return lambda: callback


class MemoryBreakerStore:
    """Circuits in this process's memory: the default store of every breaker.

    Each breaker gets a private one unless given a store; pass one instance to
    several breakers of the same name to make them share a circuit. Changes are
    pushed to watchers at once, so cached snapshots are never stale. Safe across
    threads and asyncio tasks (its lock is held for a few dict operations only).
    """

    breaker_staleness = 0.0
    breaker_infallible: Literal[True] = True
    probe_lease = DEFAULT_PROBE_LEASE
    """Seconds a probe permit is held at most when the breaker does not say."""

    def __init__(self) -> None:
        super().__init__()  # cooperative: other policies' memory stores may be mixed in
        self._breaker_lock = threading.Lock()
        self._breaker_circuits: dict[str, Circuit] = {}
        self._breaker_watchers: dict[str, list[Callable[[], SnapshotCallback | None]]] = {}

    def breaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return snapshot(self._breaker_circuits.get(name, NEVER_MOVED), now)

    def breaker_transition(self, name: str, change: Transition) -> tuple[bool, CircuitSnapshot]:
        with self._breaker_lock:
            won, circuit = transition(self._breaker_circuits.get(name, NEVER_MOVED), change)
            if won:
                self._breaker_circuits[name] = circuit
            watchers = list(self._breaker_watchers.get(name, ())) if won else []
        current = snapshot(circuit, change.now)
        # Outside the lock: a watcher may call back into the store.
        for get_callback in watchers:
            callback = get_callback()
            if callback is not None:
                callback(current)
        return won, current

    def breaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        lease = lease_or(lease, self.probe_lease)
        with self._breaker_lock:
            circuit = self._breaker_circuits.get(name, NEVER_MOVED)
            granted, circuit = acquire_probe(circuit, version, limit, lease, now)
            if granted:
                self._breaker_circuits[name] = circuit
            return granted

    def breaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        with self._breaker_lock:
            circuit = self._breaker_circuits.get(name, NEVER_MOVED)
            successes, circuit = release_probe(circuit, version, succeeded)
            if successes >= 0:
                self._breaker_circuits[name] = circuit
            return successes

    def breaker_watch(self, name: str, callback: SnapshotCallback) -> Callable[[], None]:
        ref = hold_weakly(callback)
        with self._breaker_lock:
            watchers = self._breaker_watchers.setdefault(name, [])
            watchers[:] = [w for w in watchers if w() is not None]
            watchers.append(ref)

        def unwatch() -> None:
            with self._breaker_lock:
                if ref in watchers:
                    watchers.remove(ref)

        return unwatch

    # Memory operations never block for long: the async twins just call them.

    async def abreaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return self.breaker_load(name, now)

    async def abreaker_transition(
        self, name: str, change: Transition
    ) -> tuple[bool, CircuitSnapshot]:
        return self.breaker_transition(name, change)

    async def abreaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        return self.breaker_acquire_probe(name, version, limit, lease, now)

    async def abreaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        return self.breaker_release_probe(name, version, succeeded)

    def circuit_count(self) -> int:
        """Circuits held: those that ever moved (a never-moved circuit is not stored)."""
        return len(self._breaker_circuits)

    def __repr__(self) -> str:
        return f"MemoryBreakerStore(circuits={len(self._breaker_circuits)})"

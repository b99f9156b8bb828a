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
  :meth:`BreakerStore.breaker_transition`, which applies only if the circuit is
  still at ``expected_version``; it then bumps the version by one. When several
  processes race to open, half-open or close the same circuit, exactly one
  wins; the others get the winner's snapshot back and adopt it.
* **Bounded probes.** In HALF_OPEN, :meth:`BreakerStore.breaker_acquire_probe`
  hands out at most ``limit`` permits at a time for the given version,
  atomically, so the fleet-wide number of concurrent probes is bounded.
  Permits belong to one version: a transition drops them all.
* **Leased probes.** Permits lapse together ``lease`` seconds after the last
  one was handed out (:func:`resilience._core.breaker.take_probe` is the rule
  every store applies), so a probe whose process was killed, or whose task was
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
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .._core.breaker import CircuitState, take_probe

__all__ = ["DEFAULT_PROBE_LEASE", "BreakerStore", "CircuitSnapshot", "MemoryBreakerStore"]

DEFAULT_PROBE_LEASE = 60.0
"""Seconds a half-open probe permit is held at most, unless the breaker or store says."""


@dataclass(frozen=True, slots=True)
class CircuitSnapshot:
    """The shared state of one circuit, as a store reports it."""

    state: CircuitState
    version: int
    """Bumped by one on every transition; compare-and-set is on this number."""
    trips: int = 0
    """Openings in a row without closing in between (grows the break duration)."""
    reason: str = ""
    """Why the circuit last changed state."""
    break_remaining: float = 0.0
    """Seconds until the break is over, when the store answered (0 unless OPEN)."""


INITIAL = CircuitSnapshot(CircuitState.CLOSED, 0, 0, "initial state", 0.0)

SnapshotCallback = Callable[[CircuitSnapshot], None]


@runtime_checkable
class BreakerStore(Protocol):
    """The narrow interface between a circuit breaker and its shared state."""

    breaker_staleness: float
    """Seconds a breaker may trust a cached snapshot if the store cannot push changes."""

    def breaker_load(self, name: str, now: float) -> CircuitSnapshot:
        """The circuit's current snapshot (CLOSED at version 0 if never seen)."""
        ...

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
        """Move the circuit to ``state`` if it is still at ``expected_version``.

        On success the version becomes ``expected_version + 1``, the break (for
        OPEN) ends ``break_duration`` seconds from now, and all probe permits
        are dropped. Returns ``(won, snapshot)``: the new snapshot if this call
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
        self,
        name: str,
        expected_version: int,
        state: CircuitState,
        reason: str,
        trips: int,
        break_duration: float,
        now: float,
    ) -> tuple[bool, CircuitSnapshot]: ...

    async def abreaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool: ...

    async def abreaker_release_probe(
        self, name: str, version: int, succeeded: bool | None
    ) -> int: ...


class _Circuit:
    """One circuit's shared state inside a :class:`MemoryBreakerStore`."""

    __slots__ = (
        "open_until",
        "probe_successes",
        "probes_lapse_at",
        "probes_out",
        "reason",
        "state",
        "trips",
        "version",
        "watchers",
    )

    def __init__(self) -> None:
        self.state = CircuitState.CLOSED
        self.version = 0
        self.trips = 0
        self.reason = INITIAL.reason
        self.open_until = 0.0
        self.probes_out = 0
        self.probes_lapse_at = 0.0
        self.probe_successes = 0
        self.watchers: list[Callable[[], SnapshotCallback | None]] = []

    def snapshot(self, now: float) -> CircuitSnapshot:
        remaining = max(0.0, self.open_until - now) if self.state is CircuitState.OPEN else 0.0
        return CircuitSnapshot(self.state, self.version, self.trips, self.reason, remaining)


class MemoryBreakerStore:
    """Circuits in this process's memory: the default store of every breaker.

    Each breaker gets a private one unless given a store; pass one instance to
    several breakers of the same name to make them share a circuit. Changes are
    pushed to watchers at once, so cached snapshots are never stale. Safe across
    threads and asyncio tasks (its lock is held for a few dict operations only).
    """

    breaker_staleness = 0.0
    probe_lease = DEFAULT_PROBE_LEASE
    """Seconds a probe permit is held at most when the breaker does not say."""

    def __init__(self) -> None:
        super().__init__()  # cooperative: other policies' memory stores may be mixed in
        self._breaker_lock = threading.Lock()
        self._breaker_circuits: dict[str, _Circuit] = {}

    def _breaker_circuit(self, name: str) -> _Circuit:
        circuit = self._breaker_circuits.get(name)
        if circuit is None:
            circuit = self._breaker_circuits.setdefault(name, _Circuit())
        return circuit

    def breaker_load(self, name: str, now: float) -> CircuitSnapshot:
        with self._breaker_lock:
            return self._breaker_circuit(name).snapshot(now)

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
        with self._breaker_lock:
            circuit = self._breaker_circuit(name)
            if circuit.version != expected_version:
                return False, circuit.snapshot(now)
            circuit.version += 1
            circuit.state = state
            circuit.reason = reason
            circuit.trips = trips
            circuit.open_until = now + break_duration if state is CircuitState.OPEN else 0.0
            circuit.probes_out = circuit.probe_successes = 0
            circuit.probes_lapse_at = 0.0
            snapshot = circuit.snapshot(now)
            watchers = list(circuit.watchers)
        # Outside the lock: a watcher may call back into the store.
        for get_callback in watchers:
            callback = get_callback()
            if callback is not None:
                callback(snapshot)
        return True, snapshot

    def breaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        with self._breaker_lock:
            circuit = self._breaker_circuit(name)
            if circuit.version != version or circuit.state is not CircuitState.HALF_OPEN:
                return False
            granted, circuit.probes_out, circuit.probes_lapse_at = take_probe(
                circuit.probes_out,
                circuit.probes_lapse_at,
                now,
                limit,
                self.probe_lease if lease is None else lease,
            )
            return granted

    def breaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        with self._breaker_lock:
            circuit = self._breaker_circuit(name)
            if circuit.version != version:
                return -1
            circuit.probes_out = max(0, circuit.probes_out - 1)
            if succeeded:
                circuit.probe_successes += 1
            return circuit.probe_successes

    def breaker_watch(self, name: str, callback: SnapshotCallback) -> Callable[[], None]:
        # A bound method is held weakly: a breaker dropped by its owner must not be
        # kept alive by a long-lived shared store.
        ref: Callable[[], SnapshotCallback | None]
        if hasattr(callback, "__self__") and hasattr(callback, "__func__"):
            ref = weakref.WeakMethod(callback)
        else:
            ref = lambda: callback  # noqa: E731 - the same shape as a WeakMethod
        with self._breaker_lock:
            watchers = self._breaker_circuit(name).watchers
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
        self,
        name: str,
        expected_version: int,
        state: CircuitState,
        reason: str,
        trips: int,
        break_duration: float,
        now: float,
    ) -> tuple[bool, CircuitSnapshot]:
        return self.breaker_transition(
            name, expected_version, state, reason, trips, break_duration, now
        )

    async def abreaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        return self.breaker_acquire_probe(name, version, limit, lease, now)

    async def abreaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        return self.breaker_release_probe(name, version, succeeded)

    def __repr__(self) -> str:
        return f"MemoryBreakerStore(circuits={len(self._breaker_circuits)})"

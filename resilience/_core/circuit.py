"""The shared circuit's rules: compare-and-set transitions, leased probe permits.

A *circuit* is what breakers of one name share through a store (see
:mod:`resilience.storage.breakers` for the contract). These functions are the
rules, over plain values: each takes a :class:`Circuit` and returns the answer
and the circuit to store next. No clock reads, locks or I/O: ``now`` is passed
in, and the caller keeps the circuit (a dict entry, an SQLite row) and
serializes access. The memory store, SQLite and the outage guard's local
circuits call them; the conformance suite holds Redis and PostgreSQL (whose
rules run on the server) to them as the oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final

from .breaker import MAX_BREAK, CircuitState, take_probe

__all__ = [
    "INITIAL",
    "NEVER_MOVED",
    "Circuit",
    "CircuitSnapshot",
    "Transition",
    "acquire_probe",
    "lease_or",
    "release_probe",
    "seeded",
    "snapshot",
    "transition",
]


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


INITIAL: Final = CircuitSnapshot(CircuitState.CLOSED, 0, 0, "initial state", 0.0)
"""What a store reports for a circuit it has never seen."""


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change asked of a store: applies only if the circuit is still at
    ``expected_version`` (compare-and-set)."""

    expected_version: int
    """The version the caller last saw; the transition loses if the circuit moved on."""
    state: CircuitState
    """The state to move to."""
    reason: str
    """Why (reported to listeners and in snapshots)."""
    trips: int
    """Openings in a row after this transition (0 when it closes the circuit)."""
    break_duration: float
    """Seconds the break lasts, from ``now``; only meaningful when ``state`` is OPEN."""
    now: float
    """The caller's monotonic clock; a store with a clock of its own uses that instead."""


@dataclass(frozen=True, slots=True)
class Circuit:
    """One circuit as a store keeps it (absolute times, on the store's clock)."""

    state: CircuitState = CircuitState.CLOSED
    version: int = 0
    trips: int = 0
    reason: str = INITIAL.reason
    open_until: float = 0.0
    """When the break ends (0 unless OPEN)."""
    probes_out: int = 0
    """Half-open probe permits held at this version."""
    probe_successes: int = 0
    """Probes that succeeded at this version."""
    probes_lapse_at: float = 0.0
    """When every held permit lapses (see :func:`resilience._core.breaker.take_probe`)."""


NEVER_MOVED: Final = Circuit()
"""The circuit of a name no transition has touched yet (CLOSED at version 0)."""


def snapshot(circuit: Circuit, now: float) -> CircuitSnapshot:
    """The circuit as a store reports it: the break as seconds remaining.

    A break that is not a finite number (a row written with an infinite or NaN
    duration) reads as :data:`MAX_BREAK`: never as "no break".
    """
    remaining = 0.0
    if circuit.state is CircuitState.OPEN:
        remaining = circuit.open_until - now
        if not math.isfinite(remaining):
            remaining = 0.0 if remaining == -math.inf else MAX_BREAK
        remaining = max(0.0, remaining)
    return CircuitSnapshot(circuit.state, circuit.version, circuit.trips, circuit.reason, remaining)


def transition(circuit: Circuit, change: Transition) -> tuple[bool, Circuit]:
    """Compare-and-set: ``(True, moved)`` if ``circuit`` is at ``change.expected_version``,
    else ``(False, circuit)``.

    The moved circuit is one version up, in ``change.state``, its break (for
    OPEN) ending ``change.break_duration`` seconds after ``change.now`` (a
    non-finite duration holds :data:`MAX_BREAK`), and with every probe permit
    dropped: permits belong to one version.
    """
    if circuit.version != change.expected_version:
        return False, circuit
    open_until = 0.0
    if change.state is CircuitState.OPEN:
        open_until = change.now + change.break_duration
        if not math.isfinite(open_until):
            open_until = change.now + MAX_BREAK
    moved = Circuit(change.state, circuit.version + 1, change.trips, change.reason, open_until)
    return True, moved


def acquire_probe(
    circuit: Circuit, version: int, limit: int, lease: float, now: float
) -> tuple[bool, Circuit]:
    """Take a probe permit: only from a HALF_OPEN circuit at ``version``, and only
    while fewer than ``limit`` unlapsed permits are out (``take_probe``)."""
    if circuit.version != version or circuit.state is not CircuitState.HALF_OPEN:
        return False, circuit
    granted, out, lapse_at = take_probe(
        circuit.probes_out, circuit.probes_lapse_at, now, limit, lease
    )
    if not granted:
        return False, circuit
    return True, replace(circuit, probes_out=out, probes_lapse_at=lapse_at)


def release_probe(circuit: Circuit, version: int, succeeded: bool | None) -> tuple[int, Circuit]:
    """Hand a permit back with the probe's verdict (``None``: no verdict).

    Returns the successful probes so far at ``version``, or ``-1`` (and the
    circuit unchanged) if the circuit has moved on.
    """
    if circuit.version != version:
        return -1, circuit
    successes = circuit.probe_successes + (1 if succeeded else 0)
    released = replace(
        circuit, probes_out=max(0, circuit.probes_out - 1), probe_successes=successes
    )
    return successes, released


def lease_or(lease: float | None, default: float) -> float:
    """The lease to apply: ``default`` when none is given, or when the given one
    would never end (a lease that never ends would be no lease at all)."""
    if lease is None or not (math.isfinite(lease) and lease > 0):
        return default
    return lease


def seeded(seen: CircuitSnapshot, seen_at: float) -> Circuit:
    """A circuit that starts where ``seen`` (reported at ``seen_at``) left off,
    with no permits out: how a local stand-in takes over a shared circuit."""
    open_until = seen_at + seen.break_remaining if seen.state is CircuitState.OPEN else 0.0
    return Circuit(seen.state, seen.version, seen.trips, seen.reason, open_until)

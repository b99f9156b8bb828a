"""The circuit breaker's pure core: states, admission, breaks, probe permits.

Nothing here does I/O, reads a clock or takes a lock: time comes in as ``now``
and the caller (the driver in :mod:`resilience._async.breaker`, or its
generated sync twin) serializes access. The same code therefore serves
threads, asyncio tasks and, through :mod:`resilience.storage.breakers`,
several processes. The windows that record outcomes in CLOSED state are in
:mod:`resilience._core.windows` (and importable from here); the shared
circuit's own rules are in :mod:`resilience._core.circuit`.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Final

# The windows and outcomes belong to the breaker's core; they live in their own module.
from .windows import (
    FAILURE,
    IGNORED,
    SLOW,
    SUCCESS,
    ConsecutiveWindow,
    CountWindow,
    TimeWindow,
    TripRule,
    Window,
)

__all__ = [
    "FAILURE",
    "IGNORED",
    "SLOW",
    "SUCCESS",
    "Admission",
    "CircuitState",
    "ConsecutiveWindow",
    "CountWindow",
    "TimeWindow",
    "TripRule",
    "Window",
    "admission",
    "MAX_BREAK",
    "break_duration",
    "probe_verdict",
    "take_probe",
]


class CircuitState(StrEnum):
    """Where a circuit breaker stands."""

    CLOSED = "closed"
    """Calls go through; outcomes are recorded in the window."""
    OPEN = "open"
    """Calls are rejected until the break is over."""
    HALF_OPEN = "half_open"
    """A few probe calls go through; their outcome closes or re-opens the circuit."""
    FORCED_OPEN = "forced_open"
    """Isolated by hand (``isolate()``): every call is rejected until ``reset()``."""
    DISABLED = "disabled"
    """Switched off by hand (``disable()``): every call goes through, nothing is recorded."""


MAX_BREAK: Final = 10 * 365 * 86400.0
"""The longest break there is (ten years): a grown break stops here, so no store
is ever handed an infinite or overflowing duration."""


def break_duration(trips: int, base: float, multiplier: float, maximum: float) -> float:
    """How long the circuit stays open after its ``trips``-th opening in a row (1-based)."""
    if multiplier == 1.0 or trips <= 1:
        return min(base, maximum, MAX_BREAK)
    try:
        grown = base * multiplier ** (trips - 1)
    except OverflowError:
        grown = math.inf
    return min(grown, maximum, MAX_BREAK)


def take_probe(
    out: int, lapse_at: float, now: float, limit: int, lease: float
) -> tuple[bool, int, float]:
    """The shared-circuit rule for half-open probe permits, on one circuit version.

    ``out`` permits are held; they lapse together ``lease`` seconds after the
    last one was handed out (``lapse_at``), so permits held by a process that
    died, or by a task cancelled before it could hand its permit back, cannot
    wedge the circuit in HALF_OPEN. Returns ``(granted, out, lapse_at)``: the
    new values to store. Every store applies this rule (memory and SQLite
    through :func:`resilience._core.circuit.acquire_probe`; the Redis and
    PostgreSQL scripts are checked against it).
    """
    if now >= lapse_at:
        out = 0
    if out >= limit:
        return False, out, lapse_at
    return True, out + 1, now + lease


class Admission(StrEnum):
    """What to do with a call, given the circuit's state (see :func:`admission`)."""

    PASS = "pass"
    """Run it and record its outcome in the window."""
    BYPASS = "bypass"
    """Run it and record nothing (DISABLED)."""
    PROBE = "probe"
    """Run it as a half-open probe, if a probe permit can be had."""
    START_PROBING = "start_probing"
    """The break is over: move OPEN to HALF_OPEN, then try for a probe permit."""
    REJECT = "reject"
    """Refuse it with ``CircuitOpenError``."""


def admission(state: CircuitState, now: float, open_until: float) -> Admission:
    """The admission rule: a pure function of the state and the time."""
    if state is CircuitState.CLOSED:
        return Admission.PASS
    if state is CircuitState.OPEN:
        return Admission.START_PROBING if now >= open_until else Admission.REJECT
    if state is CircuitState.HALF_OPEN:
        return Admission.PROBE
    if state is CircuitState.DISABLED:
        return Admission.BYPASS
    return Admission.REJECT


def probe_verdict(outcome: int, successes: int, needed: int) -> CircuitState | None:
    """After a probe: OPEN on a failed (or slow) probe, CLOSED once ``needed``
    probes have succeeded, else ``None`` (stay half-open)."""
    if outcome == IGNORED:
        return None
    if outcome != SUCCESS:
        return CircuitState.OPEN
    return CircuitState.CLOSED if successes >= needed else None

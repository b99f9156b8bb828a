"""What the SQL stores share: how keys and circuits are written as rows."""

from __future__ import annotations

import math

from .._breaker_core import CircuitState
from .breakers import INITIAL, CircuitSnapshot

__all__ = ["encode_key", "snapshot_of"]


def encode_key(key: str | None) -> str:
    """A bucket key as a non-null column value: ``None`` is ``''``, ``'k'`` is ``'=k'``.

    Keys stay distinct (``None`` and ``''`` are different buckets) and readable,
    and the primary key never contains a NULL.
    """
    return "" if key is None else "=" + key


def snapshot_of(
    row: tuple[str, int, int, str, float] | None,
) -> CircuitSnapshot:
    """``(state, version, trips, reason, break_remaining)`` -> snapshot; no row: initial."""
    if row is None:
        return INITIAL
    state, version, trips, reason, remaining = row
    circuit_state = CircuitState(state)
    if circuit_state is not CircuitState.OPEN or not math.isfinite(remaining):
        remaining = 0.0
    return CircuitSnapshot(circuit_state, int(version), int(trips), reason, max(0.0, remaining))

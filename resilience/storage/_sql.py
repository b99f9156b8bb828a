"""What the SQL stores share: how keys and circuits are written as rows."""

from __future__ import annotations

import hashlib
import math

from .._core.breaker import MAX_BREAK, CircuitState
from .breakers import INITIAL, CircuitSnapshot

__all__ = ["PLAIN_KEY_BYTES", "encode_key", "snapshot_of"]

#: The longest key (in UTF-8 bytes) stored as it is; longer ones are stored as a digest.
PLAIN_KEY_BYTES = 200


def encode_key(key: str | None) -> str:
    """A bucket key as a non-null column value every SQL store can hold and index.

    ``None`` is ``''``; a key of at most :data:`PLAIN_KEY_BYTES` UTF-8 bytes
    without a NUL is ``'=' + key`` (readable); any other ``str`` (a NUL, a lone
    surrogate, a long key) is ``'#'`` and the SHA-256 hex digest of its UTF-8
    bytes (``surrogatepass``, so that every ``str`` has one): 65 characters,
    whatever the key. The three forms start differently, so they never collide;
    keys stay distinct (``None`` and ``''`` are different buckets) and the
    primary key never contains a NULL.
    """
    if key is None:
        return ""
    if not isinstance(key, str):
        raise TypeError(f"a bucket key must be a str or None, got {type(key).__name__}")
    if len(key) <= PLAIN_KEY_BYTES and "\x00" not in key:
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate: not text a database can store
            pass
        else:
            if size <= PLAIN_KEY_BYTES:
                return "=" + key
    return "#" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def snapshot_of(
    row: tuple[str, int, int, str, float] | None,
) -> CircuitSnapshot:
    """``(state, version, trips, reason, break_remaining)`` -> snapshot; no row: initial.

    An OPEN circuit whose remaining break is not a finite number (a row written
    with an infinite or NaN duration) holds the longest break there is,
    :data:`~resilience._core.breaker.MAX_BREAK`: never "no break".
    """
    if row is None:
        return INITIAL
    state, version, trips, reason, remaining = row
    circuit_state = CircuitState(state)
    if circuit_state is not CircuitState.OPEN:
        remaining = 0.0
    elif not math.isfinite(remaining):
        remaining = 0.0 if remaining == -math.inf else MAX_BREAK
    return CircuitSnapshot(circuit_state, int(version), int(trips), reason, max(0.0, remaining))

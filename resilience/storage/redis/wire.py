"""How values cross the wire between :class:`~resilience.storage.redis.RedisStore` and its
Lua scripts: text and bytes, server times, bucket states, per-bucket arguments.

Floats travel as text that round-trips exactly (Python's ``repr`` one way, ``%.17g``
the other), and each helper repeats the scripts' own arithmetic, so that the client
and the server compute bit-identical doubles (see
:mod:`resilience.storage.redis.scripts`).
"""

from __future__ import annotations

import math
from typing import Any

from ..._core.bucket import BucketSpec

__all__ = ["NO_LIMIT", "bucket_state", "micros", "server_time", "take_shape", "text", "utf8"]

#: max_wait = inf, as the take scripts read it.
NO_LIMIT = b"-1"


def text(value: Any) -> str:
    """A reply's value as ``str`` (lone surrogates kept as they are)."""
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else str(value)


def utf8(value: str) -> bytes:
    """Any ``str`` as bytes for Redis, lone surrogates included (never an encoding error)."""
    return value.encode("utf-8", "surrogatepass")


def micros(value: str) -> int:
    """A server time as the scripts write it (``seconds.micros``), in microseconds."""
    seconds, _, fraction = value.partition(".")
    return int(seconds) * 1_000_000 + int(fraction or 0)


def server_time(seconds: Any, microseconds: Any) -> float:
    """``TIME`` as the scripts compute it: the same two operations, the same double."""
    return float(int(seconds)) + float(int(microseconds)) / 1000000


def bucket_state(value: Any) -> float:
    """A bucket's stored text (``%.17g``), or ``-inf`` (full) for a missing key."""
    return float(value) if value else -math.inf


def take_shape(spec: BucketSpec, cost: int) -> tuple[bytes, bytes, bytes]:
    """The take script's arguments for one bucket, as exact text: computed the way
    :func:`resilience._core.bucket.take_all` computes them, so both sides agree bit for bit."""
    increment = cost * spec.interval
    return (
        repr(spec.headroom_for(cost)).encode(),
        repr(spec.capacity - increment).encode(),
        repr(increment).encode(),
    )

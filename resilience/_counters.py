"""Statistics counters that many threads may tick at once, without a lock."""

from __future__ import annotations

import itertools

__all__ = ["counter_value"]


def counter_value(counter: itertools.count[int]) -> int:
    """The current value of an ``itertools.count`` used as a counter.

    ``next(counter)`` is atomic under the GIL (it runs in C without releasing
    it), so counting costs one call and no lock; the count's repr holds its
    value, which is the only way to read it without advancing it.
    """
    return int(repr(counter)[6:-1])

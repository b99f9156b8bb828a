"""The circuit breaker's windows: they record outcomes in CLOSED state and say when
the circuit must open (a count of failures in a row, a ratio over the last calls or
over the last seconds).

Pure, like the rest of :mod:`resilience._core`: ``now`` is an argument; the driver
serializes access, except for each window's lock-free success path
(:meth:`Window.note_success`).

Outcomes are small ints so a count window can keep them in a ``bytearray``:

* ``SUCCESS``: the call went well;
* ``FAILURE``: it raised (or returned) something counted as a failure;
* ``SLOW``: it succeeded but took at least ``slow_call_duration``; a slow call
  counts as a failure *and* towards the separate slow-call ratio;
* ``IGNORED``: it neither failed nor succeeded (``KeyboardInterrupt``,
  ``asyncio.CancelledError``...): it is not recorded anywhere.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Final

__all__ = [
    "FAILURE",
    "IGNORED",
    "SLOW",
    "SUCCESS",
    "ConsecutiveWindow",
    "CountWindow",
    "TimeWindow",
    "TripRule",
    "Window",
]

SUCCESS: Final = 0
FAILURE: Final = 1
SLOW: Final = 2
IGNORED: Final = 3


@dataclass(frozen=True, slots=True)
class TripRule:
    """When a ratio window says the circuit must open (validated options, in plain form)."""

    failure_ratio: float | None = None
    """Ratio mode: failures / calls at or above this opens the circuit."""
    slow_call_ratio: float | None = None
    """Ratio mode: slow calls / calls at or above this opens the circuit."""
    minimum_calls: int = 1
    """Ratio mode: no verdict before this many calls are in the window."""

    def ratio_verdict(self, calls: int, bad: int, slow: int) -> str | None:
        """The reason to open, given a window's totals, or ``None``."""
        if calls < self.minimum_calls or calls == 0:
            return None
        ratio = self.failure_ratio
        if ratio is not None and bad / calls >= ratio:
            return f"failure ratio {bad}/{calls} reached {ratio:g}"
        ratio = self.slow_call_ratio
        if ratio is not None and slow / calls >= ratio:
            return f"slow-call ratio {slow}/{calls} reached {ratio:g}"
        return None


class Window:
    """Records outcomes in CLOSED state and says when the circuit must open.

    Every method but :meth:`note_success` must be called under the driver's
    lock. :meth:`note_success` is the lock-free success path: it may run
    concurrently with anything, and it only uses operations that are atomic
    under the GIL (an attribute read, ``next()`` on an ``itertools.count``).
    """

    __slots__ = ()

    def add(self, outcome: int, now: float) -> str | None:
        """Record one outcome; return the reason to open, or ``None``."""
        raise NotImplementedError

    def note_success(self, now: float) -> bool:
        """Record a success without a lock if no verdict can come of it; return
        ``False`` when the caller must take the lock and :meth:`add` it instead."""
        return False

    def clear(self) -> None:
        """Forget everything (the circuit closed again, or was reset)."""
        raise NotImplementedError

    def totals(self, now: float) -> tuple[int, int, int]:
        """``(calls, bad, slow)`` currently in the window; ``bad`` includes slow calls."""
        raise NotImplementedError


def _count_value(counter: itertools.count[int]) -> int:
    # itertools.count advances atomically under the GIL; its repr holds its value.
    return int(repr(counter)[6:-1])


class ConsecutiveWindow(Window):
    """Counts failures in a row; any success starts the count again.

    ``streak`` is read without a lock by the success fast path: a success only
    takes the lock to reset it when it is non-zero.
    """

    __slots__ = ("streak", "threshold")

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.streak = 0

    def add(self, outcome: int, now: float) -> str | None:
        if outcome == SUCCESS:
            self.streak = 0
            return None
        self.streak += 1
        if self.streak >= self.threshold:
            return f"{self.streak} consecutive failures reached failure_threshold"
        return None

    def note_success(self, now: float) -> bool:
        return self.streak == 0

    def clear(self) -> None:
        self.streak = 0

    def totals(self, now: float) -> tuple[int, int, int]:
        return self.streak, self.streak, 0


class CountWindow(Window):
    """The last ``size`` outcomes, in a ring buffer with running totals (O(1) per call).

    Once the window holds ``minimum_calls`` outcomes a success can only lower
    the ratios, so :meth:`note_success` just ticks a counter; the pending
    successes are folded into the ring, in order, before the next locked
    operation (amortized O(1) per call).
    """

    __slots__ = (
        "_bad",
        "_calls",
        "_folded",
        "_mature",
        "_next",
        "_pending",
        "_ring",
        "_rule",
        "_slow",
    )

    def __init__(self, size: int, rule: TripRule) -> None:
        self._rule = rule
        self._ring = bytearray(size)
        self._pending = itertools.count()
        self._folded = 0
        self.clear()

    def clear(self) -> None:
        self._ring[:] = bytes(len(self._ring))
        self._next = 0
        self._calls = self._bad = self._slow = 0
        self._mature = False
        self._folded = _count_value(self._pending)  # successes noted before now are moot

    def note_success(self, now: float) -> bool:
        if self._mature:
            next(self._pending)
            return True
        return False

    def _push(self, outcome: int) -> None:
        ring = self._ring
        index = self._next
        if self._calls == len(ring):  # full: the oldest outcome leaves
            evicted = ring[index]
            self._bad -= evicted != SUCCESS
            self._slow -= evicted == SLOW
        else:
            self._calls += 1
        ring[index] = outcome
        self._bad += outcome != SUCCESS
        self._slow += outcome == SLOW
        self._next = index + 1 if index + 1 < len(ring) else 0

    def _fold(self) -> None:
        noted = _count_value(self._pending)
        pending, self._folded = noted - self._folded, noted
        for _ in range(min(pending, len(self._ring))):
            self._push(SUCCESS)

    def add(self, outcome: int, now: float) -> str | None:
        self._fold()
        self._push(outcome)
        verdict = self._rule.ratio_verdict(self._calls, self._bad, self._slow)
        self._mature = self._calls >= self._rule.minimum_calls
        return verdict

    def totals(self, now: float) -> tuple[int, int, int]:
        self._fold()
        return self._calls, self._bad, self._slow


class TimeWindow(Window):
    """Outcomes of the last ``seconds``, kept in ``buckets`` slices with running totals.

    An outcome at time ``t`` falls in slice ``floor(t / width)``; the window
    holds the current slice and the ``buckets - 1`` before it. Moving on
    expires at most ``buckets`` slices, so a snapshot is O(1) amortized and the
    memory is fixed whatever the call rate.

    A success in the current slice, once the window holds ``minimum_calls``,
    only ticks that slice's counter (:meth:`note_success`); moving to a new
    slice takes the lock. Under concurrency, a success racing with the move to
    a new slice may be dropped: the window is then short of one success.
    """

    __slots__ = (
        "_bad",
        "_bad_in",
        "_calls",
        "_calls_in",
        "_current",
        "_folded_in",
        "_mature",
        "_pending_in",
        "_rule",
        "_size",
        "_slow",
        "_slow_in",
        "_width",
    )

    def __init__(self, seconds: float, buckets: int, rule: TripRule) -> None:
        self._rule = rule
        self._size = buckets
        self._width = seconds / buckets
        self._calls_in = [0] * buckets
        self._bad_in = [0] * buckets
        self._slow_in = [0] * buckets
        self._pending_in = [itertools.count() for _ in range(buckets)]
        self._folded_in = [0] * buckets
        self.clear()

    def clear(self) -> None:
        for counts in (self._calls_in, self._bad_in, self._slow_in):
            counts[:] = [0] * self._size
        self._folded_in[:] = [_count_value(c) for c in self._pending_in]
        self._calls = self._bad = self._slow = 0
        self._current: int | None = None
        self._mature = False

    def slice_of(self, now: float) -> int:
        return math.floor(now / self._width)

    def note_success(self, now: float) -> bool:
        current = self._current
        if self._mature and current is not None and math.floor(now / self._width) == current:
            next(self._pending_in[current % self._size])
            return True
        return False

    def _fold(self, slot: int) -> None:
        noted = _count_value(self._pending_in[slot])
        pending, self._folded_in[slot] = noted - self._folded_in[slot], noted
        self._calls_in[slot] += pending
        self._calls += pending

    def _move_to(self, now: float) -> int:
        target = self.slice_of(now)
        current = self._current
        if current is not None:
            self._fold(current % self._size)  # only the current slice has pending successes
        if current is not None and target - current >= self._size:
            self.clear()
        elif current is not None and target > current:
            for expired in range(current + 1, target + 1):
                slot = expired % self._size
                self._calls -= self._calls_in[slot]
                self._bad -= self._bad_in[slot]
                self._slow -= self._slow_in[slot]
                self._calls_in[slot] = self._bad_in[slot] = self._slow_in[slot] = 0
                # A success that raced with an earlier move may have landed here: drop it.
                self._folded_in[slot] = _count_value(self._pending_in[slot])
        if current is None or target > current:
            self._current = target
            self._mature = self._calls >= self._rule.minimum_calls
        # A clock never goes back; if one does, count the outcome in the newest slice.
        return (self._current if self._current is not None else target) % self._size

    def add(self, outcome: int, now: float) -> str | None:
        slot = self._move_to(now)
        self._calls_in[slot] += 1
        self._calls += 1
        if outcome != SUCCESS:
            self._bad_in[slot] += 1
            self._bad += 1
            if outcome == SLOW:
                self._slow_in[slot] += 1
                self._slow += 1
        verdict = self._rule.ratio_verdict(self._calls, self._bad, self._slow)
        self._mature = self._calls >= self._rule.minimum_calls
        return verdict

    def totals(self, now: float) -> tuple[int, int, int]:
        self._move_to(now)
        return self._calls, self._bad, self._slow

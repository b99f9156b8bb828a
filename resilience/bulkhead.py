"""Bulkhead: limit how many calls run at once, with an optional bounded queue.

A slot is taken before the call and given back after it. The lock guards only
the counters and the queue, for a few instructions; it is never held while the
protected call runs. A freed slot is handed straight to the oldest waiter
(first come, first served), so a newcomer cannot barge past the queue. Threads
and asyncio tasks (on any event loop) may share one bulkhead.

Waiting is real (monotonic) time: a thread blocked on a lock cannot be woken by
a virtual clock. ``max_wait`` and the enclosing deadline
(:func:`~resilience.remaining_time`) bound it; ``max_wait`` is at most 1e9 s
(``None`` or ``inf``: no bound), and a wait handed to ``Event.wait`` or
``asyncio.timeout`` never exceeds the platform's limit (see
:func:`resilience.clock.safe_wait`).

A waiter that leaves the queue (its wait expired, its thread was interrupted,
its task was cancelled) never takes a slot with it: if the slot was handed to
it in the meantime, it passes the slot on; if a release skipped it because it
was leaving, there is nothing to undo.

The acquiring forms (``acquire``/``aacquire``, the decorators, ``with`` and
``async with``) are written once, in :mod:`resilience._async.bulkhead`; the
sync ones are generated from it (:mod:`resilience._sync.bulkhead`).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from ._async import bulkhead as _async_bulkhead
from ._counters import counter_value
from ._deadline import wait_budget
from ._policy import Policy
from ._primitives import AsyncWaiter, Waiter
from ._sync import bulkhead as _sync_bulkhead
from ._validation import Count, Duration, NonNegativeCount, PolicyName, options_from, options_model
from .errors import BulkheadFull
from .telemetry.channel import Telemetry
from .telemetry.events import BulkheadRejected

__all__ = ["Bulkhead", "BulkheadOptions", "BulkheadStatistics"]


@dataclass(frozen=True, slots=True)
class BulkheadStatistics:
    """A bulkhead's live occupancy and its counts since it was built."""

    name: str
    max_concurrent: int
    max_queued: int
    active: int
    queued: int
    calls: int
    rejections: int


class Bulkhead(Policy):
    """At most ``max_concurrent`` calls at once; up to ``max_queued`` more wait for a
    slot (at most ``max_wait`` seconds, ``None`` for as long as it takes); any
    other call is rejected at once with :class:`~resilience.BulkheadFull`.

    Also a context manager: ``with bulkhead:`` / ``async with bulkhead:``.
    """

    kind = "bulkhead"

    __slots__ = (
        "__weakref__",
        "_active",
        "_calls",
        "_limit",
        "_lock",
        "_max_queued",
        "_max_wait",
        "_rejections",
        "_telemetry",
        "_waiters",
        "name",
        "options",
    )

    def __init__(
        self,
        max_concurrent: Count,
        max_queued: NonNegativeCount = 0,
        max_wait: Duration | None = None,
        *,
        name: PolicyName = "bulkhead",
    ) -> None:
        """Each option is declared here once; ``BulkheadOptions`` is derived from it."""
        self._configure(options_from(BulkheadOptions, f"Bulkhead {name!r}", locals()))

    def _configure(self, options: Any) -> None:
        self.options = options
        self.name = options.name
        self._telemetry = Telemetry(self.kind, options.name)
        self._limit = options.max_concurrent
        self._max_queued = options.max_queued
        wait = options.max_wait
        self._max_wait = None if wait is None or math.isinf(wait) else wait
        self._lock = threading.Lock()
        self._active = 0
        self._waiters: deque[Waiter | AsyncWaiter] = deque()
        self._calls = itertools.count()
        self._rejections = itertools.count()

    @property
    def statistics(self) -> BulkheadStatistics:
        with self._lock:
            active, queued = self._active, len(self._waiters)
        return BulkheadStatistics(
            name=self.name,
            max_concurrent=self._limit,
            max_queued=self._max_queued,
            active=active,
            queued=queued,
            calls=counter_value(self._calls),
            rejections=counter_value(self._rejections),
        )

    # -- slots ----------------------------------------------------------------------

    def _reject(self, reason: str) -> BulkheadFull:
        next(self._rejections)
        tel = self._telemetry
        if tel.wants(BulkheadRejected):
            tel.emit(BulkheadRejected(self.name, reason))
        return BulkheadFull(self.name)

    def release(self) -> None:
        """Give a slot back: to the oldest waiter if any, else to the pool."""
        with self._lock:
            waiters = self._waiters
            while waiters:
                waiter = waiters.popleft()
                waiter.queued = False
                if waiter.grant():
                    return  # the slot changes hands; the active count stays
                # A task that is giving up (cancelled, timed out): skipped, and
                # told so by ``queued``; the slot goes to the next in line.
            self._active -= 1

    def _enqueue(self, waiter: Waiter | AsyncWaiter | None) -> tuple[bool, float | None]:
        """Under the lock, every slot taken: queue ``waiter`` if there is room and
        time. Returns (queued, how long it may wait)."""
        budget = wait_budget(self._max_wait)
        if waiter is None or len(self._waiters) >= self._max_queued or budget == 0:
            return False, budget
        self._waiters.append(waiter)
        waiter.queued = True
        return True, budget

    def _leave_queue(self, waiter: Waiter | AsyncWaiter) -> bool:
        """After a wait ended without a grant: leave the queue, unless the slot was
        granted in the meantime (then keep it). True when the slot is ours."""
        with self._lock:
            if waiter.granted:
                return True
            if waiter.queued:  # else a release already took it out, and skipped it
                self._waiters.remove(waiter)
                waiter.queued = False
            return False

    acquire = _sync_bulkhead.acquire
    aacquire = _async_bulkhead.aacquire

    # -- policy ---------------------------------------------------------------------

    wrap_sync = _sync_bulkhead.wrap_sync
    wrap_async = _async_bulkhead.wrap_async
    __enter__ = _sync_bulkhead.__enter__
    __exit__ = _sync_bulkhead.__exit__
    __aenter__ = _async_bulkhead.__aenter__
    __aexit__ = _async_bulkhead.__aexit__

    def __repr__(self) -> str:
        return (
            f"Bulkhead(max_concurrent={self._limit}, max_queued={self._max_queued}, "
            f"max_wait={self._max_wait!r}, name={self.name!r})"
        )


BulkheadOptions = options_model(Bulkhead.__init__, "BulkheadOptions")

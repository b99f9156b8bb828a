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
:func:`resilience._clock.safe_wait`).

A waiter that leaves the queue (its wait expired, its thread was interrupted,
its task was cancelled) never takes a slot with it: if the slot was handed to
it in the meantime, it passes the slot on; if a release skipped it because it
was leaving, there is nothing to undo.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from ._clock import safe_wait
from ._counters import counter_value
from ._deadline import wait_budget
from ._policy import Policy
from ._validation import Count, NonNegativeCount, OptionsModel, PolicyName, Seconds, build_options
from .errors import BulkheadFull
from .telemetry._hub import HUB
from .telemetry.events import BulkheadRejected
from .telemetry.otel import CallObserver, observe_async, observe_sync

__all__ = ["Bulkhead", "BulkheadOptions", "BulkheadStatistics"]

P = ParamSpec("P")
R = TypeVar("R")


class BulkheadOptions(OptionsModel):
    """Validated options of a :class:`Bulkhead`."""

    max_concurrent: Count
    max_queued: NonNegativeCount = 0
    max_wait: Seconds | None = None
    name: PolicyName = "bulkhead"


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


class _ThreadWaiter:
    __slots__ = ("event", "granted", "queued")

    def __init__(self) -> None:
        self.granted = False
        self.queued = False  # in the bulkhead's deque (changed under its lock)
        self.event = threading.Event()

    def grant(self) -> bool:
        self.granted = True
        self.event.set()
        return True


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _TaskWaiter:
    __slots__ = ("future", "granted", "loop", "queued")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.granted = False
        self.queued = False  # in the bulkhead's deque (changed under its lock)
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def grant(self) -> bool:
        if self.future.cancelled():
            return False  # its task gave up; it is removing itself
        try:
            self.loop.call_soon_threadsafe(_wake, self.future)
        except RuntimeError:  # its event loop is closed: nobody is waiting any more
            return False
        self.granted = True
        return True


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
        "_waiters",
        "name",
        "options",
    )

    def __init__(
        self,
        max_concurrent: int,
        max_queued: int = 0,
        max_wait: float | Any | None = None,
        *,
        name: str = "bulkhead",
    ) -> None:
        options = build_options(
            BulkheadOptions,
            f"Bulkhead {name!r}",
            max_concurrent=max_concurrent,
            max_queued=max_queued,
            max_wait=max_wait,
            name=name,
        )
        self._configure(options)

    def _configure(self, options: BulkheadOptions) -> None:
        self.options = options
        self.name = options.name
        self._limit = options.max_concurrent
        self._max_queued = options.max_queued
        wait = options.max_wait
        self._max_wait = None if wait is None or math.isinf(wait) else wait
        self._lock = threading.Lock()
        self._active = 0
        self._waiters: deque[_ThreadWaiter | _TaskWaiter] = deque()
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
        if HUB.active:
            HUB.emit(BulkheadRejected(self.name, reason))
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

    def _enqueue(self, waiter: _ThreadWaiter | _TaskWaiter | None) -> tuple[bool, float | None]:
        """Under the lock, every slot taken: queue ``waiter`` if there is room and
        time. Returns (queued, how long it may wait)."""
        budget = wait_budget(self._max_wait)
        if waiter is None or len(self._waiters) >= self._max_queued or budget == 0:
            return False, budget
        self._waiters.append(waiter)
        waiter.queued = True
        return True, budget

    def _leave_queue(self, waiter: _ThreadWaiter | _TaskWaiter) -> bool:
        """After a wait ended without a grant: leave the queue, unless the slot was
        granted in the meantime (then keep it). True when the slot is ours."""
        with self._lock:
            if waiter.granted:
                return True
            if waiter.queued:  # else a release already took it out, and skipped it
                self._waiters.remove(waiter)
                waiter.queued = False
            return False

    # Rejections are raised outside the lock: a telemetry subscriber may be slow,
    # or read the statistics (which take the lock).

    def acquire(self) -> None:
        """Take a slot, waiting in the queue if allowed; raise ``BulkheadFull`` if not."""
        with self._lock:
            if self._active < self._limit:
                self._active += 1
                next(self._calls)
                return
            waiter = _ThreadWaiter() if self._max_queued else None
            queued, budget = self._enqueue(waiter)
        if not queued:
            raise self._reject("queue_full")
        assert waiter is not None
        try:
            woken = waiter.event.wait(None if budget is None else safe_wait(budget))
        except BaseException:  # interrupted (KeyboardInterrupt…) while queued
            if self._leave_queue(waiter):
                self.release()  # the slot arrived meanwhile: pass it on
            raise
        if not woken and not self._leave_queue(waiter):
            raise self._reject("wait_expired")
        next(self._calls)

    async def aacquire(self) -> None:
        """Take a slot, awaiting one in the queue if allowed; raise ``BulkheadFull`` if not."""
        with self._lock:
            if self._active < self._limit:
                self._active += 1
                next(self._calls)
                return
            waiter = _TaskWaiter(asyncio.get_running_loop()) if self._max_queued else None
            queued, budget = self._enqueue(waiter)
        if not queued:
            raise self._reject("queue_full")
        assert waiter is not None
        try:
            async with asyncio.timeout(None if budget is None else safe_wait(budget)):
                await waiter.future
        except TimeoutError:
            if not self._leave_queue(waiter):
                raise self._reject("wait_expired") from None
        except BaseException:  # cancelled while queued
            if self._leave_queue(waiter):
                self.release()  # the slot arrived as we were cancelled: pass it on
            raise
        next(self._calls)

    # -- policy ---------------------------------------------------------------------

    # The wrappers inline the uncontended case of acquire/release (a slot free,
    # nobody queued): two short critical sections and no extra Python frames.

    def wrap_sync(self, fn: Callable[P, R], observer: CallObserver | None = None) -> Callable[P, R]:
        return observe_sync(self._protect_sync(fn), observer)

    def _protect_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        bulkhead, lock, limit, waiters = self, self._lock, self._limit, self._waiters
        tick, acquire, release = self._calls.__next__, self.acquire, self.release

        def limited(*args: P.args, **kwargs: P.kwargs) -> R:
            with lock:
                taken = bulkhead._active < limit
                if taken:
                    bulkhead._active += 1
            if taken:
                tick()
            else:
                acquire()  # full: queue or reject
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    returned = not waiters
                    if returned:
                        bulkhead._active -= 1
                if not returned:
                    release()  # hand the slot to the oldest waiter

        return limited

    def wrap_async(
        self, fn: Callable[P, Awaitable[R]], observer: CallObserver | None = None
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        return observe_async(self._protect_async(fn), observer)

    def _protect_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        bulkhead, lock, limit, waiters = self, self._lock, self._limit, self._waiters
        tick, aacquire, release = self._calls.__next__, self.aacquire, self.release

        async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
            with lock:
                taken = bulkhead._active < limit
                if taken:
                    bulkhead._active += 1
            if taken:
                tick()
            else:
                await aacquire()
            try:
                return await fn(*args, **kwargs)
            finally:
                with lock:
                    returned = not waiters
                    if returned:
                        bulkhead._active -= 1
                if not returned:
                    release()

        return limited

    def __enter__(self) -> Bulkhead:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> Bulkhead:
        await self.aacquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return (
            f"Bulkhead(max_concurrent={self._limit}, max_queued={self._max_queued}, "
            f"max_wait={self._max_wait!r}, name={self.name!r})"
        )

"""The bulkhead's drivers, written once (see :mod:`resilience.bulkhead`).

Functions taking the bulkhead first; :class:`~resilience.bulkhead.Bulkhead`
binds them as its methods. A queued caller waits on a one-shot waiter from
:mod:`resilience._primitives`, which
the releasing caller grants from whatever thread it runs on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ParamSpec, TypeVar

from .._primitives import AsyncWaiter
from ..clock import safe_wait
from ..telemetry.otel import OTEL

if TYPE_CHECKING:
    # unasync: sync from collections.abc import Callable
    from collections.abc import Awaitable, Callable, Coroutine  # unasync: async only
    from types import TracebackType
    from typing import Any  # unasync: async only

    from ..bulkhead import Bulkhead

P = ParamSpec("P")
R = TypeVar("R")


async def aacquire(bulkhead: Bulkhead) -> None:
    """Take a slot, waiting in the queue if allowed; raise ``BulkheadFull`` if not."""
    with bulkhead._lock:
        if bulkhead._active < bulkhead._limit:
            bulkhead._active += 1
            next(bulkhead._calls)
            return
        waiter = AsyncWaiter() if bulkhead._max_queued else None
        queued, budget = bulkhead._enqueue(waiter)
    # Rejections are raised outside the lock: a telemetry subscriber may be slow,
    # or read the statistics (which take the lock).
    if not queued:
        raise bulkhead._reject("queue_full")
    assert waiter is not None
    try:
        woken = await waiter.wait(None if budget is None else safe_wait(budget))
    except BaseException:  # interrupted (cancelled, KeyboardInterrupt…) while queued
        if bulkhead._leave_queue(waiter):
            bulkhead.release()  # the slot arrived meanwhile: pass it on
        raise
    if not woken and not bulkhead._leave_queue(waiter):
        raise bulkhead._reject("wait_expired")
    next(bulkhead._calls)


def wrap_async(
    bulkhead: Bulkhead, fn: Callable[P, Awaitable[R]]
) -> Callable[P, Coroutine[Any, Any, R]]:
    """``fn`` holding a slot while it runs."""
    # The closure inlines the uncontended case of acquire/release (a slot free,
    # nobody queued): two short critical sections and no extra Python frames.
    lock, limit, waiters = bulkhead._lock, bulkhead._limit, bulkhead._waiters
    tick, aacquire, release = bulkhead._calls.__next__, bulkhead.aacquire, bulkhead.release

    async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
        with lock:
            taken = bulkhead._active < limit
            if taken:
                bulkhead._active += 1
        if taken:
            tick()
        else:
            await aacquire()  # full: queue or reject
        try:
            return await fn(*args, **kwargs)
        finally:
            with lock:
                returned = not waiters
                if returned:
                    bulkhead._active -= 1
            if not returned:
                release()  # hand the slot to the oldest waiter

    return limited


async def __aenter__(bulkhead: Bulkhead) -> Bulkhead:
    # The decorator's span, from before the slot is taken to after it is given back.
    opened = OTEL.on
    if opened:
        bulkhead.telemetry.open_block()
    try:
        await bulkhead.aacquire()
    except BaseException as error:
        if opened:
            bulkhead.telemetry.close_block(type(error), error, error.__traceback__)
        raise
    return bulkhead


async def __aexit__(
    bulkhead: Bulkhead,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> None:
    try:
        bulkhead.release()
    finally:
        if OTEL.on:
            bulkhead.telemetry.close_block(exc_type, exc, tb)

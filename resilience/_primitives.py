"""What really differs between the sync and the async drivers, paired by name.

Driver code is written once, in async form, in :mod:`resilience._async`;
``scripts/unasync.py`` generates :mod:`resilience._sync` from it by rewriting
each async name below into its sync partner (the script's ``SUBS`` table).
Everything else the two worlds share.

* ``AsyncWaiter`` / ``Waiter``: a queued task's / thread's one-shot wake-up,
  granted from any thread (a bulkhead hands its freed slot over with it).
* ``as_coroutine_function``: async only (a plain callable is already what sync
  code calls).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

__all__ = ["AsyncWaiter", "Waiter", "as_coroutine_function"]

P = ParamSpec("P")
R = TypeVar("R")


class Waiter:
    """A blocked thread's wake-up. ``queued`` is its owner's bookkeeping (changed
    under the owner's lock); ``granted`` says the wake-up was given."""

    __slots__ = ("_event", "granted", "queued")

    def __init__(self) -> None:
        self.granted = False
        self.queued = False
        self._event = threading.Event()

    def grant(self) -> bool:
        """Wake the thread; always taken (True): a thread cannot vanish while queued."""
        self.granted = True
        self._event.set()
        return True

    def wait(self, seconds: float | None) -> bool:
        """Block until granted (True) or until ``seconds`` have passed (False)."""
        return self._event.wait(seconds)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AsyncWaiter:
    """:class:`Waiter` for a task of the running event loop (granted from any thread)."""

    __slots__ = ("_future", "_loop", "granted", "queued")

    def __init__(self) -> None:
        self.granted = False
        self.queued = False
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[None] = self._loop.create_future()

    def grant(self) -> bool:
        """Wake the task; False if nobody will take it (the task gave up, its loop is closed)."""
        if self._future.cancelled():
            return False  # its task gave up; it is removing itself
        try:
            self._loop.call_soon_threadsafe(_wake, self._future)
        except RuntimeError:  # its event loop is closed: nobody is waiting any more
            return False
        self.granted = True
        return True

    async def wait(self, seconds: float | None) -> bool:
        """Await the grant (True) or ``seconds`` (False); cancellation propagates."""
        try:
            async with asyncio.timeout(seconds):
                await self._future
        except TimeoutError:
            return False
        return True


def as_coroutine_function(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """``fn`` as a coroutine function (it may return any awaitable)."""

    async def passthrough(*args: P.args, **kwargs: P.kwargs) -> R:
        return await fn(*args, **kwargs)

    return passthrough

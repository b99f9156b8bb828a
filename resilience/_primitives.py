"""What really differs between the sync and the async drivers, paired by name.

Driver code is written once, in async form, in :mod:`resilience._async`;
``scripts/unasync.py`` generates :mod:`resilience._sync` from it by rewriting
each async name below into its sync partner (the script's ``SUBS`` table).
Everything else the two worlds share.

* ``AsyncWaiter`` / ``Waiter``: a queued task's / thread's one-shot wake-up,
  granted from any thread (a bulkhead hands its freed slot over with it).
* ``as_coroutine_function``: async only (a plain callable is already what sync
  code calls).
* ``AsyncWorkerPool`` / ``WorkerPool``: a job queue worker's slots (tasks / threads).
* ``AsyncTicker`` / ``Ticker``: a background heartbeat (a task / a daemon thread).
* ``acall_handler`` / ``call_handler``: run a job's handler, sync or async, from
  either world (a plain function on a thread / a coroutine on its own loop).
* ``asleep_until_stopped`` / ``sleep_until_stopped``: a worker's idle wait.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

__all__ = [
    "AsyncTicker",
    "AsyncWaiter",
    "AsyncWorkerPool",
    "Ticker",
    "Waiter",
    "WorkerPool",
    "acall_handler",
    "as_coroutine_function",
    "asleep_until_stopped",
    "call_handler",
    "sleep_until_stopped",
]

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


# -- the job queue's workers: a pool of slots, a background ticker, handlers of either kind ----


class WorkerPool:
    """At most ``size`` jobs running at once, each on a thread of its own; with
    ``size`` 1, on the caller's thread (a handler may then use what that thread
    opened, such as a sqlite3 connection)."""

    def __init__(self, size: int) -> None:
        import concurrent.futures

        self._size = size
        self._running = 0
        self._idle = threading.Condition()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=size, thread_name_prefix="resilience-job"
        )

    def wait_free(self) -> int:
        """Block until a slot is free: how many are."""
        with self._idle:
            while self._running >= self._size:
                self._idle.wait()
            return self._size - self._running

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._size == 1:
            fn(*args)
            return
        with self._idle:
            self._running += 1
        try:
            self._executor.submit(self._run, fn, args)
        except BaseException:
            self._done()
            raise

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        finally:
            self._done()

    def _done(self) -> None:
        with self._idle:
            self._running -= 1
            self._idle.notify_all()

    def cancel(self) -> None:
        """Nothing to do: a thread cannot be stopped; its job runs to the end."""

    def join(self) -> None:
        """Wait for every submitted job."""
        with self._idle:
            while self._running:
                self._idle.wait()

    def close(self) -> None:
        self.join()
        self._executor.shutdown(wait=True)


class AsyncWorkerPool:
    """:class:`WorkerPool` for the running event loop: each job a task."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._tasks: set[asyncio.Task[Any]] = set()
        self._freed = asyncio.Event()

    async def wait_free(self) -> int:
        while len(self._tasks) >= self._size:
            self._freed.clear()
            await self._freed.wait()
        return self._size - len(self._tasks)

    def submit(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        task = asyncio.ensure_future(fn(*args))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._freed.set()

    def cancel(self) -> None:
        """Cancel every running job (each hands its job back to the queue)."""
        for task in self._tasks:
            task.cancel()

    async def join(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def aclose(self) -> None:
        """Wait for every job; if cancelled meanwhile, cancel them and wait for that."""
        try:
            await self.join()
        except BaseException:
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            raise


class Ticker:
    """Calls ``tick()`` every ``interval`` seconds on a daemon thread until closed."""

    def __init__(self, tick: Callable[[], Any], interval: float) -> None:
        self._tick = tick
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="resilience-ticker", daemon=True)

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval):
            self._tick()


class AsyncTicker:
    """:class:`Ticker` as a task of the running event loop (``tick`` a coroutine function)."""

    def __init__(self, tick: Callable[[], Awaitable[Any]], interval: float) -> None:
        self._tick = tick
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncTicker:
        self._task = asyncio.ensure_future(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._tick()


def call_handler(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Run a job's handler from a worker thread; a coroutine function gets an event loop."""
    if inspect.iscoroutinefunction(fn):
        return asyncio.run(fn(**kwargs))
    return fn(**kwargs)


async def acall_handler(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Run a job's handler from a task; a plain function on a thread, keeping the task free."""
    if inspect.iscoroutinefunction(fn):
        return await fn(**kwargs)
    return await asyncio.to_thread(fn, **kwargs)  # in a copy of this context: current() works


def sleep_until_stopped(stop: Any, seconds: float) -> bool:
    """Sleep up to ``seconds``, less if ``stop`` (an event) is set: whether it is."""
    if stop is None:
        time.sleep(seconds)
        return False
    return bool(stop.wait(seconds))


async def asleep_until_stopped(stop: Any, seconds: float) -> bool:
    """:func:`sleep_until_stopped` for a task: ``stop`` an ``asyncio.Event`` or a
    ``threading.Event`` (polled)."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    if isinstance(stop, asyncio.Event):
        try:
            async with asyncio.timeout(seconds):
                await stop.wait()
        except TimeoutError:
            return False
        return True
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(left, 0.05))
    return True

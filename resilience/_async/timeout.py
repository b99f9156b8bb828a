"""The timeout's cooperative driver, written once (see :mod:`resilience.timeout`).

The deadline flows inward through :data:`resilience._deadline.DEADLINE` in both
worlds. In async code the event loop's timer also cancels the call at the
deadline (``asyncio.timeout``); sync code cannot be interrupted, so there the
deadline is cooperative (the thread mode, sync only, stays in the facade).
Either way a call that ends after the deadline raises ``TimeoutExceeded``.
"""

from __future__ import annotations

import asyncio  # unasync: async only
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from .._deadline import DEADLINE, tighter
from ..clock import safe_wait  # unasync: async only
from ..errors import TimeoutExceeded

if TYPE_CHECKING:
    # unasync: sync from collections.abc import Callable
    from collections.abc import Awaitable, Callable, Coroutine  # unasync: async only
    from typing import Any  # unasync: async only

    from .._deadline import RawDeadline
    from ..timeout import Timeout

P = ParamSpec("P")
R = TypeVar("R")


def wrap_async(
    timeout: Timeout, fn: Callable[P, Awaitable[R]]
) -> Callable[P, Coroutine[Any, Any, R]]:
    """``fn`` bounded by the timeout's ``seconds`` (and any enclosing deadline)."""
    seconds, clock, name = timeout._seconds, timeout._clock, timeout.name
    tick, expired, passed_through = (
        timeout._calls.__next__,
        timeout._expired,
        timeout._passed_through,
    )
    now, get = clock.now, DEADLINE.get

    async def timed(*args: P.args, **kwargs: P.kwargs) -> R:
        tick()
        start = now()
        # No enclosing deadline is the common case: build ours inline.
        if get() is None:
            deadline: RawDeadline = (start + seconds, clock, name, seconds)
        else:
            deadline = tighter(start, seconds, clock, name)
        token = DEADLINE.set(deadline)
        try:
            # The loop's timer cancels the call (sync code: nothing can)  # unasync: async only
            budget = safe_wait(deadline[0] - start)  # unasync: async only
            async with asyncio.timeout(budget) as scope:  # unasync: async only
                result = await fn(*args, **kwargs)  # unasync: async only
            # unasync: sync result = fn(*args, **kwargs)
        except TimeoutExceeded:
            passed_through(deadline)
            raise
        except Exception as exc:
            # The clock decides too: a virtual clock (FakeClock) behaves the same.
            if now() > deadline[0]:
                raise expired(deadline[3], exc) from exc
            if isinstance(exc, TimeoutError) and scope.expired():  # unasync: async only
                raise expired(deadline[3], exc) from exc  # unasync: async only
            raise
        finally:
            DEADLINE.reset(token)
        if now() > deadline[0]:
            raise expired(deadline[3])
        return result

    return timed

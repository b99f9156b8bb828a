"""The deadline that flows inward from a :class:`~resilience.Timeout`.

A ``Timeout`` puts the absolute deadline of the call it protects, on its own
clock, in a context variable; everything called inside it (a retry deciding
whether to sleep, a bulkhead queue, the user's own code) reads the time left
with :func:`remaining_time`. Context variables follow asyncio tasks and threads
started with a copied context, so the budget flows into both.

Nested timeouts keep the tighter deadline. Policies read the deadline only on
their slow paths (after a failure, before waiting), never on success.
"""

from __future__ import annotations

import contextvars
import math
from typing import NamedTuple

from .clock import Clock
from .errors import TimeoutExceeded

__all__ = [
    "DEADLINE",
    "Deadline",
    "RawDeadline",
    "check_deadline",
    "current_deadline",
    "remaining_time",
    "tighter",
    "wait_budget",
]


class Deadline(NamedTuple):
    """An absolute point in time on ``clock``, set by the timeout ``name`` of ``seconds``."""

    at: float
    clock: Clock
    name: str
    seconds: float

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - self.clock.now()


# A Timeout builds one per call, so the variable holds a plain tuple shaped like
# Deadline: a tuple display costs a fraction of a NamedTuple's constructor.
RawDeadline = tuple[float, Clock, str, float]

DEADLINE: contextvars.ContextVar[RawDeadline | None] = contextvars.ContextVar(
    "resilience_deadline", default=None
)


def current_deadline() -> Deadline | None:
    """The innermost deadline in effect, or ``None`` outside any ``Timeout``."""
    raw = DEADLINE.get()
    return None if raw is None else Deadline(*raw)


def remaining_time() -> float | None:
    """Seconds left before the enclosing ``Timeout`` expires (``<= 0`` once it has),
    or ``None`` when no ``Timeout`` encloses the caller.

    Pass it on as the timeout of blocking calls (sockets, HTTP clients, locks) so
    that sync code honours a cooperative ``Timeout``.
    """
    deadline = DEADLINE.get()
    return None if deadline is None else deadline[0] - deadline[1].now()


def check_deadline() -> None:
    """Raise :class:`~resilience.TimeoutExceeded` if the enclosing deadline has passed.

    A cancellation point for long-running sync code under a cooperative ``Timeout``.
    """
    deadline = DEADLINE.get()
    if deadline is not None and deadline[1].now() >= deadline[0]:
        raise TimeoutExceeded(deadline[2], deadline[3])


def tighter(now: float, seconds: float, clock: Clock, name: str) -> RawDeadline:
    """The deadline ``seconds`` after ``now``, or the enclosing one if that comes first."""
    outer = DEADLINE.get()
    if outer is not None:
        # Re-express the outer deadline on this clock: the two may differ.
        outer_at = now + (outer[0] - outer[1].now())
        if outer_at < now + seconds:
            return (outer_at, clock, outer[2], outer[3])
    return (now + seconds, clock, name, seconds)


def wait_budget(max_wait: float | None) -> float | None:
    """How long a policy may block waiting: ``max_wait`` (``None``: no limit) bounded
    by the enclosing deadline. ``0.0`` means do not wait at all."""
    if max_wait is not None and math.isinf(max_wait):
        max_wait = None
    left = remaining_time()
    if left is None:
        return max_wait
    left = max(0.0, left)
    return left if max_wait is None else min(left, max_wait)

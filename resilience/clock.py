"""Time as an injectable interface.

Every policy reads monotonic time and sleeps through a ``Clock`` so that tests can
swap in :class:`resilience.testing.FakeClock` and assert exact delays without
waiting (the idea is trio's clock-as-an-interface).

Every wait has a ceiling
------------------------
No duration the library accepts is longer than :data:`MAX_DURATION` (10^9 s,
about 31.7 years): option models refuse a longer finite one, and per-call
durations (a timeout, a server's ``Retry-After``, a pause) are clamped to it.
Below that, :func:`safe_wait` makes whatever is about to reach a real primitive
(``time.sleep``, ``Event.wait``, ``Condition.wait``, ``asyncio.sleep``,
``asyncio.timeout``) safe for it: NaN and negative values become 0, anything
longer than :data:`WAIT_CEILING` (``MAX_DURATION``, or the platform's
``threading.TIMEOUT_MAX`` if smaller: 49.7 days on Windows) becomes
``WAIT_CEILING``. A real wait therefore never raises ``OverflowError`` or
``ValueError``, whatever arithmetic produced it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["MAX_DURATION", "SYSTEM_CLOCK", "WAIT_CEILING", "Clock", "SystemClock", "safe_wait"]

MAX_DURATION = 1_000_000_000.0
"""The longest duration, in seconds, the library accepts or waits (about 31.7 years)."""

WAIT_CEILING = min(MAX_DURATION, threading.TIMEOUT_MAX)
"""The longest single wait handed to a real primitive (see :func:`safe_wait`)."""


def safe_wait(seconds: float) -> float:
    """``seconds`` as a wait every real primitive accepts: in ``[0, WAIT_CEILING]``.

    NaN and negative values become ``0.0``; ``inf`` and anything longer than
    :data:`WAIT_CEILING` become ``WAIT_CEILING``.
    """
    if seconds > 0.0:  # False for NaN
        return seconds if seconds <= WAIT_CEILING else WAIT_CEILING
    return 0.0


@runtime_checkable
class Clock(Protocol):
    """Monotonic time in seconds, and the two ways of waiting for it to pass."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    async def asleep(self, seconds: float) -> None: ...


def _sleep(seconds: float) -> None:
    time.sleep(safe_wait(seconds))


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.sleep`` and ``asyncio.sleep``.

    Sleeps go through :func:`safe_wait`: never longer than :data:`WAIT_CEILING`,
    and a NaN or negative sleep returns at once.
    """

    __slots__ = ()

    # Bound as a plain attribute so a call costs no extra Python frame.
    now = staticmethod(time.monotonic)
    sleep = staticmethod(_sleep)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(safe_wait(seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()

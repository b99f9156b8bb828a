"""A virtual clock for tests (after trio's ``MockClock``)."""

from __future__ import annotations

import asyncio
import datetime
import math
import threading

__all__ = ["FakeClock"]


class FakeClock:
    """Monotonic time that only moves when told to, or when something sleeps on it.

    ``sleep``/``asleep`` advance the time by the requested amount at once and
    append it to :attr:`sleeps`; ``asleep`` still yields to the event loop once,
    so other tasks get their turn as they would with a real sleep.
    Safe to share between threads.
    """

    __slots__ = ("_lock", "_now", "sleeps")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float | datetime.timedelta) -> None:
        """Move time forward by ``seconds`` (a number or a ``timedelta``)."""
        if isinstance(seconds, datetime.timedelta):
            seconds = seconds.total_seconds()
        if math.isnan(seconds) or seconds < 0:
            raise ValueError(f"seconds: cannot move a clock back or by NaN, got {seconds!r}")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)

    @property
    def slept(self) -> float:
        """Total virtual time spent sleeping."""
        return math.fsum(self.sleeps)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r}, sleeps={len(self.sleeps)})"

"""Process-wide switch read by policies on their failure path only.

It lives apart from :mod:`resilience.testing` so that the policies do not
import the testing helpers (or pytest) at run time.
"""

from __future__ import annotations

import threading

__all__ = ["TESTING_MODE"]


class _TestingMode:
    """When ``active``, retries do not sleep and attempts are capped."""

    __slots__ = ("_depth", "_lock", "active", "max_attempts")

    def __init__(self) -> None:
        self.active = False
        self.max_attempts: int | None = None
        self._lock = threading.Lock()
        self._depth: list[tuple[bool, int | None]] = []

    def push(self, max_attempts: int | None) -> None:
        with self._lock:
            self._depth.append((self.active, self.max_attempts))
            self.active = True
            self.max_attempts = max_attempts

    def pop(self) -> None:
        with self._lock:
            self.active, self.max_attempts = self._depth.pop()

    def cap(self, attempts: int) -> int:
        """The attempt limit to use in place of ``attempts``."""
        if self.active and self.max_attempts is not None:
            return min(attempts, self.max_attempts)
        return attempts


TESTING_MODE = _TestingMode()

"""Helpers for testing code that uses resilience, deterministically.

* :class:`FakeClock`: virtual monotonic time; sleeping on it advances the time
  at once and records the sleep, so a test asserts exact delays without waiting.
* :func:`testing_mode`: a context manager (and the ``resilience_testing`` pytest
  fixture) under which retries never really sleep and attempts can be capped,
  for users' own test suites.
"""

from __future__ import annotations

from ._fake_clock import FakeClock
from ._mode import testing_mode

__all__ = ["FakeClock", "testing_mode"]

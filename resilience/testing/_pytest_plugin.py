"""pytest plugin (registered through the ``pytest11`` entry point).

Provides the ``resilience_testing`` fixture: the test runs in testing mode, so
retries do not sleep. Use ``resilience_testing.cap(n)`` to also cap attempts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .._testing_mode import TESTING_MODE


class ResilienceTesting:
    """Handle given by the ``resilience_testing`` fixture."""

    def cap(self, attempts: int | None) -> None:
        """Cap every retry at ``attempts`` attempts for the rest of the test."""
        if attempts is not None and attempts < 1:
            raise ValueError(f"attempts: must be >= 1, got {attempts!r}")
        TESTING_MODE.max_attempts = attempts


@pytest.fixture
def resilience_testing() -> Iterator[ResilienceTesting]:
    """Run the test with retries that never sleep (see ``resilience.testing``)."""
    TESTING_MODE.push(None)
    try:
        yield ResilienceTesting()
    finally:
        TESTING_MODE.pop()

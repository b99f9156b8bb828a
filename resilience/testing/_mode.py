"""Testing mode for users' own test suites (in the manner of stamina's)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .._testing_mode import TESTING_MODE

__all__ = ["testing_mode"]


@contextmanager
def testing_mode(*, attempts: int | None = None) -> Iterator[None]:  # noqa: PT028
    """Within this block, retries never really sleep, and make at most ``attempts``
    attempts when given. Process-wide (it is meant for test suites); nests.
    """
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts: must be >= 1, got {attempts!r}")
    TESTING_MODE.push(attempts)
    try:
        yield
    finally:
        TESTING_MODE.pop()


# The name starts with 'test': keep pytest from collecting it where users import it.
testing_mode.__test__ = False  # type: ignore[attr-defined]

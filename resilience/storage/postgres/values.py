"""The values a :class:`~resilience.storage.postgres.PostgresStore` writes into its rows:
which policy names a row can hold, free text made storable, break durations bounded.
"""

from __future__ import annotations

import math

from ..._core.breaker import MAX_BREAK

__all__ = ["MAX_NAME_BYTES", "held_break", "name_problem", "storable_text"]

#: The longest policy name (UTF-8 bytes) a row can hold: with the longest
#: encoded key, well inside a B-tree index entry (2704 bytes).
MAX_NAME_BYTES = 2000


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a row's name, or None."""
    if not isinstance(name, str):
        return f"must be a str, got {type(name).__name__}"
    if "\x00" in name:
        return "contains a NUL character, which PostgreSQL text cannot hold"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode (it contains a lone surrogate)"
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long in UTF-8; at most {MAX_NAME_BYTES} fit"
    return None


def storable_text(value: str) -> str:
    """Free text (a transition's reason) as something a text column can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value.replace("\x00", "\ufffd")


def held_break(duration: float) -> float:
    """A break duration to store: one that is not a finite number holds the longest break."""
    if math.isnan(duration) or math.isinf(duration):
        return MAX_BREAK
    return max(0.0, duration)

"""Exceptions raised by the library.

Everything the library raises on its own derives from :class:`ResilienceError`.
Invalid configuration raises :class:`ConfigurationError`, which is also a
``ValueError`` and names the offending fields. Exceptions raised by the
protected code are never wrapped: they propagate unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ResilienceError",
    "ConfigurationError",
    "CircuitOpenError",
    "RateLimitExceeded",
    "BulkheadFull",
    "TimeoutExceeded",
    "StoreUnavailable",
]


class ResilienceError(Exception):
    """Base class of every exception the library raises itself."""


class ConfigurationError(ResilienceError, ValueError):
    """A policy was given invalid options.

    ``fields`` holds the dotted names of the offending fields, ``errors`` the
    individual messages (``"field: message"``).
    """

    def __init__(self, owner: str, errors: Sequence[tuple[str, str]]) -> None:
        self.owner = owner
        self.fields = tuple(field for field, _ in errors)
        self.errors = tuple(f"{field}: {message}" for field, message in errors)
        lines = "\n".join(f"  {line}" for line in self.errors)
        super().__init__(f"invalid {owner} configuration:\n{lines}")


class _RejectedError(ResilienceError):
    """A call refused before it ran; ``retry_after`` says when to try again."""

    def __init__(self, message: str, *, name: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.name = name
        self.retry_after = retry_after


class CircuitOpenError(_RejectedError):
    """A circuit breaker is open (or forced open) and rejected the call."""

    def __init__(
        self,
        name: str,
        retry_after: float | None = None,
        *,
        opened_by: BaseException | None = None,
    ) -> None:
        when = "" if retry_after is None else f"; retry after {retry_after:.3f}s"
        super().__init__(f"circuit {name!r} is open{when}", name=name, retry_after=retry_after)
        self.opened_by = opened_by
        """The last failure this breaker recorded before the circuit opened
        (``None`` when it recorded none: another process opened the circuit, or
        it was isolated by hand); also this error's ``__cause__``, so the root
        cause survives a retry that gives up on the rejection."""
        if opened_by is not None:
            self.__cause__ = opened_by


class RateLimitExceeded(_RejectedError):
    """A rate limiter had no tokens for the call within its allowed wait.

    ``key`` is the caller's raw key; the message (and so ``str()``, ``repr()``,
    logs and spans) shows only its ``key_label`` (``key#3f2a9c1e07d4``), unless
    ``resilience.telemetry.configure(show_keys=True)`` asked to show keys.
    """

    def __init__(
        self, name: str, retry_after: float | None = None, *, key: str | None = None
    ) -> None:
        from .telemetry.redaction import describe_key, key_label

        where = "" if key is None else f" for {describe_key(key)}"
        when = "" if retry_after is None else f"; retry after {retry_after:.3f}s"
        super().__init__(
            f"rate limit {name!r} exceeded{where}{when}", name=name, retry_after=retry_after
        )
        self.key = key
        self.key_label = None if key is None else key_label(key)


class BulkheadFull(_RejectedError):
    """A bulkhead had no free slot (and no queue space, or the wait expired)."""

    def __init__(self, name: str, retry_after: float | None = None) -> None:
        super().__init__(f"bulkhead {name!r} is full", name=name, retry_after=retry_after)


class TimeoutExceeded(ResilienceError, TimeoutError):
    """A :class:`~resilience.Timeout` expired before the operation finished."""

    def __init__(self, name: str, seconds: float) -> None:
        super().__init__(f"operation {name!r} timed out after {seconds:.3f}s")
        self.name = name
        self.seconds = seconds


class StoreUnavailable(ResilienceError):
    """A storage backend could not be reached or did not answer in time."""

    def __init__(self, store: str, reason: str) -> None:
        super().__init__(f"store {store} unavailable: {reason}")
        self.store = store
        self.reason = reason

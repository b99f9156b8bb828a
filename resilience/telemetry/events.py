"""The events every policy emits: small, frozen, cheap to build.

Policies emit events only on their failure and rejection paths, and only while
somebody listens, so a healthy call pays nothing for them. Adapters (logging,
OpenTelemetry) and users subscribe through :func:`resilience.telemetry.subscribe`.
Each event names the policy (``policy``) and, as class attributes, its own
dotted ``name`` and the logging ``level`` at which the logging adapter reports
it: a healthy service stays quiet (retries at INFO), trouble is a WARNING.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

from .redaction import key_label

__all__ = [
    "AttemptStarted",
    "BulkheadRejected",
    "CallRejected",
    "CircuitStateChanged",
    "Event",
    "FallbackUsed",
    "GaveUp",
    "RateLimitRejected",
    "RateLimitWaited",
    "RetryScheduled",
    "TimeoutExpired",
    "error_type_name",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event: which policy emitted it."""

    policy: str
    name: ClassVar[str] = "event"
    level: ClassVar[int] = logging.DEBUG

    def message(self) -> str:
        """A one-line human summary (the log message)."""
        return f"{self.name} [{self.policy}]"


def error_type_name(exception: BaseException | None) -> str | None:
    """The exception's type as OpenTelemetry's ``error.type`` wants it: fully
    qualified, except for builtins."""
    if exception is None:
        return None
    cls = type(exception)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True, slots=True)
class AttemptStarted(Event):
    """A retry is about to run attempt number ``attempt`` (2 and up)."""

    attempt: int
    name: ClassVar[str] = "retry.attempt_started"
    level: ClassVar[int] = logging.DEBUG

    def message(self) -> str:
        return f"retry {self.policy!r}: attempt {self.attempt}"


@dataclass(frozen=True, slots=True)
class RetryScheduled(Event):
    """Attempt ``attempt`` failed; the next one follows in ``delay`` seconds."""

    attempt: int
    delay: float
    error_class: str | None
    exception: BaseException | None
    name: ClassVar[str] = "retry.scheduled"
    level: ClassVar[int] = logging.INFO

    @property
    def error_type(self) -> str | None:
        return error_type_name(self.exception)

    def message(self) -> str:
        cause = self.error_type or "a rejected result"
        return (
            f"retry {self.policy!r}: attempt {self.attempt} failed with {cause}"
            f" ({self.error_class}); retrying in {self.delay:.3f}s"
        )


@dataclass(frozen=True, slots=True)
class GaveUp(Event):
    """A retry gave up after ``attempts`` attempts over ``elapsed`` seconds."""

    attempts: int
    elapsed: float
    reason: str
    error_class: str | None
    exception: BaseException | None
    name: ClassVar[str] = "retry.gave_up"
    level: ClassVar[int] = logging.WARNING

    @property
    def error_type(self) -> str | None:
        return error_type_name(self.exception)

    def message(self) -> str:
        cause = self.error_type or "a rejected result"
        return (
            f"retry {self.policy!r}: gave up after {self.attempts} attempt(s) over "
            f"{self.elapsed:.3f}s ({self.reason}); last failure {cause}"
        )


@dataclass(frozen=True, slots=True)
class CircuitStateChanged(Event):
    """A circuit breaker moved from ``old_state`` to ``new_state``."""

    old_state: str
    new_state: str
    reason: str
    name: ClassVar[str] = "circuit_breaker.state_changed"

    @property
    def level(self) -> int:  # type: ignore[override]
        """WARNING when the circuit opens (calls are being rejected), INFO otherwise."""
        return logging.WARNING if self.new_state in ("open", "forced_open") else logging.INFO

    def message(self) -> str:
        return f"circuit {self.policy!r}: {self.old_state} -> {self.new_state} ({self.reason})"


@dataclass(frozen=True, slots=True)
class CallRejected(Event):
    """An open circuit rejected a call; it may be tried after ``retry_after`` seconds."""

    state: str
    retry_after: float | None
    name: ClassVar[str] = "circuit_breaker.rejected"
    level: ClassVar[int] = logging.DEBUG


@dataclass(frozen=True, slots=True)
class RateLimitWaited(Event):
    """A rate limiter made a caller wait ``wait`` seconds for tokens."""

    wait: float
    key: str | None = field(default=None, repr=False)
    """The raw key, for in-process subscribers; adapters write :attr:`key_label`."""
    name: ClassVar[str] = "rate_limiter.waited"
    level: ClassVar[int] = logging.DEBUG

    @property
    def key_label(self) -> str | None:
        """The key as telemetry shows it (see :func:`~resilience.telemetry.key_label`)."""
        return None if self.key is None else key_label(self.key)


@dataclass(frozen=True, slots=True)
class RateLimitRejected(Event):
    """A rate limiter refused a caller; tokens are back after ``retry_after`` seconds."""

    retry_after: float | None
    key: str | None = field(default=None, repr=False)
    """The raw key, for in-process subscribers; adapters write :attr:`key_label`."""
    name: ClassVar[str] = "rate_limiter.rejected"
    level: ClassVar[int] = logging.INFO

    @property
    def key_label(self) -> str | None:
        """The key as telemetry shows it (see :func:`~resilience.telemetry.key_label`)."""
        return None if self.key is None else key_label(self.key)


@dataclass(frozen=True, slots=True)
class BulkheadRejected(Event):
    """A bulkhead had no room (``reason``: ``"queue_full"`` or ``"wait_expired"``)."""

    reason: str
    name: ClassVar[str] = "bulkhead.rejected"
    level: ClassVar[int] = logging.INFO


@dataclass(frozen=True, slots=True)
class TimeoutExpired(Event):
    """An operation ran past its ``seconds`` timeout."""

    seconds: float
    name: ClassVar[str] = "timeout.expired"
    level: ClassVar[int] = logging.INFO


@dataclass(frozen=True, slots=True)
class FallbackUsed(Event):
    """A fallback answered in place of the operation (``stale``: a cached result)."""

    error_class: str | None
    exception: BaseException | None
    stale: bool = False
    name: ClassVar[str] = "fallback.used"
    level: ClassVar[int] = logging.INFO

    @property
    def error_type(self) -> str | None:
        return error_type_name(self.exception)

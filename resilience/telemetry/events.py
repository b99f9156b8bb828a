"""The events every policy emits: small, frozen, cheap to build.

Policies emit events only on their failure and rejection paths, and only while
some subscriber wants them (:meth:`Telemetry.wants
<resilience.telemetry.Telemetry.wants>`), so a healthy call pays nothing for
them, and an unobserved failure only a cheap test. Adapters (logging,
OpenTelemetry) and users subscribe through :func:`resilience.telemetry.subscribe`.
Each event names the policy (``policy``) and, as class attributes, its own
dotted ``name``, the ``logger`` and the ``level`` at which the logging adapter
reports it: a healthy service stays quiet (retries at INFO), trouble is a
WARNING. No event is logged above WARNING (:data:`LOUDEST_LEVEL`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

from .redaction import describe_key, key_label

__all__ = [
    "AttemptStarted",
    "BulkheadRejected",
    "CallRejected",
    "CircuitStateChanged",
    "Event",
    "FallbackUsed",
    "GaveUp",
    "JobEnqueued",
    "JobSettled",
    "RateLimitRejected",
    "RateLimitWaited",
    "RetryScheduled",
    "StoreOutage",
    "StoreRecovered",
    "TimeoutExpired",
    "TimeoutThreadAbandoned",
    "error_type_name",
    "event_types",
]

LOUDEST_LEVEL = logging.WARNING
"""The most severe level any event is logged at."""


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event: which policy emitted it."""

    policy: str
    name: ClassVar[str] = "event"
    level: ClassVar[int] = logging.DEBUG
    """The level the logging adapter writes the event at."""
    quietest_level: ClassVar[int] = logging.DEBUG
    """The least severe level an event of this type is logged at: its ``level``,
    unless that depends on the event (then the class sets this one itself)."""
    logger: ClassVar[str] = "resilience"
    """The logger the logging adapter writes the event to."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        # Not super(): slots=True makes the class anew, which breaks its __class__ cell.
        object.__init_subclass__(**kwargs)
        level = cls.__dict__.get("level")
        if isinstance(level, int):
            cls.quietest_level = level

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


def _retry_after(seconds: float | None) -> str:
    return "" if seconds is None else f"; retry after {seconds:.3f}s"


def _for_key(key: object) -> str:
    # A key appears as its label unless keys are shown: never raw by default.
    return "" if key is None else f" for {describe_key(key)}"


def event_types() -> list[type[Event]]:
    """Every event class this module defines (the base ``Event`` aside)."""
    module = globals()
    return [
        cls
        for cls in (module[name] for name in __all__)
        if isinstance(cls, type) and issubclass(cls, Event) and cls is not Event
    ]


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
    quietest_level: ClassVar[int] = logging.INFO

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

    def message(self) -> str:
        after = _retry_after(self.retry_after)
        return f"circuit {self.policy!r}: {self.state}, call rejected{after}"


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

    def message(self) -> str:
        return f"rate limiter {self.policy!r}: waited {self.wait:.3f}s{_for_key(self.key)}"


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

    def message(self) -> str:
        return (
            f"rate limiter {self.policy!r}: refused{_for_key(self.key)}"
            f"{_retry_after(self.retry_after)}"
        )


@dataclass(frozen=True, slots=True)
class BulkheadRejected(Event):
    """A bulkhead had no room (``reason``: ``"queue_full"`` or ``"wait_expired"``)."""

    reason: str
    name: ClassVar[str] = "bulkhead.rejected"
    level: ClassVar[int] = logging.INFO

    def message(self) -> str:
        return f"bulkhead {self.policy!r}: call rejected ({self.reason})"


@dataclass(frozen=True, slots=True)
class TimeoutExpired(Event):
    """An operation ran past its ``seconds`` timeout."""

    seconds: float
    name: ClassVar[str] = "timeout.expired"
    level: ClassVar[int] = logging.INFO

    def message(self) -> str:
        return f"timeout {self.policy!r}: the call ran past {self.seconds:.3f}s"


@dataclass(frozen=True, slots=True)
class TimeoutThreadAbandoned(Event):
    """A thread-mode timeout stopped waiting for ``thread``, which keeps running."""

    seconds: float
    thread: str
    name: ClassVar[str] = "timeout.thread_abandoned"
    level: ClassVar[int] = logging.WARNING
    logger: ClassVar[str] = "resilience.timeout"

    def message(self) -> str:
        return (
            f"timeout {self.policy!r}: stopped waiting after {self.seconds:.3f}s; the call "
            f"keeps running in thread {self.thread!r} and its result will be dropped"
        )


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

    def message(self) -> str:
        cause = self.error_type or "a rejected result"
        answer = "a cached result" if self.stale else "the fallback"
        return f"fallback {self.policy!r}: {cause} ({self.error_class}) answered by {answer}"


@dataclass(frozen=True, slots=True)
class JobEnqueued(Event):
    """A job was added to the queue ``policy`` (``created`` False: its idempotency
    key was held already, and ``job_id`` is the holder's)."""

    handler: str
    job_id: int
    created: bool
    name: ClassVar[str] = "job.enqueued"

    def message(self) -> str:
        if not self.created:
            return f"queue {self.policy!r}: job {self.job_id} ({self.handler}) already enqueued"
        return f"queue {self.policy!r}: job {self.job_id} ({self.handler}) enqueued"


_JOB_LEVELS = {"dead": logging.WARNING, "lost": logging.WARNING, "retry": logging.INFO}


@dataclass(frozen=True, slots=True)
class JobSettled(Event):
    """An attempt of a job ended: ``outcome`` is ``"done"``, ``"retry"`` (pending
    again in ``delay`` seconds), ``"dead"`` (dead-lettered: ``reason``),
    ``"deferred"`` (a gate refused it; the attempt was given back) or ``"lost"``
    (its lease lapsed before it could be settled: it will run again)."""

    handler: str
    job_id: int
    attempt: int
    outcome: str
    error_class: str | None = None
    exception: BaseException | None = None
    delay: float | None = None
    reason: str | None = None
    name: ClassVar[str] = "job.settled"
    quietest_level: ClassVar[int] = logging.DEBUG

    @property
    def level(self) -> int:  # type: ignore[override]
        return _JOB_LEVELS.get(self.outcome, logging.DEBUG)

    @property
    def error_type(self) -> str | None:
        return error_type_name(self.exception)

    def message(self) -> str:
        head = f"queue {self.policy!r}: job {self.job_id} ({self.handler}) attempt {self.attempt}"
        cause = f" after {self.error_type} ({self.error_class})" if self.exception else ""
        if self.outcome == "done":
            return f"{head} done"
        if self.outcome == "retry":
            return f"{head} failed{cause}; next attempt in {self.delay or 0.0:.3f}s"
        if self.outcome == "dead":
            return f"{head} failed{cause}; dead-lettered ({self.reason})"
        if self.outcome == "deferred":
            return f"{head} deferred {self.delay or 0.0:.3f}s by its gate; attempt given back"
        return f"{head}: lease lost before it was settled; it will run again"


# What a policy does while its store is down, by ``on_store_failure`` mode.
_STORE_FAILURE_ACTIONS = {
    "fail_closed": "refusing calls that need it",
    "fail_open": "letting calls through",
    "local": "falling back to in-process state",
}


@dataclass(frozen=True, slots=True)
class StoreOutage(Event):
    """The policy's shared ``store`` failed (the first failure of an outage);
    ``mode`` (``on_store_failure``) says what the policy does until it recovers."""

    store: str
    reason: str
    mode: str
    owner: str = ""
    """The policy as messages name it (``RateLimiter 'api'``); ``policy`` if empty."""
    name: ClassVar[str] = "store.unavailable"
    level: ClassVar[int] = logging.WARNING
    logger: ClassVar[str] = "resilience.storage"

    def message(self) -> str:
        action = _STORE_FAILURE_ACTIONS.get(self.mode, self.mode)
        return (
            f"{self.owner or self.policy}: store {self.store} unavailable ({self.reason}); "
            f"{action} until it recovers"
        )


@dataclass(frozen=True, slots=True)
class StoreRecovered(Event):
    """The policy's shared ``store`` answered again, ``downtime`` seconds after
    the outage began (on the policy's clock)."""

    store: str
    downtime: float
    owner: str = ""
    """The policy as messages name it (``RateLimiter 'api'``); ``policy`` if empty."""
    name: ClassVar[str] = "store.recovered"
    level: ClassVar[int] = logging.INFO
    logger: ClassVar[str] = "resilience.storage"

    def message(self) -> str:
        return (
            f"{self.owner or self.policy}: store {self.store} available again after "
            f"{self.downtime:.3f}s"
        )

"""The values a retry hands out: what hooks are told, what ``decide`` answers, counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._core.retry import GiveUpReason
from .classify import ErrorClass

__all__ = ["SUCCESS", "RetryDecision", "RetryInfo", "RetryStatistics"]


@dataclass(frozen=True, slots=True)
class RetryInfo:
    """What a hook is told about a failed attempt (``on_retry``) or a give-up."""

    name: str
    attempt: int
    """Number of the attempt that just failed (1-based)."""
    delay: float | None
    """Seconds until the next attempt; ``None`` when giving up."""
    exception: BaseException | None
    result: Any
    error_class: ErrorClass | None
    elapsed: float
    reason: GiveUpReason | None = None


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What :meth:`Retry.decide` says after an attempt: retry (after ``delay``) or not."""

    retry: bool
    """Whether to make another attempt."""
    delay: float | None
    """Seconds to wait before it when retrying; ``None`` otherwise."""
    error_class: ErrorClass | None
    """The failure's class; ``None`` for a result (judged bad, or a success)."""
    reason: GiveUpReason | None
    """Why a failure is not retried; ``None`` when retrying, and on success."""


SUCCESS = RetryDecision(retry=False, delay=None, error_class=None, reason=None)


@dataclass(frozen=True, slots=True)
class RetryStatistics:
    """Counts kept by one :class:`Retry` object over all its calls.

    A call is counted once its first attempt has ended.
    """

    calls: int
    attempts: int
    retries: int
    successes: int
    give_ups: int

"""Retry's decision: after a failed attempt, wait how long, or give up and why.

Pure: it reads no clock, no context variable, calls no hook and emits no event.
Its callers measure what it needs and report what it decides:
:meth:`resilience.Retry.decide` (for job queues, across processes) and the
in-process loops of ``resilience._async.retry`` (and the generated
``resilience._sync.retry``), which also pass the time an enclosing ``Timeout``
leaves. Both go through :meth:`resilience.Retry._judge`, so they agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from random import Random
from typing import TYPE_CHECKING, Any, Literal

from ..clock import MAX_DURATION
from .backoff import DelayRule

if TYPE_CHECKING:
    from ..classify import ErrorClass

__all__ = [
    "DEFAULT_RETRY_AFTER_CEILING",
    "NO_RESULT",
    "GiveUpReason",
    "RetryRules",
    "Waiting",
    "delay_ceiling",
    "hint_ceiling",
]

GiveUpReason = Literal["not_retryable", "attempts", "deadline"]

DEFAULT_RETRY_AFTER_CEILING = 300.0
"""The longest wait a server's ``Retry-After`` (or a rejection's ``retry_after``)
may ask for when neither ``max_delay`` nor the backoff sets a ceiling: constant,
schedule and uncapped linear backoffs. A longer hint is capped to it (see
docs/retry.md, "Deadline and Retry-After")."""

NO_RESULT: Any = object()
"""The result of an attempt that returned nothing to judge (it raised, or a
block-form attempt never called ``set_result``)."""


def delay_ceiling(max_delay: float | None) -> float:
    """The longest wait of all: ``max_delay``, and never more than ``MAX_DURATION``."""
    return MAX_DURATION if max_delay is None else min(max_delay, MAX_DURATION)


def hint_ceiling(backoff_cap: float, max_delay: float | None) -> float:
    """The longest wait a server's hint may ask for: the backoff's cap and
    ``max_delay``, whichever is smaller; without either,
    :data:`DEFAULT_RETRY_AFTER_CEILING`."""
    cap = backoff_cap
    if not math.isfinite(cap):
        cap = math.inf if max_delay is not None else DEFAULT_RETRY_AFTER_CEILING
    return min(cap, delay_ceiling(max_delay))


@dataclass(frozen=True, slots=True)
class Waiting:
    """One backoff, and the longest wait a server's hint may ask for with it."""

    rule: DelayRule
    hint_ceiling: float


@dataclass(frozen=True, slots=True)
class RetryRules:
    """What a retry's options say about waiting, fixed when the policy is built."""

    waiting_by_class: Mapping[ErrorClass | None, Waiting]
    """The backoff for every error class, and for ``None`` (a bad result): one
    lookup, with the default already filled in where no class has its own."""
    delay_ceiling: float
    respect_retry_after: bool
    deadline: float | None

    def next_delay(
        self,
        attempt: int,
        max_attempts: int,
        retryable: bool,
        error_class: ErrorClass | None,
        retry_after: float | None,
        previous_delay: float | None,
        elapsed: float,
        remaining: float | None,
        rng: Random,
    ) -> float | GiveUpReason:
        """After attempt ``attempt`` failed: the delay before the next one, or why not.

        ``retryable`` is the retry filter's verdict on the failure (true for a bad
        result); ``retry_after`` the failure's hint, if any; ``elapsed`` the time
        since the call began; ``remaining`` what an enclosing deadline leaves
        (``None``: none). The backoff draws from ``rng`` only when a retry is
        still possible, so a seeded ``rng`` gives the same delays wherever the
        decision is taken.
        """
        if not retryable:
            return "not_retryable"
        if attempt >= max_attempts:
            return "attempts"
        waiting = self.waiting_by_class[error_class]
        delay = waiting.rule.delay(attempt, previous_delay, rng)
        ceiling = self.delay_ceiling
        if not delay <= ceiling:  # NaN from a custom backoff too
            delay = ceiling if delay > 0 else 0.0
        # A hint that is not a number >= 0 (NaN, negative) is no hint; inf is capped.
        if retry_after is not None and self.respect_retry_after and retry_after > delay:
            delay = max(delay, min(retry_after, waiting.hint_ceiling))
        deadline = self.deadline
        if deadline is not None and elapsed + delay >= deadline:
            return "deadline"  # no time would be left to try
        # An enclosing Timeout's deadline: never sleep into it (no time would be left).
        if remaining is not None and delay >= remaining:
            return "deadline"
        return delay

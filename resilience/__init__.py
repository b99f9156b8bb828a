"""resilience: retry, circuit breaker, rate limiter, timeout, bulkhead, fallback.

The public API is what ``__all__`` lists; everything in a module whose name
starts with an underscore is private.
"""

from __future__ import annotations

from ._clock import Clock, SystemClock
from ._policy import Policy
from ._version import VERSION
from .backoff import Backoff, Jitter
from .classify import Classification, ErrorClass, classify, parse_retry_after
from .errors import (
    BulkheadFull,
    CircuitOpenError,
    ConfigurationError,
    RateLimitExceeded,
    ResilienceError,
    StoreUnavailable,
    TimeoutExceeded,
)
from .retry import Attempt, Retry, RetryInfo, RetryStatistics, with_retry

__version__ = VERSION

__all__ = [
    "Attempt",
    "Backoff",
    "BulkheadFull",
    "CircuitOpenError",
    "Classification",
    "Clock",
    "ConfigurationError",
    "ErrorClass",
    "Jitter",
    "Policy",
    "RateLimitExceeded",
    "ResilienceError",
    "Retry",
    "RetryInfo",
    "RetryStatistics",
    "StoreUnavailable",
    "SystemClock",
    "TimeoutExceeded",
    "classify",
    "parse_retry_after",
    "with_retry",
]

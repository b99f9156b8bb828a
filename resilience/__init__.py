"""resilience: retry, circuit breaker, rate limiter, timeout, bulkhead, fallback.

The public API is what ``__all__`` lists; everything in a module whose name
starts with an underscore is private.
"""

from __future__ import annotations

from ._clock import Clock, SystemClock
from ._deadline import check_deadline, remaining_time
from ._policy import Policy
from ._version import VERSION
from .backoff import Backoff, Jitter
from .breaker import BreakerStatistics, CircuitBreaker, CircuitState
from .bulkhead import Bulkhead, BulkheadStatistics
from .classify import Classification, ErrorClass, classify, parse_retry_after
from .config import ConfigurationWarning, build_policy, check_pipeline, http_pipeline
from .errors import (
    BulkheadFull,
    CircuitOpenError,
    ConfigurationError,
    RateLimitExceeded,
    ResilienceError,
    StoreUnavailable,
    TimeoutExceeded,
)
from .fallback import Cached, CachedFallback, Fallback, FallbackStatistics
from .pipeline import Pipeline
from .ratelimit import RateLimiter, RateLimiterStatistics
from .registry import PolicySnapshot, Registry, RegistrySnapshot
from .retry import Attempt, Retry, RetryInfo, RetryStatistics, with_retry
from .storage import MemoryStore, store_from_url
from .timeout import Timeout, TimeoutStatistics

__version__ = VERSION

__all__ = [
    "Attempt",
    "Backoff",
    "BreakerStatistics",
    "Bulkhead",
    "BulkheadFull",
    "BulkheadStatistics",
    "Cached",
    "CachedFallback",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "Classification",
    "Clock",
    "ConfigurationError",
    "ConfigurationWarning",
    "ErrorClass",
    "Fallback",
    "FallbackStatistics",
    "Jitter",
    "MemoryStore",
    "Pipeline",
    "Policy",
    "PolicySnapshot",
    "RateLimitExceeded",
    "RateLimiter",
    "RateLimiterStatistics",
    "Registry",
    "RegistrySnapshot",
    "ResilienceError",
    "Retry",
    "RetryInfo",
    "RetryStatistics",
    "StoreUnavailable",
    "SystemClock",
    "Timeout",
    "TimeoutExceeded",
    "TimeoutStatistics",
    "build_policy",
    "check_deadline",
    "check_pipeline",
    "classify",
    "http_pipeline",
    "parse_retry_after",
    "remaining_time",
    "store_from_url",
    "with_retry",
]

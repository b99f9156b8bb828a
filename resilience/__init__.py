"""resilience: retry, circuit breaker, rate limiter, timeout, bulkhead, fallback.

The root holds what most code needs: the policies (and ``Policy``, their base),
their errors, ``Backoff``,
``ErrorClass``/``classify``, ``CircuitState``, the deadline helpers and
``store_from_url``. The rest is one dotted import away, in the module of what
it belongs to: statistics (``resilience.retry.RetryStatistics``, ...), clocks
(``resilience.clock``), configuration from documents (``resilience.config``),
the registry (``resilience.registry``), stores (``resilience.storage``),
telemetry (``resilience.telemetry``) and testing helpers (``resilience.testing``).
Everything in a module whose name starts with an underscore is private.
"""

from __future__ import annotations

from ._deadline import check_deadline, remaining_time
from ._policy import Policy
from ._version import VERSION
from .backoff import Backoff
from .breaker import CircuitBreaker, CircuitState
from .bulkhead import Bulkhead
from .classify import Classification, ErrorClass, classify
from .errors import (
    BulkheadFull,
    CircuitOpenError,
    ConfigurationError,
    RateLimitExceeded,
    ResilienceError,
    StoreUnavailable,
    TimeoutExceeded,
)
from .fallback import CachedFallback, Fallback
from .pipeline import Pipeline
from .ratelimit import RateLimiter
from .retry import Retry, RetryDecision, with_retry
from .storage import store_from_url
from .timeout import Timeout

__version__ = VERSION

__all__ = [
    "Backoff",
    "Bulkhead",
    "BulkheadFull",
    "CachedFallback",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "Classification",
    "ConfigurationError",
    "ErrorClass",
    "Fallback",
    "Pipeline",
    "Policy",
    "RateLimitExceeded",
    "RateLimiter",
    "ResilienceError",
    "Retry",
    "RetryDecision",
    "StoreUnavailable",
    "Timeout",
    "TimeoutExceeded",
    "check_deadline",
    "classify",
    "remaining_time",
    "store_from_url",
    "with_retry",
]

"""What the HTTP integrations share: which requests are retried, which statuses are
failures, which pipeline serves a host, and how the deadline bounds a timeout.

Nothing here imports an HTTP library; ``httpx.py`` and ``requests.py`` hold the
thin I/O drivers around it.

**Status-based outcomes.** A transport does not raise for an HTTP status, so a
pipeline would see every response as a success. Inside the pipeline, a response
whose status is in ``retry_statuses`` (429 and 5xx but 501 by default) is turned
into a :class:`RetryableResponse` exception carrying the response, its body
already read and its connection released, and a :class:`~resilience.Classification`
(``RATE_LIMITED`` for 429, ``TRANSIENT`` otherwise, with the server's
``Retry-After``). Retries and breakers see a failure; when the pipeline gives up,
the adapter catches the exception and returns the last response to the caller.
Other statuses (404…) are returned as they are: a success for every policy.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from .._deadline import check_deadline, remaining_time
from .._policy import Policy
from ..classify import Classification, ErrorClass, parse_retry_after
from ..config import http_pipeline
from ..errors import TimeoutExceeded
from ..pipeline import Pipeline
from ..retry import Retry

__all__ = [
    "IDEMPOTENCY_HEADER",
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "HttpRoutes",
    "RetryableResponse",
    "bound_timeout",
    "classify_response",
    "http_classifier",
    "unwrap_outcome",
    "without_retries",
]

#: Methods that may be sent twice with the effect of sending once (RFC 9110 §9.2.2).
IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

#: A request carrying this header may be retried whatever its method.
IDEMPOTENCY_HEADER = "Idempotency-Key"

#: Statuses that are failures, retried: 429 and every 5xx but 501 Not Implemented.
RETRY_STATUSES: frozenset[int] = frozenset({429, 500, *range(502, 600)})

C = TypeVar("C")


class RetryableResponse(Exception):
    """An HTTP response with a failure status, raised inside the pipeline.

    It never leaves an adapter: when the pipeline gives up, the adapter returns
    :attr:`response` to the caller. Policies and hooks inside the pipeline
    (``on_retry``, a ``Fallback``) see it with the response on it. The body has
    been read and the connection released before it is raised.
    """

    response: Any
    classification: Classification

    @property
    def status_code(self) -> int:
        return int(self.response.status_code)


def classify_response(status: int, retry_after: str | bytes | None) -> Classification:
    """The classification of a failure status: 429 is RATE_LIMITED, others TRANSIENT."""
    seconds = parse_retry_after(retry_after)
    error_class = ErrorClass.RATE_LIMITED if status == 429 else ErrorClass.TRANSIENT
    return Classification(error_class, seconds)


def http_classifier(exc: BaseException) -> Classification | None:
    """Classify a :class:`RetryableResponse` by its status; pass on anything else.

    The default pipelines of the adapters use it. With a pipeline of your own,
    give it as ``classifier=`` to its ``Retry`` and ``CircuitBreaker`` so that
    every status of ``retry_statuses`` counts (the built-in classifier alone
    knows 429, 500, 502, 503 and 504 and treats other 5xx as permanent).
    """
    if isinstance(exc, RetryableResponse):
        return exc.classification
    return None


def unwrap_outcome(exc: BaseException) -> Any:
    """The response to return for an exception leaving the pipeline, or ``None``.

    A :class:`RetryableResponse` gives its response; so does a
    :class:`~resilience.TimeoutExceeded` raised because the time ran out while
    the last attempt was answered with a failure status.
    """
    if isinstance(exc, RetryableResponse):
        return exc.response
    if isinstance(exc, TimeoutExceeded) and isinstance(exc.__cause__, RetryableResponse):
        return exc.__cause__.response
    return None


def without_retries(policy: Policy) -> Policy:
    """``policy`` with every :class:`~resilience.Retry` left out (inside pipelines too),
    sharing the other policies (and so their state): the route of requests that
    must be sent at most once."""
    if isinstance(policy, Retry):
        return Pipeline(name=policy.name)
    if isinstance(policy, Pipeline):
        return Pipeline(
            *(without_retries(inner) for inner in policy.policies if not isinstance(inner, Retry)),
            name=policy.name,
        )
    return policy


def bound_timeout(seconds: float | None) -> float | None:
    """``seconds`` (``None``: no limit) bounded by the enclosing deadline, if any.

    Raises :class:`~resilience.TimeoutExceeded` when the deadline has passed.
    """
    left = remaining_time()
    if left is None:
        return seconds
    if left <= 0:
        check_deadline()  # raises: the deadline has passed
    if seconds is None or math.isnan(seconds):
        return left
    return min(seconds, left)


def _default_pipeline(name: str, clock: Any, overrides: Mapping[str, Any]) -> Pipeline:
    classify = {
        "retry": {"classifier": http_classifier},
        "breaker": {"classifier": http_classifier},
    }
    merged: dict[str, Any] = dict(classify)
    for kind, value in overrides.items():
        below = merged.get(kind)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            merged[kind] = {**below, **value}
        else:
            merged[kind] = value
    return http_pipeline(name, clock=clock, **merged)


class _Route(Generic[C]):
    __slots__ = ("once", "pipeline", "send")

    def __init__(self, pipeline: Policy, wrap: Callable[[Policy], C]) -> None:
        self.pipeline = pipeline
        self.send = wrap(pipeline)
        self.once = wrap(without_retries(pipeline))


class HttpRoutes(Generic[C]):
    """The configuration an adapter shares between its sync and async drivers.

    ``wrap(policy)`` builds the protected send function of one pipeline, once;
    :meth:`route` returns it (and its no-retry twin) for a host.
    """

    def __init__(
        self,
        pipeline: Policy | None,
        *,
        wrap: Callable[[Policy], C],
        per_host: bool,
        pipeline_for: Callable[[str], Policy] | None,
        clock: Any,
        name: str,
        retry_statuses: Iterable[int],
        retry_methods: Iterable[str],
        max_hosts: int,
        overrides: Mapping[str, Any],
        owner: str,
    ) -> None:
        if pipeline is not None and not isinstance(pipeline, Policy):
            raise TypeError(f"{owner}: pipeline must be a Policy or Pipeline, got {pipeline!r}")
        if pipeline is not None and (per_host or pipeline_for is not None):
            raise TypeError(f"{owner}: give pipeline, or per_host/pipeline_for, not both")
        if pipeline is not None and (overrides or clock is not None):
            given = [*overrides, *(["clock"] if clock is not None else [])]
            raise TypeError(
                f"{owner}: options of the default pipeline ({', '.join(given)})"
                " cannot be combined with a pipeline of your own"
            )
        if max_hosts < 1:
            raise ValueError(f"{owner}: max_hosts must be at least 1, got {max_hosts}")
        self.retry_statuses = frozenset(int(status) for status in retry_statuses)
        self.retry_methods = frozenset(method.upper() for method in retry_methods)
        self._wrap = wrap
        self._max_hosts = max_hosts
        self._lock = threading.Lock()
        self._hosts: OrderedDict[str, _Route[C]] = OrderedDict()
        self._factory: Callable[[str], Policy] | None
        self._shared: _Route[C] | None
        if pipeline_for is not None:
            self._factory, self._shared = pipeline_for, None
        elif per_host:
            options = dict(overrides)
            self._factory = lambda host: _default_pipeline(f"{name}:{host}", clock, options)
            self._shared = None
        else:
            if pipeline is None:
                pipeline = _default_pipeline(name, clock, overrides)
            self._factory, self._shared = None, _Route(pipeline, wrap)

    @property
    def pipeline(self) -> Policy | None:
        """The pipeline every request goes through (``None`` when keyed per host)."""
        return None if self._shared is None else self._shared.pipeline

    def pipeline_for(self, host: str) -> Policy:
        """The pipeline that serves ``host`` (``"host:port"``), built on first use."""
        return self.route(host).pipeline

    def route(self, host: str) -> _Route[C]:
        shared = self._shared
        if shared is not None:
            return shared
        hosts = self._hosts
        with self._lock:
            found = hosts.get(host)
            if found is not None:
                hosts.move_to_end(host)
                return found
        assert self._factory is not None
        built = _Route(self._factory(host), self._wrap)  # outside the lock: it may do I/O
        with self._lock:
            found = hosts.setdefault(host, built)
            hosts.move_to_end(host)
            while len(hosts) > self._max_hosts:  # the least recently used host goes
                hosts.popitem(last=False)
        return found

    def may_retry(self, method: str, has_idempotency_key: bool, replayable: bool) -> bool:
        """Whether a request may be sent more than once."""
        return replayable and (method.upper() in self.retry_methods or has_idempotency_key)

"""httpx transports that send every request through a resilience pipeline.

.. code-block:: python

    import httpx
    from resilience.integrations.httpx import AsyncResilientTransport, ResilientTransport

    client = httpx.Client(transport=ResilientTransport())
    async_client = httpx.AsyncClient(transport=AsyncResilientTransport())

Both wrap an inner transport (by default ``httpx.HTTPTransport()`` /
``httpx.AsyncHTTPTransport()``) with a pipeline, by default the standard HTTP
preset (:func:`resilience.config.http_pipeline`). See ``docs/http.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

import httpx

from .._deadline import remaining_time
from .._policy import Policy
from ..clock import Clock
from ._http import (
    IDEMPOTENCY_HEADER,
    IDEMPOTENT_METHODS,
    RETRY_STATUSES,
    HttpRoutes,
    RetryableResponse,
    bound_timeout,
    classify_response,
    unwrap_outcome,
)

__all__ = ["AsyncResilientTransport", "ResilientTransport"]

_TIMEOUT_KEYS = ("connect", "read", "write", "pool")

SyncSend = Callable[[httpx.Request, Any], httpx.Response]
AsyncSend = Callable[[httpx.Request, Any], Coroutine[Any, Any, httpx.Response]]


class _HttpxRetryableResponse(RetryableResponse, httpx.HTTPStatusError):
    """A failure status, as an ``httpx.HTTPStatusError`` (see :class:`RetryableResponse`)."""

    def __init__(self, request: httpx.Request, response: httpx.Response) -> None:
        super().__init__(
            f"HTTP {response.status_code} for {request.method} {request.url}",
            request=request,
            response=response,
        )
        self.classification = classify_response(
            response.status_code, response.headers.get("Retry-After")
        )


def _host_key(url: httpx.URL) -> str:
    port = url.port
    if port is None:
        port = 443 if url.scheme == "https" else 80
    return f"{url.host}:{port}"


def _replayable(request: httpx.Request) -> bool:
    # Bytes in memory replay; a generator or a file object can be read once only.
    return isinstance(request.stream, httpx.ByteStream)


def _bounded_extensions(request: httpx.Request, timeouts: Any) -> None:
    """Bound the request's timeouts by the enclosing deadline (if any), starting
    from the caller's own (``timeouts``) afresh for each attempt."""
    if remaining_time() is None:
        return
    if timeouts is None:
        timeouts = {}
    if not isinstance(timeouts, Mapping):
        return
    bounded = {key: bound_timeout(timeouts.get(key)) for key in _TIMEOUT_KEYS}
    request.extensions = {**request.extensions, "timeout": bounded}


def _failed(request: httpx.Request, response: httpx.Response, raw: bytes) -> RetryableResponse:
    """A buffered copy of ``response`` (already read and closed), as an exception."""
    extensions = {k: v for k, v in response.extensions.items() if k != "network_stream"}
    copy = httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(raw),
        extensions=extensions,
        request=request,
    )
    return _HttpxRetryableResponse(request, copy)


class _Options:
    """The options both transports take; see :class:`ResilientTransport`."""

    _routes: HttpRoutes[Any]

    @property
    def pipeline(self) -> Policy | None:
        """The pipeline every request goes through (``None`` when keyed per host)."""
        return self._routes.pipeline

    def pipeline_for(self, host: str) -> Policy:
        """The pipeline serving ``host`` (``"host:port"``)."""
        return self._routes.pipeline_for(host)

    def _may_retry(self, request: httpx.Request) -> bool:
        return self._routes.may_retry(
            request.method, IDEMPOTENCY_HEADER in request.headers, _replayable(request)
        )


class ResilientTransport(_Options, httpx.BaseTransport):
    """An ``httpx`` transport that sends each request through a pipeline.

    ``httpx.Client(transport=ResilientTransport())`` retries, circuit-breaks and
    bounds every request with the standard HTTP preset.

    * ``pipeline``: the policy (usually a :class:`~resilience.Pipeline`) to use;
      default: :func:`~resilience.config.http_pipeline` with ``name``, ``clock``
      and ``**overrides`` (``retry={"attempts": 3}``, ``rate_limiter={...}``,
      ``bulkhead=False``…).
    * ``per_host=True``: one default pipeline per ``host:port`` (its breaker,
      limiter and bulkhead of its own), named ``<name>:<host>:<port>``; at most
      ``max_hosts`` are kept (the least recently used are dropped).
      ``pipeline_for=lambda host: ...`` builds (or looks up) them yourself.
    * ``retry_statuses``: the statuses that are failures (default: 429 and 5xx
      but 501); they are retried, and count against a breaker. Other statuses
      are returned to the caller at once and count as successes.
    * ``retry_methods``: the methods retried (default: the idempotent ones); any
      request with an ``Idempotency-Key`` header is retried too. A request whose
      body cannot be replayed (a generator, a file) is never retried. A request
      that is not retried still goes through every other policy.

    When the pipeline gives up on a failure status, the last response is
    returned, not raised. Errors of the pipeline itself
    (:class:`~resilience.CircuitOpenError`, :class:`~resilience.TimeoutExceeded`…)
    and the last transport error propagate.
    """

    def __init__(
        self,
        pipeline: Policy | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        per_host: bool = False,
        pipeline_for: Callable[[str], Policy] | None = None,
        retry_statuses: Iterable[int] = RETRY_STATUSES,
        retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
        max_hosts: int = 256,
        name: str = "http",
        clock: Clock | None = None,
        **overrides: Any,
    ) -> None:
        self._transport = httpx.HTTPTransport() if transport is None else transport
        self._routes: HttpRoutes[SyncSend] = HttpRoutes(
            pipeline,
            wrap=lambda policy: policy._wrap_sync(self._attempt, policy._call_observer()),
            per_host=per_host,
            pipeline_for=pipeline_for,
            clock=clock,
            name=name,
            retry_statuses=retry_statuses,
            retry_methods=retry_methods,
            max_hosts=max_hosts,
            overrides=overrides,
            owner="ResilientTransport",
        )
        self._failures = self._routes.retry_statuses

    def _attempt(self, request: httpx.Request, timeouts: Any) -> httpx.Response:
        _bounded_extensions(request, timeouts)
        response = self._transport.handle_request(request)
        if response.status_code not in self._failures:
            return response
        try:  # read the body and release the connection before anything else
            stream = response.stream
            raw = b"".join(stream) if isinstance(stream, httpx.SyncByteStream) else b""
        finally:
            response.close()
        raise _failed(request, response, raw)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        route = self._routes.route(_host_key(request.url))
        send = route.send if self._may_retry(request) else route.once
        try:
            return send(request, request.extensions.get("timeout"))
        except Exception as exc:
            response = unwrap_outcome(exc)
            if response is None:
                raise
            return response  # type: ignore[no-any-return]

    def close(self) -> None:
        self._transport.close()


class AsyncResilientTransport(_Options, httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`ResilientTransport` (same options), wrapping an
    ``httpx.AsyncBaseTransport`` (default ``httpx.AsyncHTTPTransport()``):
    ``httpx.AsyncClient(transport=AsyncResilientTransport())``."""

    def __init__(
        self,
        pipeline: Policy | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        per_host: bool = False,
        pipeline_for: Callable[[str], Policy] | None = None,
        retry_statuses: Iterable[int] = RETRY_STATUSES,
        retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
        max_hosts: int = 256,
        name: str = "http",
        clock: Clock | None = None,
        **overrides: Any,
    ) -> None:
        self._transport = httpx.AsyncHTTPTransport() if transport is None else transport
        self._routes: HttpRoutes[AsyncSend] = HttpRoutes(
            pipeline,
            wrap=lambda policy: policy._wrap_async(self._attempt, policy._call_observer()),
            per_host=per_host,
            pipeline_for=pipeline_for,
            clock=clock,
            name=name,
            retry_statuses=retry_statuses,
            retry_methods=retry_methods,
            max_hosts=max_hosts,
            overrides=overrides,
            owner="AsyncResilientTransport",
        )
        self._failures = self._routes.retry_statuses

    async def _attempt(self, request: httpx.Request, timeouts: Any) -> httpx.Response:
        _bounded_extensions(request, timeouts)
        response = await self._transport.handle_async_request(request)
        if response.status_code not in self._failures:
            return response
        try:
            stream = response.stream
            raw = (
                b"".join([chunk async for chunk in stream])
                if isinstance(stream, httpx.AsyncByteStream)
                else b""
            )
        finally:
            await response.aclose()
        raise _failed(request, response, raw)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        route = self._routes.route(_host_key(request.url))
        send = route.send if self._may_retry(request) else route.once
        try:
            return await send(request, request.extensions.get("timeout"))
        except Exception as exc:
            response = unwrap_outcome(exc)
            if response is None:
                raise
            return response  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        await self._transport.aclose()

"""A ``requests`` transport adapter that sends every request through a pipeline.

.. code-block:: python

    import requests
    from resilience.integrations.requests import ResilientAdapter

    session = requests.Session()
    adapter = ResilientAdapter()
    session.mount("https://", adapter)
    session.mount("http://", adapter)

The adapter is an ``HTTPAdapter`` (with its own ``max_retries`` left at 0): the
pipeline, by default the standard HTTP preset
(:func:`resilience.config.http_pipeline`), does the retrying. See ``docs/http.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

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

__all__ = ["ResilientAdapter"]

Send = Callable[[requests.PreparedRequest, Mapping[str, Any]], requests.Response]


class _RequestsRetryableResponse(RetryableResponse, requests.HTTPError):
    """A failure status, as a ``requests.HTTPError`` (see :class:`RetryableResponse`)."""

    def __init__(self, request: requests.PreparedRequest, response: requests.Response) -> None:
        super().__init__(
            f"HTTP {response.status_code} for {request.method} {request.url}",
            request=request,
            response=response,
        )
        self.classification = classify_response(
            response.status_code, response.headers.get("Retry-After")
        )


def _host_key(url: str | None) -> str:
    parts = urlsplit(url or "")
    port = parts.port
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return f"{parts.hostname or ''}:{port}"


def _replayable(request: requests.PreparedRequest) -> bool:
    # Bytes (or text) replay; a generator or a file object can be read once only.
    return request.body is None or isinstance(request.body, bytes | str)


def _bound(timeout: Any) -> Any:
    """``send``'s timeout (seconds, ``(connect, read)`` or ``None``) bounded by the
    enclosing deadline, if any; other forms are left alone."""
    if timeout is None or isinstance(timeout, int | float):
        return bound_timeout(None if timeout is None else float(timeout))
    if isinstance(timeout, tuple) and len(timeout) == 2:
        return tuple(bound_timeout(None if part is None else float(part)) for part in timeout)
    return timeout


class ResilientAdapter(HTTPAdapter):
    """A ``requests`` adapter that sends each request through a pipeline.

    Takes the options of :class:`resilience.integrations.httpx.ResilientTransport`
    (``pipeline``, ``per_host``, ``pipeline_for``, ``retry_statuses``,
    ``retry_methods``, ``max_hosts``, ``name``, ``clock``, ``**overrides`` of the
    default pipeline) and ``HTTPAdapter``'s pool options. When the pipeline gives
    up on a failure status, the last response is returned, not raised.
    """

    def __init__(
        self,
        pipeline: Policy | None = None,
        *,
        per_host: bool = False,
        pipeline_for: Callable[[str], Policy] | None = None,
        retry_statuses: Iterable[int] = RETRY_STATUSES,
        retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
        max_hosts: int = 256,
        name: str = "http",
        clock: Clock | None = None,
        pool_connections: int = 10,
        pool_maxsize: int = 10,
        pool_block: bool = False,
        **overrides: Any,
    ) -> None:
        super().__init__(
            pool_connections=pool_connections,
            pool_maxsize=pool_maxsize,
            max_retries=0,
            pool_block=pool_block,
        )
        self._routes: HttpRoutes[Send] = HttpRoutes(
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
            owner="ResilientAdapter",
        )
        self._failures = self._routes.retry_statuses

    @property
    def pipeline(self) -> Policy | None:
        """The pipeline every request goes through (``None`` when keyed per host)."""
        return self._routes.pipeline

    def pipeline_for(self, host: str) -> Policy:
        """The pipeline serving ``host`` (``"host:port"``)."""
        return self._routes.pipeline_for(host)

    def _attempt(
        self, request: requests.PreparedRequest, options: Mapping[str, Any]
    ) -> requests.Response:
        settings = dict(options)
        settings["timeout"] = _bound(settings.get("timeout"))
        response = super().send(request, **settings)
        if response.status_code not in self._failures:
            return response
        try:  # read the body and put the connection back in the pool
            response.content  # noqa: B018 - reading it buffers it
        finally:
            response.close()
        raise _RequestsRetryableResponse(request, response)

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        route = self._routes.route(_host_key(request.url))
        retry = self._routes.may_retry(
            request.method or "GET", IDEMPOTENCY_HEADER in request.headers, _replayable(request)
        )
        options = {
            "stream": stream,
            "timeout": timeout,
            "verify": verify,
            "cert": cert,
            "proxies": proxies,
        }
        try:
            return (route.send if retry else route.once)(request, options)
        except Exception as exc:
            response = unwrap_outcome(exc)
            if response is None:
                raise
            return response  # type: ignore[no-any-return]

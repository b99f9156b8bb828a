"""HTTP client integrations: every request through a resilience pipeline.

* :mod:`resilience.integrations.httpx`: ``ResilientTransport`` and
  ``AsyncResilientTransport`` for ``httpx.Client`` / ``httpx.AsyncClient``.
* :mod:`resilience.integrations.requests`: ``ResilientAdapter`` to mount on a
  ``requests.Session``.

Each submodule imports its HTTP library; this package imports neither, so
``import resilience`` never loads them. What the adapters share (retried methods
and statuses, :func:`http_classifier`, per-host pipelines) lives here.
"""

from __future__ import annotations

from ._http import (
    IDEMPOTENCY_HEADER,
    IDEMPOTENT_METHODS,
    RETRY_STATUSES,
    RetryableResponse,
    http_classifier,
    without_retries,
)

__all__ = [
    "IDEMPOTENCY_HEADER",
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "RetryableResponse",
    "http_classifier",
    "without_retries",
]

"""Telemetry: events, structured logging, redaction (and OpenTelemetry).

Policies emit small frozen :mod:`events <resilience.telemetry.events>` on their
failure paths; :func:`subscribe` to receive them. The logging adapter is always
subscribed: it writes structured, redacted records on the ``resilience``
logger, which stays silent until the application configures logging.
"""

from __future__ import annotations

from . import events
from ._hub import HUB, Subscriber
from .logs import LOGGER, JsonFormatter, event_fields, use_structlog
from .redaction import Redactor, configure_redaction, get_redactor

__all__ = [
    "LOGGER",
    "JsonFormatter",
    "Redactor",
    "Subscriber",
    "configure_redaction",
    "event_fields",
    "events",
    "get_redactor",
    "subscribe",
    "use_structlog",
]

subscribe = HUB.subscribe

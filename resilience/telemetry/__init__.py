"""Telemetry: events, structured logging, redaction (and OpenTelemetry).

Each policy reports through one :class:`Telemetry` channel (``policy.telemetry``):
small frozen :mod:`events <resilience.telemetry.events>` on its failure paths,
and the span and metrics of each call. :func:`subscribe` to receive the events.
The logging and OpenTelemetry adapters are subscribers too: the logging one
writes structured, redacted records on the ``resilience`` logger, which stays
silent until the application configures logging; neither asks for events
while it would drop them. Rate-limiter keys appear as :func:`key_label` unless
:func:`configure` shows them.
"""

from __future__ import annotations

from . import events
from ._hub import HUB, Interest, Subscriber
from .channel import Telemetry
from .logs import LOGGER, JsonFormatter, event_fields, use_structlog
from .redaction import (
    Redactor,
    configure_keys,
    configure_redaction,
    get_redactor,
    key_label,
    keys_shown,
)

__all__ = [
    "LOGGER",
    "Interest",
    "JsonFormatter",
    "Redactor",
    "Subscriber",
    "Telemetry",
    "configure",
    "configure_redaction",
    "event_fields",
    "events",
    "get_redactor",
    "key_label",
    "keys_shown",
    "subscribe",
    "use_structlog",
]

subscribe = HUB.subscribe
"""Receive every policy's events: ``subscribe(callback)`` returns an unsubscribe function.

``interested=`` (a test of the event type) lets policies skip building the
events the callback would ignore; without it, it receives every event."""


def configure(*, show_keys: bool | None = None, key_salt: str | bytes | None = None) -> None:
    """Telemetry settings shared by every adapter (logs, spans, metrics, messages).

    ``show_keys=True`` writes rate-limiter keys as they are instead of their
    :func:`key_label` (also ``RESILIENCE_TELEMETRY_SHOW_KEYS=1``). ``key_salt``
    is the secret the labels are keyed with (also
    ``RESILIENCE_TELEMETRY_KEY_SALT``): the same salt in every process gives a
    key the same label across a fleet; by default it is random per process.
    """
    configure_keys(show_keys=show_keys, key_salt=key_salt)

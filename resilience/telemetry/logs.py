"""Structured logging of policy events, on the ``resilience`` logger.

Every event becomes one record: the message is a one-line summary, and the
fields ride in ``record.resilience`` (a dict: ``event``, ``policy`` and the
event's own fields, ``error.type``/``error.message`` for exceptions), redacted.
:class:`JsonFormatter` writes one JSON object per line; with structlog
installed, :func:`use_structlog` sends the same fields through it instead.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from collections.abc import Callable
from typing import Any

from ._hub import HUB
from .events import Event, error_type_name
from .redaction import get_redactor, key_label

__all__ = ["LOGGER", "JsonFormatter", "event_fields", "use_structlog"]

LOGGER = logging.getLogger("resilience")
# A library must not print through logging's last-resort handler: the
# application decides where records go.
LOGGER.addHandler(logging.NullHandler())


def event_fields(event: Event) -> dict[str, Any]:
    """The event as flat, redacted, JSON-friendly fields; a rate-limiter ``key`` as
    its :func:`~resilience.telemetry.key_label`."""
    fields: dict[str, Any] = {"event": event.name}
    key: object = None
    for field in dataclasses.fields(event):
        value = getattr(event, field.name)
        if isinstance(value, BaseException):
            fields["error.type"] = error_type_name(value)
            fields["error.message"] = str(value)
        elif field.name == "key":
            key = value  # a rate-limiter key: shown as its label, never raw by default
        elif value is not None:
            fields[field.name] = value
    redacted: dict[str, Any] = get_redactor().redact(fields)
    if key is not None:
        redacted["key"] = key_label(key)
    return redacted


def _log_event(event: Event) -> None:
    if LOGGER.isEnabledFor(event.level):
        LOGGER.log(
            event.level,
            get_redactor().redact_text(event.message()),
            extra={"resilience": event_fields(event)},
        )


_unsubscribe_logging = HUB.subscribe(_log_event)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the event's fields,
    and the exception (type and redacted message) if any."""

    def format(self, record: logging.LogRecord) -> str:
        redactor = get_redactor()
        payload: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": redactor.redact_text(record.getMessage()),
        }
        fields = getattr(record, "resilience", None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            payload["error.type"] = error_type_name(error)
            payload["error.message"] = redactor.redact_text(str(error))
        return json.dumps(payload, default=str)


def use_structlog(logger: Any = None) -> Callable[[], None]:
    """Send events through structlog (``structlog.get_logger("resilience")`` by
    default) as key-value pairs. Returns a function that stops it."""
    import structlog

    target = logger if logger is not None else structlog.get_logger("resilience")
    methods = {
        logging.DEBUG: "debug",
        logging.INFO: "info",
        logging.WARNING: "warning",
        logging.ERROR: "error",
    }

    def log_through_structlog(event: Event) -> None:
        fields = event_fields(event)
        name = fields.pop("event")
        getattr(target, methods.get(event.level, "info"))(name, **fields)

    return HUB.subscribe(log_through_structlog)

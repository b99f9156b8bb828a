"""Structured logging of policy events, on the ``resilience`` logger.

Every event becomes one record on its ``logger`` (``resilience``, or
``resilience.storage`` / ``resilience.timeout`` for store outages and abandoned
timeout threads): the message is a one-line summary, and the
fields ride in ``record.resilience`` (a dict: ``event``, ``policy`` and the
event's own fields, ``error.type``/``error.message`` for exceptions), redacted.
The adapter wants an event only when its logger is enabled for the event's
level and some handler would take the record, so that with logging left
unconfigured policies build no events for it.
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
from .events import LOUDEST_LEVEL, Event, error_type_name, event_types
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


_LOGGERS: dict[str, logging.Logger] = {"resilience": LOGGER}


def _logger(name: str) -> logging.Logger:
    # Loggers live as long as the process: look each one up once.
    logger = _LOGGERS.get(name)
    if logger is None:
        logger = _LOGGERS[name] = logging.getLogger(name)
    return logger


def _has_handler_for(logger: logging.Logger, level: int) -> bool:
    """Whether a record at ``level`` on ``logger`` would reach a handler, found the
    way ``Logger.callHandlers`` finds them (a ``NullHandler`` drops it silently)."""
    found = False
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            found = True
            if level >= handler.level and not isinstance(handler, logging.NullHandler):
                return True
        current = current.parent if current.propagate else None
    last_resort = logging.lastResort
    return not found and last_resort is not None and level >= last_resort.level


def _would_log(logger: logging.Logger, level: int) -> bool:
    # isEnabledFor is cached by the logging module: a quiet level costs a lookup.
    return logger.isEnabledFor(level) and _has_handler_for(logger, level)


def _defers_to_resilience(logger: logging.Logger) -> bool:
    """Whether ``logger`` decides exactly as ``LOGGER``, its parent, would (no level,
    handler or filter of its own)."""
    return (
        logger.parent is LOGGER
        and logger.level == logging.NOTSET
        and not logger.handlers
        and not logger.filters
        and not logger.disabled
        and logger.propagate
    )


def _would_log_any() -> bool:
    # The loudest event on each events' logger; a child configured like its
    # parent answers like it, so it need not be asked.
    if _would_log(LOGGER, LOUDEST_LEVEL):
        return True
    for logger in _CHILD_LOGGERS:
        if not _defers_to_resilience(logger) and _would_log(logger, LOUDEST_LEVEL):
            return True
    return False


def _wants(event_type: type[Event]) -> bool:
    target = _TARGETS.get(event_type)
    if target is None:
        if event_type is Event:  # any event
            return _would_log_any()
        target = (_logger(event_type.logger), event_type.quietest_level)
    logger, level = target
    return logger.isEnabledFor(level) and _has_handler_for(logger, level)


def _log_event(event: Event) -> None:
    logger = _logger(event.logger)
    if logger.isEnabledFor(event.level):
        logger.log(
            event.level,
            get_redactor().redact_text(event.message()),
            extra={"resilience": event_fields(event)},
        )


# Where and from which level each event type is logged, resolved once.
_TARGETS = {
    event_type: (_logger(event_type.logger), event_type.quietest_level)
    for event_type in event_types()
}
_CHILD_LOGGERS = tuple(
    _logger(name)
    for name in sorted({event_type.logger for event_type in event_types()})
    if name != LOGGER.name
)
_unsubscribe_logging = HUB.subscribe(_log_event, interested=_wants)


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

"""The one internal event hook between policies and their observers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .events import Event

__all__ = ["HUB", "EventHub", "Subscriber"]

Subscriber = Callable[[Event], object]

_log = logging.getLogger("resilience.telemetry")


class EventHub:
    """Fans events out to subscribers.

    ``active`` is a plain attribute a policy reads before it builds an event,
    so with nobody listening an event costs one attribute read. Subscribers are
    kept in a tuple replaced on change (copy-on-write): emitting takes no lock.
    A subscriber that raises is logged and skipped: observing a call must
    never break it.
    """

    __slots__ = ("_lock", "_subscribers", "active")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()
        self.active = False

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber(event)`` for every event; returns an unsubscribe function."""
        if not callable(subscriber):
            raise TypeError(f"subscriber must be callable, got {subscriber!r}")
        with self._lock:
            self._subscribers = (*self._subscribers, subscriber)
            self.active = True

        def unsubscribe() -> None:
            with self._lock:
                remaining = list(self._subscribers)
                if subscriber in remaining:
                    remaining.remove(subscriber)
                self._subscribers = tuple(remaining)
                self.active = bool(remaining)

        return unsubscribe

    def emit(self, event: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                _log.exception("resilience event subscriber %r failed", subscriber)


HUB = EventHub()

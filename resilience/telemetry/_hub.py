"""The one fan-out between policies and their observers: events go to subscribers.

A policy asks :meth:`EventHub.wants` before it builds an event, so that with
nobody interested a failure path costs a test, not an event. Subscribers that
take every event (user callbacks) make the hub want everything; the adapters
subscribe with an ``interested`` test instead (the logging adapter: is the
event's logger enabled for its level and is there a handler; the OpenTelemetry
adapter: is an SDK set), so that configuring neither leaves the hub idle.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .events import Event

__all__ = ["HUB", "EventHub", "Interest", "Subscriber"]

Subscriber = Callable[[Event], object]
Interest = Callable[[type[Event]], bool]
"""``interested(event_type)``: would the subscriber do anything with such an event now?
``Event`` itself stands for any event."""

_log = logging.getLogger("resilience.telemetry")


class EventHub:
    """Fans events out to subscribers, and tells whether any of them wants one.

    Subscribers are kept in tuples replaced on change (copy-on-write): emitting
    and asking take no lock. A subscriber that raises is logged and skipped:
    observing a call must never break it.
    """

    __slots__ = ("_eager", "_interests", "_lock", "_subscribers")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()
        self._eager = 0  # subscribers that take every event
        self._interests: tuple[Interest, ...] = ()

    def subscribe(
        self, subscriber: Subscriber, *, interested: Interest | None = None
    ) -> Callable[[], None]:
        """Call ``subscriber(event)`` for every event; returns an unsubscribe function.

        Without ``interested`` the subscriber wants every event, and policies
        build every event while it is subscribed. With it, they build an event
        only when ``interested(type(event))`` (or another subscriber) says so;
        ``subscriber`` may still receive events it is not interested in.
        """
        if not callable(subscriber):
            raise TypeError(f"subscriber must be callable, got {subscriber!r}")
        if interested is not None and not callable(interested):
            raise TypeError(f"interested must be callable, got {interested!r}")
        with self._lock:
            self._subscribers = (*self._subscribers, subscriber)
            if interested is None:
                self._eager += 1
            else:
                self._interests = (*self._interests, interested)
        done = False

        def unsubscribe() -> None:
            nonlocal done
            with self._lock:
                if done:
                    return
                done = True
                remaining = list(self._subscribers)
                remaining.remove(subscriber)
                self._subscribers = tuple(remaining)
                if interested is None:
                    self._eager -= 1
                else:
                    interests = list(self._interests)
                    interests.remove(interested)
                    self._interests = tuple(interests)

        return unsubscribe

    def wants(self, event_type: type[Event]) -> bool:
        """Whether some subscriber would do anything with an event of this type now."""
        if self._eager:
            return True
        for interested in self._interests:  # noqa: SIM110 - any() costs a generator here
            if interested(event_type):
                return True
        return False

    @property
    def active(self) -> bool:
        """Whether some subscriber would do anything with some event now."""
        return self.wants(Event)

    def emit(self, event: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                _log.exception("resilience event subscriber %r failed", subscriber)


HUB = EventHub()

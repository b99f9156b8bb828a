"""One policy's telemetry channel: everything a policy reports goes through it.

A policy holds one :class:`Telemetry` (``policy.telemetry``) and reports
through it: events (:meth:`~Telemetry.emit`, after :meth:`~Telemetry.wants`),
the span and metrics of each call (:attr:`~Telemetry.observer` for decorated
callables and ``call``/``acall``, :meth:`~Telemetry.span` around a block,
:meth:`~Telemetry.open_block`/:meth:`~Telemetry.close_block` for a
``with policy:`` whose enter and exit are separate calls), retry attempts
(:meth:`~Telemetry.attempt`) and, for a breaker, its state
(:meth:`~Telemetry.track_state`). Logs, spans and metrics are made by the
subscribers behind it (the logging and OpenTelemetry adapters, and the
application's own): the policy never calls them itself.
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import Any, Protocol

from ._hub import HUB
from .events import Event
from .otel import OTEL, CallObserver

__all__ = ["OPEN_BLOCKS", "Telemetry", "track_queue", "tracked_queues", "tracked_states"]

_NO_SPAN = nullcontext()

OPEN_BLOCKS: contextvars.ContextVar[tuple[AbstractContextManager[None], Telemetry, Any] | None] = (
    contextvars.ContextVar("resilience open block spans", default=None)
)
"""The spans of the ``with policy:`` blocks open in this context, innermost first:
(span, its channel, the entry below); with no SDK set, always ``None``."""


class _Stateful(Protocol):
    @property
    def state(self) -> Any: ...


# Policies whose state the breaker-state gauge reports, held weakly: a policy
# that is gone leaves the gauge without a lingering series.
_TRACKED: weakref.WeakKeyDictionary[Any, Telemetry] = weakref.WeakKeyDictionary()
_TRACKED_LOCK = threading.Lock()


def tracked_states() -> list[tuple[Telemetry, str]]:
    """Each policy's channel registered with :meth:`Telemetry.track_state`, and its state now."""
    with _TRACKED_LOCK:
        tracked = list(_TRACKED.items())
    return [
        (telemetry, getattr(policy.state, "value", str(policy.state)))
        for policy, telemetry in tracked
    ]


class _Queue(Protocol):
    name: str

    def stats(self) -> Any: ...


# Job queues whose depth and lag the gauges report, held weakly like the breakers.
_QUEUES: weakref.WeakSet[Any] = weakref.WeakSet()


def track_queue(queue: _Queue) -> None:
    """Report ``queue.stats()`` through the job depth and lag gauges while it lives."""
    with _TRACKED_LOCK:
        _QUEUES.add(queue)


# The depth and lag gauges are read back to back in one collection: they share
# one stats read per queue (a store round trip) instead of making one each.
_READ_EVERY = 0.5
_last_read: tuple[float, list[weakref.ref[Any]], list[tuple[str, Any]]] = (-math.inf, [], [])


def tracked_queues() -> list[tuple[str, Any]]:
    """Each tracked queue's name and stats (the same queues read less than half a
    second ago are not read again); a queue whose store does not answer is left out
    (the gauges skip it, the exporter goes on)."""
    global _last_read
    with _TRACKED_LOCK:
        queues = list(_QUEUES)
    read_at, read_queues, answers = _last_read
    same = len(read_queues) == len(queues) and all(
        ref() is queue for ref, queue in zip(read_queues, queues, strict=True)
    )
    if same and time.monotonic() - read_at < _READ_EVERY:
        return answers
    answers = []
    for queue in queues:
        try:
            answers.append((queue.name, queue.stats()))
        except Exception:  # a metrics collection must not fail on an outage
            continue
    _last_read = (time.monotonic(), [weakref.ref(queue) for queue in queues], answers)
    return answers


class Telemetry:
    """The telemetry channel of the policy ``name`` (of kind ``kind``).

    ``wants(EventType)`` is the cheap test a policy makes before it builds an
    event: true only while some subscriber would do something with it (a
    callback of the application, a logger enabled for the event's level with a
    handler, an OpenTelemetry SDK). ``emit(event)`` fans the event out.
    """

    __slots__ = ("_observer", "emit", "kind", "name", "wants")

    kind: str
    name: str
    emit: Callable[[Event], None]
    """Send ``event`` to every subscriber."""
    wants: Callable[[type[Event]], bool]
    """Whether some subscriber would do anything with an event of this type now."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        # The hub's own bound methods: a policy's test costs no extra frame.
        self.emit = HUB.emit
        self.wants = HUB.wants
        self._observer: CallObserver | None = None

    @property
    def listening(self) -> bool:
        """Whether some subscriber would do anything with some event now."""
        return HUB.active

    @property
    def observer(self) -> CallObserver:
        """The span and call metrics of this policy's calls (built on first use)."""
        observer = self._observer
        if observer is None:
            # Two threads may race to build it: both observers are equivalent.
            observer = self._observer = CallObserver(self.kind, self.name)
        return observer

    def span(self) -> AbstractContextManager[None]:
        """The call's span and metrics around a block, as a decorated call records
        them; with no OpenTelemetry SDK set, a shared no-op."""
        if not OTEL.on:
            return _NO_SPAN
        return self.observer.span()

    def open_block(self) -> None:
        """Open the call's span for a ``with policy:`` block, whose ``__enter__`` and
        ``__exit__`` are separate calls: :meth:`close_block` ends it. Enter and exit
        of one block run in one context (a thread, or an asyncio task), so the span
        is kept in a context variable until then. Call it only while ``OTEL.on``."""
        span = self.observer.span()
        span.__enter__()
        OPEN_BLOCKS.set((span, self, OPEN_BLOCKS.get()))

    def close_block(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """End the span :meth:`open_block` opened last in this context, if it is this
        channel's (a block entered before an SDK was set has none).

        Drivers call it only while ``OTEL.on`` (one attribute read; the context
        variable costs more): a block still open when the adapter is turned off
        (``configure(enabled=False)``) keeps its span unended.
        """
        entry = OPEN_BLOCKS.get()
        if entry is None or entry[1] is not self:
            return
        span, _, below = entry
        OPEN_BLOCKS.set(below)
        span.__exit__(exc_type, error, traceback)

    def attempt(self, number: int) -> AbstractContextManager[None]:
        """A child span for retry attempt ``number`` (2 and up), if tracing is on."""
        if not (OTEL.on and OTEL.tracing):
            return _NO_SPAN
        return self.observer.attempt(number)

    def track_state(self, policy: _Stateful) -> None:
        """Report ``policy.state`` through the ``resilience.circuit_breaker.state`` gauge
        for as long as ``policy`` lives (it is held weakly)."""
        with _TRACKED_LOCK:
            _TRACKED[policy] = self

    def __repr__(self) -> str:
        return f"Telemetry({self.kind!r}, {self.name!r})"

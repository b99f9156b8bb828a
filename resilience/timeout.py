"""Timeout: bound how long a call may take.

* Async code: the call is cancelled (asyncio cancellation, ``asyncio.timeout``)
  when the time is up, and :class:`~resilience.TimeoutExceeded` is raised.
* Sync code, ``mode="cooperative"`` (the default): Python cannot interrupt a
  running function, so the timeout sets a deadline that flows inward. A retry
  inside never sleeps past it, a bulkhead never queues past it, and the callee
  reads :func:`~resilience.remaining_time` (to pass on as a socket or HTTP
  timeout) or calls :func:`~resilience.check_deadline`. A call that returns or
  fails after the deadline raises ``TimeoutExceeded`` all the same, so callers
  see the same outcome in every mode; only *when* they get control back differs.
* Sync code, ``mode="thread"``: the call runs in a worker thread and the caller
  stops waiting at the deadline. The thread cannot be stopped and keeps
  running to the end; its result is dropped and a warning is logged.

The async and cooperative drivers are written once, in
:mod:`resilience._async.timeout` (the sync one is generated from it,
:mod:`resilience._sync.timeout`); the thread mode is here.

In every mode the budget is bounded by an enclosing ``Timeout``'s deadline.
``seconds`` is at most 1e9 (or ``inf``, no limit); a wait handed to
``asyncio.timeout`` or ``Future.result`` never exceeds the platform's limit
(see :func:`resilience.clock.safe_wait`).
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar

from pydantic import field_validator

from ._async import timeout as _async_timeout
from ._counters import counter_value
from ._deadline import DEADLINE, RawDeadline, tighter
from ._policy import Policy
from ._sync import timeout as _sync_timeout
from ._validation import OptionsModel, PolicyName, PositiveDuration, options_from, options_model
from .clock import SYSTEM_CLOCK, Clock, safe_wait
from .errors import TimeoutExceeded
from .telemetry.channel import Telemetry
from .telemetry.events import TimeoutExpired, TimeoutThreadAbandoned

__all__ = ["Timeout", "TimeoutMode", "TimeoutOptions", "TimeoutStatistics"]

P = ParamSpec("P")
R = TypeVar("R")

TimeoutMode = Literal["cooperative", "thread"]

_log = logging.getLogger("resilience.timeout")


class _TimeoutRules(OptionsModel):
    """What :class:`Timeout`'s signature cannot say."""

    @field_validator("clock", check_fields=False)
    @classmethod
    def _default_clock(cls, value: Clock | None) -> Clock:
        return SYSTEM_CLOCK if value is None else value


@dataclass(frozen=True, slots=True)
class TimeoutStatistics:
    """Counts kept by one :class:`Timeout` over all its calls."""

    name: str
    seconds: float
    calls: int
    timeouts: int
    abandoned_threads: int


class Timeout(Policy):
    """Bound a call to ``seconds`` (a float or ``timedelta``); see the module docs."""

    kind = "timeout"

    __slots__ = (
        "__weakref__",
        "_abandoned",
        "_calls",
        "_clock",
        "_seconds",
        "_telemetry",
        "_timeouts",
        "mode",
        "name",
        "options",
    )

    def __init__(
        self,
        seconds: PositiveDuration,
        *,
        mode: TimeoutMode = "cooperative",
        name: PolicyName = "timeout",
        clock: Clock | None = None,
    ) -> None:
        """Each option is declared here once; ``TimeoutOptions`` is derived from it."""
        self._configure(options_from(TimeoutOptions, f"Timeout {name!r}", locals()))

    def _configure(self, options: Any) -> None:
        self.options = options
        self.name = options.name
        self._telemetry = Telemetry(self.kind, options.name)
        self.mode = options.mode
        self._seconds: float = options.seconds
        self._clock: Clock = options.clock
        self._calls = itertools.count()
        self._timeouts = itertools.count()
        self._abandoned = itertools.count()

    @property
    def seconds(self) -> float:
        return self._seconds

    @property
    def statistics(self) -> TimeoutStatistics:
        return TimeoutStatistics(
            name=self.name,
            seconds=self._seconds,
            calls=counter_value(self._calls),
            timeouts=counter_value(self._timeouts),
            abandoned_threads=counter_value(self._abandoned),
        )

    def _count_timeout(self, seconds: float) -> None:
        next(self._timeouts)
        tel = self._telemetry
        if tel.wants(TimeoutExpired):
            tel.emit(TimeoutExpired(self.name, seconds))

    def _passed_through(self, deadline: RawDeadline) -> None:
        """A ``TimeoutExceeded`` from inside (``check_deadline``, an inner timeout):
        it is ours too if our deadline has passed."""
        if deadline[1].now() >= deadline[0]:
            self._count_timeout(deadline[3])

    def _expired(self, seconds: float, cause: BaseException | None = None) -> TimeoutExceeded:
        self._count_timeout(seconds)
        error = TimeoutExceeded(self.name, seconds)
        error.__cause__ = cause
        return error

    # -- drivers --------------------------------------------------------------------

    def wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        if self.mode == "thread":
            return self._wrap_thread(fn)
        return _sync_timeout.wrap_sync(self, fn)

    wrap_async = _async_timeout.wrap_async

    # Thread mode: sync only (async code is cancelled by the event loop instead).

    def _wrap_thread(self, fn: Callable[P, R]) -> Callable[P, R]:
        seconds, clock, name, tick = self._seconds, self._clock, self.name, self._calls.__next__

        def timed_in_thread(*args: P.args, **kwargs: P.kwargs) -> R:
            tick()
            deadline = tighter(clock.now(), seconds, clock, name)
            future: Future[R] = Future()
            context = contextvars.copy_context()
            context.run(DEADLINE.set, deadline)

            def work() -> None:
                if not future.set_running_or_notify_cancel():
                    return
                try:
                    future.set_result(context.run(fn, *args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)

            worker = threading.Thread(target=work, name=f"resilience-timeout-{name}", daemon=True)
            worker.start()
            try:
                # Real time: a thread cannot be woken by a virtual clock.
                return future.result(timeout=safe_wait(deadline[0] - clock.now()))
            except FutureTimeout:
                if future.done():
                    raise  # the call's own TimeoutError (the same class since 3.11)
                next(self._abandoned)
                telemetry = self._telemetry
                if telemetry.wants(TimeoutThreadAbandoned):
                    telemetry.emit(TimeoutThreadAbandoned(name, deadline[3], worker.name))
                raise self._expired(deadline[3]) from None

        return timed_in_thread

    def __repr__(self) -> str:
        return f"Timeout({self._seconds!r}, mode={self.mode!r}, name={self.name!r})"


TimeoutOptions = options_model(Timeout.__init__, "TimeoutOptions", _TimeoutRules)

"""This process's replica of a shared circuit, and the bookkeeping of each call.

A :class:`~resilience.CircuitBreaker` keeps a local copy of the circuit its
store holds (state, version, trips, break), its own window of recent outcomes,
and its counters. This module holds that state and everything done to it
without store I/O: adopting a snapshot (and telling listeners), recording a
closed-state outcome (and saying when the circuit must trip), judging a call's
outcome, refusing a call. The drivers (:mod:`resilience._async.breaker`, and
the generated sync twin) talk to the store around it.

One lock guards the window and the local copy; it is never held while the
protected call or a store call runs.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._breaker_options import StateListener, make_window
from ._core.breaker import (
    FAILURE,
    IGNORED,
    SLOW,
    SUCCESS,
    CircuitState,
    ConsecutiveWindow,
    TimeWindow,
    Window,
)
from .classify import error_filter, make_classifier
from .clock import SYSTEM_CLOCK, Clock
from .errors import CircuitOpenError, StoreUnavailable
from .storage._guard import GuardedBreakerStore
from .storage.breakers import BreakerStore, CircuitSnapshot
from .telemetry.channel import Telemetry
from .telemetry.events import CallRejected, CircuitStateChanged

__all__ = ["BYPASS", "PASS", "CircuitReplica", "Trip"]

_log = logging.getLogger("resilience.breaker")

# Admission tickets: a probe's ticket is the circuit version it was admitted at (>= 0).
PASS = -1
"""Admitted in CLOSED state: the outcome goes to the window."""
BYPASS = -2
"""Let through unrecorded (DISABLED, or ``fail_open`` while the store is down)."""


@dataclass(frozen=True, slots=True)
class Trip:
    """The window says the circuit must open: at ``version``, because ``reason``."""

    version: int
    reason: str


class CircuitReplica:
    """The state a breaker keeps in this process; see the module docstring."""

    __slots__ = (
        "__weakref__",
        "_base_break",
        "_break_ceiling",
        "_break_multiplier",
        "_c_failures",
        "_c_fast_successes",
        "_c_ignored",
        "_c_rejections",
        "_c_slow",
        "_c_state_changes",
        "_c_successes",
        "_clock",
        "_closed",
        "_entries",
        "_fail_open",
        "_failure_if_result",
        "_fast_block",
        "_half_open_calls",
        "_is_failure",
        "_last_failure",
        "_listeners",
        "_lock",
        "_open_until",
        "_polling",
        "_probe_lease",
        "_reason",
        "_refresh_at",
        "_slow_call_duration",
        "_state",
        "_store",
        "_timed_window",
        "_trips",
        "_unwatch",
        "_version",
        "_window",
        "name",
        "options",
    )

    name: str
    _telemetry: Telemetry  # the breaker's channel: CircuitBreaker's slot, set before this
    _clock: Clock
    _store: BreakerStore
    _window: Window
    _polling: bool
    _unwatch: Callable[[], None] | None
    _fast_block: bool
    _fail_open: bool

    def _configure_replica(self, options: Any) -> None:
        """Everything but the store: the window, the judges, the counters, the copy."""
        self.options = options
        self.name = options.name
        self._clock = SYSTEM_CLOCK if options.clock is None else options.clock
        self._window = make_window(options)
        self._timed_window = isinstance(self._window, TimeWindow)
        self._is_failure = error_filter(options.failure_on, make_classifier(options.classifier))
        self._failure_if_result = options.failure_if_result
        self._slow_call_duration = options.slow_call_duration
        self._half_open_calls = options.half_open_calls
        self._probe_lease = options.probe_lease
        # The failure that last counted against the circuit, for CircuitOpenError.opened_by.
        self._last_failure: BaseException | None = None
        self._base_break = options.break_duration
        self._break_multiplier = options.break_multiplier
        self._break_ceiling = (
            math.inf if options.max_break_duration is None else options.max_break_duration
        )
        self._listeners: tuple[StateListener, ...] = ()
        if options.on_state_change is not None:
            self._listeners = (options.on_state_change,)
        self._lock = threading.Lock()
        # The with-block entries of this context: (ticket, start, the entry below).
        self._entries: contextvars.ContextVar[tuple[int, float, Any] | None]
        self._entries = contextvars.ContextVar(f"breaker {self.name}", default=None)
        self._c_fast_successes = itertools.count()
        self._c_successes = itertools.count()
        self._c_failures = itertools.count()
        self._c_slow = itertools.count()
        self._c_ignored = itertools.count()
        self._c_rejections = itertools.count()
        self._c_state_changes = itertools.count()
        # The local copy of the shared circuit; version -1 adopts any snapshot.
        self._state = CircuitState.CLOSED
        self._closed = True
        self._version = -1
        self._trips = 0
        self._reason = ""
        self._open_until = 0.0
        self._refresh_at = -math.inf
        self._fail_open = options.on_store_failure == "fail_open"

    # -- the local copy of the circuit ----------------------------------------------

    def _on_snapshot(self, snapshot: CircuitSnapshot) -> None:
        """Store push: another breaker (or this one) moved the circuit."""
        self._adopt(snapshot, self._clock.now())

    def _adopt(self, snapshot: CircuitSnapshot, now: float, *, current: bool = False) -> None:
        """Take ``snapshot`` as the current circuit if it is newer; tell listeners.

        ``current`` marks the store's answer to a load or a lost compare-and-set:
        the circuit as it is now. If that is *older* than ours, the store has lost
        its state (a Redis restarted without persistence); its answer wins, or
        every transition of ours would keep failing against the reset version.
        Pushed snapshots may arrive out of order, so an older one is ignored.
        """
        with self._lock:
            if self._polling:
                self._refresh_at = now + self._store.breaker_staleness
            if snapshot.version == self._version or (
                snapshot.version < self._version and not current
            ):
                return
            first_look = self._version < 0
            old = self._state
            self._version = snapshot.version
            self._state = new = snapshot.state
            self._trips = snapshot.trips
            self._reason = snapshot.reason
            self._open_until = now + snapshot.break_remaining
            self._window.clear()  # a new period of the circuit starts with an empty window
            self._closed = new is CircuitState.CLOSED
            if self._closed:
                self._last_failure = None
            listeners = self._listeners
        if old is not new and not first_look:
            self._state_changed(old, new, snapshot.reason, listeners)

    def _state_changed(
        self,
        old: CircuitState,
        new: CircuitState,
        reason: str,
        listeners: tuple[StateListener, ...],
    ) -> None:
        next(self._c_state_changes)
        tel = self._telemetry
        if tel.wants(CircuitStateChanged):
            tel.emit(CircuitStateChanged(self.name, old.value, new.value, reason))
        for listener in listeners:
            try:
                listener(old, new, reason)
            except Exception:  # a broken listener must not break the protected code
                _log.exception("circuit breaker %r: state listener %r failed", self.name, listener)

    def _rejection(self, now: float) -> CircuitOpenError:
        next(self._c_rejections)
        retry_after = None
        state = self._state
        if state is CircuitState.OPEN:
            retry_after = max(0.0, self._open_until - now)
        tel = self._telemetry
        if tel.wants(CallRejected):
            tel.emit(CallRejected(self.name, state.value, retry_after))
        opened_by = self._last_failure if state is not CircuitState.FORCED_OPEN else None
        return CircuitOpenError(self.name, retry_after, opened_by=opened_by)

    def _report_failed(self, error: Exception) -> None:
        """Bookkeeping after a call failed: logged, never raised over the call's own outcome."""
        if isinstance(error, StoreUnavailable) and isinstance(self._store, GuardedBreakerStore):
            # The guard logs an outage once; one line per call would flood the log.
            _log.debug("circuit breaker %r: outcome not shared: %s", self.name, error)
        else:
            _log.exception("circuit breaker %r: could not record an outcome", self.name)

    # -- closed-state outcomes: each returns the trip due, if the window says so -----

    def _closed_outcome(self, outcome: int) -> Trip | None:
        if outcome == SUCCESS:
            return self._closed_success()
        self._count(outcome)
        if outcome == IGNORED:
            return None
        return self._record_closed(outcome, self._clock.now() if self._timed_window else 0.0)

    def _closed_success(self) -> Trip | None:
        """``_closed_outcome(SUCCESS)`` in one frame: the ratio modes' success path."""
        next(self._c_successes)
        now = self._clock.now() if self._timed_window else 0.0
        if self._window.note_success(now):
            return None
        with self._lock:
            if self._state is not CircuitState.CLOSED:
                return None
            reason = self._window.add(SUCCESS, now)
            if reason is None:
                return None
            return Trip(self._version, reason)

    def _reset_streak(self) -> None:
        # Only reached when a success follows failures: the lock is taken rarely.
        self._record_closed(SUCCESS, 0.0)

    def _record_closed(self, outcome: int, now: float) -> Trip | None:
        """Put a closed-state outcome in the window; the trip due, if it tripped."""
        if outcome == IGNORED:
            return None
        with self._lock:
            if self._state is not CircuitState.CLOSED:
                return None  # finished after the circuit opened: that period is over
            reason = self._window.add(outcome, now)
            version = self._version
        return None if reason is None else Trip(version, reason)

    def _count(self, outcome: int) -> None:
        if outcome == SUCCESS:
            next(self._c_successes)
        elif outcome == FAILURE:
            next(self._c_failures)
        elif outcome == SLOW:
            next(self._c_slow)
        else:
            next(self._c_ignored)

    # -- judging a call's outcome ---------------------------------------------------------

    def _outcome_of_error(self, exc: BaseException, start: float | None) -> int:
        if not isinstance(exc, Exception):
            return IGNORED
        try:
            failed = self._is_failure(exc, None)
        except Exception:
            return self._broken_judge("failure_on/classifier")
        if failed:
            self._last_failure = exc
            return FAILURE
        return self._outcome_of_time(start)

    def _outcome_of_result(self, result: Any, start: float | None) -> int:
        check = self._failure_if_result
        if check is not None:
            try:
                failed = check(result)
            except Exception:
                return self._broken_judge("failure_if_result")
            if failed:
                return FAILURE
        return self._outcome_of_time(start)

    def _broken_judge(self, what: str) -> int:
        # A raising predicate must neither replace the protected call's outcome
        # nor keep a probe permit: the call counts as neither success nor failure.
        _log.exception("circuit breaker %r: %s raised; the call is not counted", self.name, what)
        return IGNORED

    def _outcome_of_time(self, start: float | None) -> int:
        limit = self._slow_call_duration
        if limit is not None and start is not None and self._clock.now() - start >= limit:
            return SLOW
        return SUCCESS

    def _judges_results(self) -> bool:
        """True when a returned value needs judging (result check or slow-call timing)."""
        return self._failure_if_result is not None or self._slow_call_duration is not None

    def _fast_path_ok(self) -> bool:
        """True when a closed-state success only needs the streak check."""
        return (
            isinstance(self._window, ConsecutiveWindow)
            and self._slow_call_duration is None
            and self._failure_if_result is None
            and not self._polling
        )

"""Circuit breaker: stop calling a dependency that keeps failing, then probe it.

Layers, from the inside out:

* :mod:`resilience._core.breaker`: the pure state machine (windows, admission
  and probe rules, break durations); no I/O, ``now`` passed in.
* :mod:`resilience.storage.breakers`: the shared circuit (state, version,
  probe permits) behind a compare-and-set protocol.
* this module: the drivers. Store I/O is written once, as generators that
  *yield* store operations (``_admit``, ``_finish``...); the sync driver runs
  them with plain calls and the async driver with awaits, so there is one copy
  of the logic for both.

The closed-state success path is one closure that reads a flag, calls the
function, and ticks an atomic counter; no lock is ever held while the protected
call runs. A lock guards only the window and the local copy of the circuit.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Annotated, Any, ClassVar, ParamSpec, TypeAlias, TypeVar

from pydantic import Field, ValidationInfo, field_validator

from ._clock import SYSTEM_CLOCK, Clock
from ._core.breaker import (
    FAILURE,
    IGNORED,
    SLOW,
    SUCCESS,
    Admission,
    CircuitState,
    ConsecutiveWindow,
    CountWindow,
    TimeWindow,
    TripRule,
    Window,
    admission,
    break_duration,
    probe_verdict,
)
from ._counters import counter_value
from ._policy import Policy
from ._validation import (
    FiniteNumber,
    FinitePositiveSeconds,
    Integer,
    OptionsModel,
    PolicyName,
    PositiveSeconds,
    build_options,
)
from .classify import (
    ClassifierLike,
    ErrorClass,
    error_filter,
    make_classifier,
    normalize_error_selector,
)
from .errors import CircuitOpenError, StoreUnavailable
from .storage._guard import FailureMode, GuardedBreakerStore
from .storage.breakers import BreakerStore, CircuitSnapshot, MemoryBreakerStore
from .telemetry._hub import HUB
from .telemetry.events import CallRejected, CircuitStateChanged
from .telemetry.otel import OTEL, CallObserver, track_breaker

__all__ = [
    "BreakerOptions",
    "BreakerStatistics",
    "CircuitBreaker",
    "CircuitState",
    "FailureOn",
    "StateListener",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_log = logging.getLogger("resilience.breaker")

StateListener: TypeAlias = Callable[[CircuitState, CircuitState, str], object]
"""``listener(old_state, new_state, reason)``, called after every state change."""

FailureOn: TypeAlias = (
    Iterable[ErrorClass | str | type[BaseException]] | Callable[[BaseException], bool]
)
"""What ``failure_on=`` accepts: error classes, exception types, or a predicate."""

# A store operation, as the driver generators yield it: (method name, *arguments).
_StoreOp: TypeAlias = tuple[Any, ...]
_Steps: TypeAlias = Generator[_StoreOp, Any, T]

# Admission tickets: a probe's ticket is the circuit version it was admitted at (>= 0).
_PASS = -1
_BYPASS = -2

_DEFAULT_THRESHOLD = 5
# Bounds that keep windows allocatable and counts meaningful.
_MAX_WINDOW_SIZE = 1_000_000
_MAX_COUNT = 1_000_000
_DEFAULT_WINDOW_SIZE = 100
_DEFAULT_MINIMUM_CALLS = 10


class BreakerOptions(OptionsModel):
    """Validated options of a :class:`CircuitBreaker` (see its docstring)."""

    name: PolicyName = "breaker"
    failure_threshold: Annotated[Integer, Field(ge=1, le=_MAX_COUNT)] | None = None
    failure_ratio: Annotated[FiniteNumber, Field(gt=0, le=1)] | None = None
    window_size: Annotated[Integer, Field(ge=1, le=_MAX_WINDOW_SIZE)] | None = None
    window: PositiveSeconds | None = None
    window_buckets: Annotated[Integer, Field(ge=1, le=10_000)] = 10
    minimum_calls: Annotated[Integer, Field(ge=1, le=_MAX_COUNT)] | None = None
    slow_call_duration: PositiveSeconds | None = None
    slow_call_ratio: Annotated[FiniteNumber, Field(gt=0, le=1)] | None = None
    break_duration: FinitePositiveSeconds = 30.0
    break_multiplier: Annotated[FiniteNumber, Field(ge=1)] = 1.0
    max_break_duration: FinitePositiveSeconds | None = None
    half_open_calls: Annotated[Integer, Field(ge=1, le=_MAX_COUNT)] = 1
    probe_lease: FinitePositiveSeconds | None = None
    """Seconds a half-open probe may hold its permit; ``None``: the store's
    ``probe_lease`` (60 s by default). A probe that never returns (its process
    killed, its task cancelled) cannot wedge the circuit for longer."""
    failure_on: Any = None
    failure_if_result: Callable[[Any], bool] | None = None
    classifier: Any = None
    on_state_change: StateListener | None = None
    store: Any = None
    clock: Clock = SYSTEM_CLOCK
    on_store_failure: FailureMode = "fail_closed"
    """While a shared store is unavailable: ``"fail_closed"`` (a call the breaker
    cannot admit without the store raises :class:`~resilience.StoreUnavailable`),
    ``"fail_open"`` (such a call runs, unrecorded), ``"local"`` (the breaker goes
    on with an in-process circuit until the store is back). See docs/storage.md."""

    # Cross-field rules live on the later field, so the error names it.

    @field_validator("failure_ratio")
    @classmethod
    def _one_mode(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("failure_threshold") is not None:
            raise ValueError(
                "cannot be combined with failure_threshold: choose consecutive failures "
                "(failure_threshold) or a failure ratio over a window (failure_ratio)"
            )
        return value

    @field_validator("window_size", "window", "minimum_calls", "slow_call_ratio")
    @classmethod
    def _ratio_mode_only(cls, value: Any, info: ValidationInfo) -> Any:
        # failure_ratio is absent from info.data when it was itself invalid: no second error.
        if (
            value is not None
            and "failure_ratio" in info.data
            and info.data["failure_ratio"] is None
        ):
            raise ValueError("only applies to the failure_ratio mode; set failure_ratio too")
        if info.field_name == "window" and value is not None and info.data.get("window_size"):
            raise ValueError("cannot be combined with window_size: choose one window")
        return value

    @field_validator("minimum_calls")
    @classmethod
    def _fits_window(cls, value: int | None, info: ValidationInfo) -> int | None:
        size = info.data.get("window_size")
        if value is not None and size is not None and value > size:
            raise ValueError(f"must be <= window_size ({size}), or the ratio never counts")
        return value

    @field_validator("slow_call_ratio")
    @classmethod
    def _needs_duration(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("slow_call_duration") is None:
            raise ValueError("needs slow_call_duration (what counts as slow)")
        return value

    @field_validator("max_break_duration")
    @classmethod
    def _not_below_break(cls, value: float | None, info: ValidationInfo) -> float | None:
        base = info.data.get("break_duration")
        if value is not None and base is not None and value < base:
            raise ValueError(f"must be >= break_duration ({base})")
        return value

    @field_validator("failure_on")
    @classmethod
    def _check_failure_on(cls, value: Any) -> Any:
        return normalize_error_selector(value)

    @field_validator("classifier")
    @classmethod
    def _check_classifier(cls, value: Any) -> Any:
        try:
            make_classifier(value)
        except (TypeError, ValueError) as error:
            raise ValueError(str(error)) from None
        return value

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, BreakerStore):
            raise ValueError(f"expected a BreakerStore, got {type(value).__name__}")
        return value


@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    """Counts kept by one :class:`CircuitBreaker` object since it was built.

    ``calls`` counts the calls let through (``successes + failures + slow_calls
    + ignored``); rejected calls are counted in ``rejections`` only, and calls
    let through while DISABLED are not counted. ``state_changes`` counts the
    transitions this object observed.
    """

    name: str
    state: CircuitState
    calls: int
    successes: int
    failures: int
    slow_calls: int
    ignored: int
    rejections: int
    state_changes: int


class CircuitBreaker(Policy):
    """A circuit breaker: rejects calls at once while a dependency keeps failing.

    **Opening.** In the default *consecutive* mode the circuit opens when
    ``failure_threshold`` (default 5) calls in a row fail. In *ratio* mode
    (``failure_ratio``) it opens when, with at least ``minimum_calls`` (default
    10, at most the window) calls in the window, ``failures / calls >=
    failure_ratio``; the window is the last ``window_size`` calls (default 100)
    or the last ``window`` seconds, kept in ``window_buckets`` slices.

    **What fails.** An exception is a failure when ``failure_on`` says so: by
    default, any :class:`~resilience.ErrorClass` but PERMANENT (a ``ValueError``
    or an HTTP 404 does not open a breaker: the dependency answered). Pass
    error classes, exception types, or a predicate ``exc -> bool``; a returned
    value is a failure when ``failure_if_result(value)`` is true. Any other
    exception counts as a *success*. ``BaseException``s that are not
    ``Exception`` (``KeyboardInterrupt``, ``asyncio.CancelledError``) count as
    neither. A call that succeeds but takes ``slow_call_duration`` or longer is
    a *slow call*: it counts as a failure, and in ratio mode also towards
    ``slow_call_ratio``, a separate threshold for slow calls alone.

    **Open, half-open.** While OPEN every call fails at once with
    :class:`~resilience.CircuitOpenError` (``retry_after`` = seconds left).
    The first call after ``break_duration`` moves the circuit to HALF_OPEN,
    where at most ``half_open_calls`` probes run at a time (the others are
    rejected). A failed or slow probe re-opens it; ``half_open_calls``
    successful probes close it. Each re-opening in a row multiplies the break by
    ``break_multiplier`` up to ``max_break_duration``.

    **By hand.** :meth:`isolate` forces it open (FORCED_OPEN) until
    :meth:`reset`; :meth:`disable` lets every call through (DISABLED) until
    :meth:`reset`, which closes the circuit and clears its window.

    **Sharing.** Breakers with the same ``name`` on the same ``store`` share one
    circuit (see :mod:`resilience.storage.breakers`); each keeps its own window.
    """

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

    kind: ClassVar[str] = "circuit_breaker"

    def __init__(
        self,
        name: str = "breaker",
        *,
        failure_threshold: int | None = None,
        failure_ratio: float | None = None,
        window_size: int | None = None,
        window: float | Any | None = None,
        window_buckets: int = 10,
        minimum_calls: int | None = None,
        slow_call_duration: float | Any | None = None,
        slow_call_ratio: float | None = None,
        break_duration: float | Any = 30.0,
        break_multiplier: float = 1.0,
        max_break_duration: float | Any | None = None,
        half_open_calls: int = 1,
        probe_lease: float | Any | None = None,
        failure_on: FailureOn | ErrorClass | str | type[BaseException] | None = None,
        failure_if_result: Callable[[Any], bool] | None = None,
        classifier: ClassifierLike | Iterable[ClassifierLike] = None,
        on_state_change: StateListener | None = None,
        store: BreakerStore | None = None,
        clock: Clock | None = None,
        on_store_failure: FailureMode = "fail_closed",
    ) -> None:
        options = build_options(
            BreakerOptions,
            f"CircuitBreaker {name!r}",
            name=name,
            failure_threshold=failure_threshold,
            failure_ratio=failure_ratio,
            window_size=window_size,
            window=window,
            window_buckets=window_buckets,
            minimum_calls=minimum_calls,
            slow_call_duration=slow_call_duration,
            slow_call_ratio=slow_call_ratio,
            break_duration=break_duration,
            break_multiplier=break_multiplier,
            max_break_duration=max_break_duration,
            half_open_calls=half_open_calls,
            probe_lease=probe_lease,
            failure_on=failure_on,
            failure_if_result=failure_if_result,
            classifier=classifier,
            on_state_change=on_state_change,
            store=store,
            clock=SYSTEM_CLOCK if clock is None else clock,
            on_store_failure=on_store_failure,
        )
        self._configure(options)

    def _configure(self, options: BreakerOptions) -> None:
        self.options = options
        self.name = options.name
        self._clock = options.clock
        self._window = _make_window(options)
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
        store: BreakerStore = options.store if options.store is not None else MemoryBreakerStore()
        self._fail_open = options.on_store_failure == "fail_open"
        if not isinstance(store, MemoryBreakerStore):
            # A store that can fail: its calls go through the failure policy.
            store = GuardedBreakerStore(
                store, options.on_store_failure, self._clock, f"CircuitBreaker {self.name!r}"
            )
        self._store = store
        self._unwatch = store.breaker_watch(self.name, self._on_snapshot)
        self._polling = self._unwatch is None
        # A with-block needs no admission steps while closed, unless it must be timed.
        self._fast_block = not self._judges_results() and not self._polling
        with contextlib.suppress(StoreUnavailable):  # else the first call that needs it loads it
            self._adopt(
                store.breaker_load(self.name, self._clock.now()), self._clock.now(), current=True
            )
        track_breaker(self)  # the state gauge of the OpenTelemetry adapter (held weakly)

    # -- public state -------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The circuit's state as this breaker last saw it.

        OPEN stays OPEN after the break is over until a call comes to probe.
        """
        return self._state

    @property
    def retry_after(self) -> float | None:
        """Seconds until an OPEN circuit lets a probe through; ``None`` otherwise."""
        if self._state is not CircuitState.OPEN:
            return None
        return max(0.0, self._open_until - self._clock.now())

    @property
    def statistics(self) -> BreakerStatistics:
        """Counts over every call made through this object so far."""
        successes = counter_value(self._c_fast_successes) + counter_value(self._c_successes)
        failures = counter_value(self._c_failures)
        slow = counter_value(self._c_slow)
        ignored = counter_value(self._c_ignored)
        return BreakerStatistics(
            name=self.name,
            state=self._state,
            calls=successes + failures + slow + ignored,
            successes=successes,
            failures=failures,
            slow_calls=slow,
            ignored=ignored,
            rejections=counter_value(self._c_rejections),
            state_changes=counter_value(self._c_state_changes),
        )

    def add_listener(self, listener: StateListener) -> StateListener:
        """Call ``listener(old, new, reason)`` after every state change; returns it
        (so it works as a decorator). Listeners never run on the success path."""
        with self._lock:
            self._listeners = (*self._listeners, listener)
        return listener

    def remove_listener(self, listener: StateListener) -> None:
        with self._lock:
            self._listeners = tuple(x for x in self._listeners if x is not listener)

    # -- manual control ----------------------------------------------------------

    def isolate(self) -> None:
        """Force the circuit open (FORCED_OPEN): reject every call until :meth:`reset`."""
        self._run(self._force(CircuitState.FORCED_OPEN, "isolated by hand"))

    def disable(self) -> None:
        """Let every call through and record nothing (DISABLED) until :meth:`reset`."""
        self._run(self._force(CircuitState.DISABLED, "disabled by hand"))

    def reset(self) -> None:
        """Close the circuit and forget its window and its break history."""
        self._run(self._force(CircuitState.CLOSED, "reset by hand"))

    async def aisolate(self) -> None:
        """:meth:`isolate` through the store's async interface."""
        await self._arun(self._force(CircuitState.FORCED_OPEN, "isolated by hand"))

    async def adisable(self) -> None:
        """:meth:`disable` through the store's async interface."""
        await self._arun(self._force(CircuitState.DISABLED, "disabled by hand"))

    async def areset(self) -> None:
        """:meth:`reset` through the store's async interface."""
        await self._arun(self._force(CircuitState.CLOSED, "reset by hand"))

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
        if old is new or first_look:
            return
        next(self._c_state_changes)
        if HUB.active:
            HUB.emit(CircuitStateChanged(self.name, old.value, new.value, snapshot.reason))
        for listener in listeners:
            try:
                listener(old, new, snapshot.reason)
            except Exception:  # a broken listener must not break the protected code
                _log.exception("circuit breaker %r: state listener %r failed", self.name, listener)

    # -- the logic, written once as generators of store operations -------------------

    def _transition(
        self, expected_version: int, state: CircuitState, reason: str, trips: int, now: float
    ) -> _Steps[bool]:
        duration = 0.0
        if state is CircuitState.OPEN:
            duration = break_duration(
                trips, self._base_break, self._break_multiplier, self._break_ceiling
            )
        won, snapshot = yield (
            "breaker_transition",
            self.name,
            expected_version,
            state,
            reason,
            trips,
            duration,
            now,
        )
        self._adopt(snapshot, now, current=not won)
        return bool(won)

    def _trip(self, version: int, reason: str, now: float) -> _Steps[bool]:
        """Open a closed circuit at ``version``: the closed-state window says so."""
        won = yield from self._transition(version, CircuitState.OPEN, reason, 1, now)
        with self._lock:
            lost_state = self._state is CircuitState.CLOSED and self._version < version
            version = self._version
        if not won and lost_state:
            # The store's version went back: it lost the circuit (a restart
            # without persistence). The trip is still due, at the store's version.
            won = yield from self._transition(version, CircuitState.OPEN, reason, 1, now)
        return won

    def _force(self, state: CircuitState, reason: str) -> _Steps[None]:
        for _ in range(100):  # only lost races repeat; each loss means the version moved on
            now = self._clock.now()
            if (yield from self._transition(self._version, state, reason, 0, now)):
                return
        raise RuntimeError(f"circuit {self.name!r}: could not win a transition to {state}")

    def _refresh(self, now: float) -> _Steps[None]:
        if self._polling and now >= self._refresh_at:
            snapshot = yield ("breaker_load", self.name, now)
            self._adopt(snapshot, now, current=True)

    def _admit(self, now: float) -> _Steps[int]:
        """Decide whether a call may run; return its ticket or raise ``CircuitOpenError``."""
        yield from self._refresh(now)
        for _ in range(4):  # START_PROBING loops at most once unless races keep being lost
            with self._lock:
                state, version, open_until = self._state, self._version, self._open_until
                trips = self._trips
            decision = admission(state, now, open_until)
            if decision is Admission.PASS:
                return _PASS
            if decision is Admission.BYPASS:
                return _BYPASS
            if decision is Admission.START_PROBING:
                yield from self._transition(
                    version, CircuitState.HALF_OPEN, "break duration elapsed", trips, now
                )
                continue
            if decision is Admission.PROBE:
                granted = yield (
                    "breaker_acquire_probe",
                    self.name,
                    version,
                    self._half_open_calls,
                    self._probe_lease,
                    now,
                )
                if granted:
                    return version
            break
        raise self._rejection(now)

    def _rejection(self, now: float) -> CircuitOpenError:
        next(self._c_rejections)
        retry_after = None
        state = self._state
        if state is CircuitState.OPEN:
            retry_after = max(0.0, self._open_until - now)
        if HUB.active:
            HUB.emit(CallRejected(self.name, state.value, retry_after))
        opened_by = self._last_failure if state is not CircuitState.FORCED_OPEN else None
        return CircuitOpenError(self.name, retry_after, opened_by=opened_by)

    def _finish(self, ticket: int, outcome: int, now: float) -> _Steps[None]:
        """Record the outcome of an admitted call; open or close the circuit if due."""
        self._count(outcome)
        if ticket == _PASS:
            trip = self._record_closed(outcome, now)
            if trip is not None:
                yield from trip
            return
        if ticket == _BYPASS:
            return
        if outcome in (FAILURE, SLOW):
            # Re-open at once, without handing the permit back first: a permit
            # released before the transition could admit one more probe, in
            # another process, into a half-open period that is already lost.
            # (The transition drops every permit of the version.)
            reason = "probe call was slow" if outcome == SLOW else "probe call failed"
            yield from self._transition(ticket, CircuitState.OPEN, reason, self._trips + 1, now)
            return
        succeeded = None if outcome == IGNORED else outcome == SUCCESS
        successes = yield ("breaker_release_probe", self.name, ticket, succeeded)
        if successes < 0:
            return  # the circuit moved on while this probe ran
        verdict = probe_verdict(outcome, successes, self._half_open_calls)
        if verdict is CircuitState.OPEN:
            reason = "probe call was slow" if outcome == SLOW else "probe call failed"
            yield from self._transition(ticket, verdict, reason, self._trips + 1, now)
        elif verdict is CircuitState.CLOSED:
            reason = f"{successes} probe call{'s' if successes > 1 else ''} succeeded"
            yield from self._transition(ticket, verdict, reason, 0, now)

    def _record_closed(self, outcome: int, now: float) -> _Steps[bool] | None:
        """Put a closed-state outcome in the window; the steps to open, if it tripped."""
        if outcome == IGNORED:
            return None
        with self._lock:
            if self._state is not CircuitState.CLOSED:
                return None  # finished after the circuit opened: that period is over
            reason = self._window.add(outcome, now)
            version = self._version
        if reason is None:
            return None
        # Read the clock again: an untimed window is handed 0.0, and the break
        # must start now, not at the epoch of the clock.
        return self._trip(version, reason, self._clock.now())

    def _count(self, outcome: int) -> None:
        if outcome == SUCCESS:
            next(self._c_successes)
        elif outcome == FAILURE:
            next(self._c_failures)
        elif outcome == SLOW:
            next(self._c_slow)
        else:
            next(self._c_ignored)

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

    # -- running the generators: the only sync/async difference ---------------------------

    def _run(self, steps: _Steps[T]) -> T:
        store = self._store
        try:
            op = next(steps)
            while True:
                op = steps.send(getattr(store, op[0])(*op[1:]))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _arun(self, steps: _Steps[T]) -> T:
        store = self._store
        try:
            op = next(steps)
            while True:
                op = steps.send(await getattr(store, "a" + op[0])(*op[1:]))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _admitted(self, start: float) -> int:
        """Admit a call; a store failure gets the ``on_store_failure`` behaviour."""
        try:
            return self._run(self._admit(start))
        except StoreUnavailable:
            if self._fail_open:
                return _BYPASS  # runs unguarded and unrecorded
            next(self._c_rejections)
            raise

    async def _aadmitted(self, start: float) -> int:
        try:
            return await self._arun(self._admit(start))
        except StoreUnavailable:
            if self._fail_open:
                return _BYPASS
            next(self._c_rejections)
            raise

    def _report_failed(self, error: Exception) -> None:
        if isinstance(error, StoreUnavailable) and isinstance(self._store, GuardedBreakerStore):
            # The guard logs an outage once; one line per call would flood the log.
            _log.debug("circuit breaker %r: outcome not shared: %s", self.name, error)
        else:
            _log.exception("circuit breaker %r: could not record an outcome", self.name)

    def _report(self, steps: _Steps[Any] | None) -> None:
        """Run bookkeeping after a call; its failure is logged, never raised over
        the protected call's own result or exception."""
        if steps is None:
            return
        try:
            self._run(steps)
        except Exception as error:
            self._report_failed(error)

    async def _areport(self, steps: _Steps[Any] | None) -> None:
        if steps is None:
            return
        try:
            await self._arun(steps)
        except Exception as error:
            self._report_failed(error)

    # -- closed-state outcome handlers used by the fast closures -----------------------

    def _closed_outcome(self, outcome: int) -> _Steps[bool] | None:
        if outcome == SUCCESS:
            return self._closed_success()
        self._count(outcome)
        if outcome == IGNORED:
            return None
        return self._record_closed(outcome, self._clock.now() if self._timed_window else 0.0)

    def _closed_success(self) -> _Steps[bool] | None:
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
            version = self._version
        return self._trip(version, reason, self._clock.now())

    def _judges_results(self) -> bool:
        """True when a returned value needs judging (result check or slow-call timing)."""
        return self._failure_if_result is not None or self._slow_call_duration is not None

    def _reset_streak(self) -> None:
        # Only reached when a success follows failures: the lock is taken rarely.
        self._record_closed(SUCCESS, 0.0)

    def _fast_path_ok(self) -> bool:
        """True when a closed-state success only needs the streak check."""
        return (
            isinstance(self._window, ConsecutiveWindow)
            and self._slow_call_duration is None
            and self._failure_if_result is None
            and not self._polling
        )

    # -- sync driver --------------------------------------------------------------------

    def wrap_sync(self, fn: Callable[P, R], observer: CallObserver | None = None) -> Callable[P, R]:
        # One body, built twice: without an observer (what an observer calls
        # inside its span) and with one; see resilience.telemetry.otel.
        unobserved = self._guard_sync(fn, None, fn)  # no observer: the last argument is unused
        return unobserved if observer is None else self._guard_sync(fn, observer, unobserved)

    def _guard_sync(
        self, fn: Callable[P, R], observer: CallObserver | None, unobserved: Callable[P, R]
    ) -> Callable[P, R]:
        breaker = self
        slow_path = self._call_sync
        closed_outcome = self._closed_outcome
        report = self._report
        outcome_of_error = self._outcome_of_error

        if self._fast_path_ok():
            window = self._window
            assert isinstance(window, ConsecutiveWindow)
            tick = self._c_fast_successes.__next__
            reset_streak = self._reset_streak

            def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
                if observer is not None and OTEL.on:
                    return observer.call_sync(unobserved, args, kwargs)
                if breaker._closed:
                    try:
                        result = fn(*args, **kwargs)
                    except BaseException as exc:
                        steps = closed_outcome(outcome_of_error(exc, None))
                        if steps is not None:
                            report(steps)
                        raise
                    if window.streak:
                        reset_streak()
                    tick()
                    return result
                return slow_path(fn, args, kwargs)

            return guarded

        now = self._clock.now
        timed = self._slow_call_duration is not None
        polling = self._polling
        outcome_of_result = self._outcome_of_result

        judge = self._judges_results()
        closed_success = self._closed_success

        def guarded_checked(*args: P.args, **kwargs: P.kwargs) -> R:
            if observer is not None and OTEL.on:
                return observer.call_sync(unobserved, args, kwargs)
            if breaker._closed and (not polling or now() < breaker._refresh_at):
                start = now() if timed else None
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    steps = closed_outcome(outcome_of_error(exc, start))
                    if steps is not None:
                        report(steps)
                    raise
                if judge:
                    steps = closed_outcome(outcome_of_result(result, start))
                else:
                    steps = closed_success()
                if steps is not None:
                    report(steps)
                return result
            return slow_path(fn, args, kwargs)

        return guarded_checked

    def _call_sync(self, fn: Callable[..., R], args: Any, kwargs: Any) -> R:
        start = self._clock.now()
        ticket = self._admitted(start)
        if ticket == _BYPASS:
            return fn(*args, **kwargs)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            outcome = self._outcome_of_error(exc, start)
            self._report(self._finish(ticket, outcome, self._clock.now()))
            raise
        outcome = self._outcome_of_result(result, start)
        self._report(self._finish(ticket, outcome, self._clock.now()))
        return result

    def __enter__(self) -> CircuitBreaker:
        entries = self._entries
        if self._fast_block and self._closed:
            # Closed, nothing to time: skip the admission steps (the common case).
            entries.set((_PASS, 0.0, entries.get()))
            return self
        start = self._clock.now()
        ticket = self._admitted(start)
        entries.set((ticket, start, entries.get()))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entries = self._entries
        entry = entries.get()
        if exc is None and entry is not None and entry[0] == _PASS and self._fast_block:
            entries.set(entry[2])
            steps = self._closed_success()
            if steps is not None:
                self._report(steps)
            return
        self._report(self._exit_steps(exc))

    def _exit_steps(self, exc: BaseException | None) -> _Steps[None]:
        entry = self._entries.get()
        if entry is None:
            raise RuntimeError(f"circuit {self.name!r}: __exit__ without __enter__")
        ticket, start, previous = entry
        self._entries.set(previous)
        outcome = (
            self._outcome_of_time(start) if exc is None else self._outcome_of_error(exc, start)
        )
        return self._finish(ticket, outcome, self._clock.now())

    # -- async driver ------------------------------------------------------------------

    def wrap_async(
        self, fn: Callable[P, Awaitable[R]], observer: CallObserver | None = None
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        unobserved = self._guard_async(fn, None, fn)  # no observer: the last argument is unused
        return unobserved if observer is None else self._guard_async(fn, observer, unobserved)

    def _guard_async(
        self,
        fn: Callable[P, Awaitable[R]],
        observer: CallObserver | None,
        unobserved: Callable[P, Awaitable[R]],
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        breaker = self
        slow_path = self._call_async
        closed_outcome = self._closed_outcome
        areport = self._areport
        outcome_of_error = self._outcome_of_error

        if self._fast_path_ok():
            window = self._window
            assert isinstance(window, ConsecutiveWindow)
            tick = self._c_fast_successes.__next__
            reset_streak = self._reset_streak

            async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
                if observer is not None and OTEL.on:
                    return await observer.call_async(unobserved, args, kwargs)
                if breaker._closed:
                    try:
                        result = await fn(*args, **kwargs)
                    except BaseException as exc:
                        steps = closed_outcome(outcome_of_error(exc, None))
                        if steps is not None:
                            await areport(steps)
                        raise
                    if window.streak:
                        reset_streak()
                    tick()
                    return result
                return await slow_path(fn, args, kwargs)

            return guarded

        now = self._clock.now
        timed = self._slow_call_duration is not None
        polling = self._polling
        outcome_of_result = self._outcome_of_result

        judge = self._judges_results()
        closed_success = self._closed_success

        async def guarded_checked(*args: P.args, **kwargs: P.kwargs) -> R:
            if observer is not None and OTEL.on:
                return await observer.call_async(unobserved, args, kwargs)
            if breaker._closed and (not polling or now() < breaker._refresh_at):
                start = now() if timed else None
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    steps = closed_outcome(outcome_of_error(exc, start))
                    if steps is not None:
                        await areport(steps)
                    raise
                if judge:
                    steps = closed_outcome(outcome_of_result(result, start))
                else:
                    steps = closed_success()
                if steps is not None:
                    await areport(steps)
                return result
            return await slow_path(fn, args, kwargs)

        return guarded_checked

    async def _call_async(self, fn: Callable[..., Awaitable[R]], args: Any, kwargs: Any) -> R:
        start = self._clock.now()
        ticket = await self._aadmitted(start)
        if ticket == _BYPASS:
            return await fn(*args, **kwargs)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            outcome = self._outcome_of_error(exc, start)
            await self._areport(self._finish(ticket, outcome, self._clock.now()))
            raise
        outcome = self._outcome_of_result(result, start)
        await self._areport(self._finish(ticket, outcome, self._clock.now()))
        return result

    async def __aenter__(self) -> CircuitBreaker:
        entries = self._entries
        if self._fast_block and self._closed:
            entries.set((_PASS, 0.0, entries.get()))
            return self
        start = self._clock.now()
        ticket = await self._aadmitted(start)
        self._entries.set((ticket, start, self._entries.get()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entries = self._entries
        entry = entries.get()
        if exc is None and entry is not None and entry[0] == _PASS and self._fast_block:
            entries.set(entry[2])
            steps = self._closed_success()
            if steps is not None:
                await self._areport(steps)
            return
        await self._areport(self._exit_steps(exc))

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self._state.value})"


def _make_window(options: BreakerOptions) -> Window:
    if options.failure_ratio is None:
        return ConsecutiveWindow(options.failure_threshold or _DEFAULT_THRESHOLD)
    size = options.window_size
    if options.window is None and size is None:
        size = _DEFAULT_WINDOW_SIZE
    minimum = options.minimum_calls
    if minimum is None:
        minimum = min(_DEFAULT_MINIMUM_CALLS, size) if size is not None else _DEFAULT_MINIMUM_CALLS
    rule = TripRule(
        failure_ratio=options.failure_ratio,
        slow_call_ratio=options.slow_call_ratio,
        minimum_calls=minimum,
    )
    if size is not None:
        return CountWindow(size, rule)
    assert options.window is not None
    return TimeWindow(options.window, options.window_buckets, rule)

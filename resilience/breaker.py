"""Circuit breaker: stop calling a dependency that keeps failing, then probe it.

Where each part lives, from the inside out:

* :mod:`resilience._core.breaker`: the pure state machine (windows, admission
  and probe rules, break durations), and :mod:`resilience._core.circuit`: the
  shared circuit's rules (compare-and-set, leased probe permits); no I/O,
  ``now`` passed in.
* :mod:`resilience.storage.breakers`: the shared circuit (state, version,
  probe permits) behind a compare-and-set protocol.
* :mod:`resilience._breaker_options`: the validated options.
* :mod:`resilience._breaker_replica`: this process's copy of the circuit, its
  window and counters, and every decision that needs no store.
* :mod:`resilience._async.breaker`: the drivers (admission, finishing a call,
  the protected callables, the with-block), written once as async code;
  ``resilience._sync.breaker`` is generated from it.
* this module: the public class (options, state, statistics, listeners,
  manual control), which hands every call to the driver of its colour.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, ParamSpec, TypeVar

from pydantic import SkipValidation

from ._async import breaker as _async_driver
from ._breaker_options import (
    BreakerRules,
    BreakSeconds,
    CallCount,
    FailureOn,
    Multiplier,
    Ratio,
    StateListener,
    WindowBuckets,
    WindowSize,
)
from ._breaker_replica import CircuitReplica
from ._core.breaker import CircuitState
from ._counters import counter_value
from ._policy import Policy
from ._sync import breaker as _sync_driver
from ._validation import PolicyName, PositiveDuration, options_from, options_model
from .classify import ClassifierLike, ErrorClass
from .clock import Clock
from .errors import StoreUnavailable
from .storage._guard import FailureMode, GuardedBreakerStore
from .storage.breakers import BreakerStore, InfallibleBreakerStore, MemoryBreakerStore
from .telemetry.channel import Telemetry
from .telemetry.otel import CallObserver

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


class CircuitBreaker(CircuitReplica, Policy):
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

    __slots__ = ("_telemetry",)  # Policy.telemetry

    kind: ClassVar[str] = "circuit_breaker"

    def __init__(
        self,
        name: PolicyName = "breaker",
        *,
        failure_threshold: CallCount | None = None,
        failure_ratio: Ratio | None = None,
        window_size: WindowSize | None = None,
        window: PositiveDuration | None = None,
        window_buckets: WindowBuckets = 10,
        minimum_calls: CallCount | None = None,
        slow_call_duration: PositiveDuration | None = None,
        slow_call_ratio: Ratio | None = None,
        break_duration: BreakSeconds = 30.0,
        break_multiplier: Multiplier = 1.0,
        max_break_duration: BreakSeconds | None = None,
        half_open_calls: CallCount = 1,
        probe_lease: BreakSeconds | None = None,
        failure_on: SkipValidation[
            FailureOn | ErrorClass | str | type[BaseException] | None
        ] = None,
        failure_if_result: Callable[[Any], bool] | None = None,
        classifier: SkipValidation[ClassifierLike | Sequence[ClassifierLike]] = None,
        on_state_change: StateListener | None = None,
        store: SkipValidation[BreakerStore | None] = None,
        clock: Clock | None = None,
        on_store_failure: FailureMode = "fail_closed",
    ) -> None:
        """Each option is declared here once; ``BreakerOptions`` is derived from it.

        ``probe_lease``: seconds a half-open probe may hold its permit (``None``:
        the store's ``probe_lease``, 60 s by default), so a probe that never
        returns (its process killed, its task cancelled) cannot wedge the circuit
        for longer. ``on_store_failure``, while a shared store is unavailable:
        ``"fail_closed"`` (a call the breaker cannot admit without the store raises
        :class:`~resilience.StoreUnavailable`), ``"fail_open"`` (such a call runs,
        unrecorded), ``"local"`` (the breaker goes on with an in-process circuit
        until the store is back). See docs/storage.md.
        """
        self._configure(options_from(BreakerOptions, f"CircuitBreaker {name!r}", locals()))

    def _configure(self, options: Any) -> None:
        self._telemetry = Telemetry(self.kind, options.name)
        self._configure_replica(options)
        store: BreakerStore = options.store if options.store is not None else MemoryBreakerStore()
        if not isinstance(store, InfallibleBreakerStore):
            # A store that can fail: its calls go through the failure policy.
            store = GuardedBreakerStore(
                store,
                options.on_store_failure,
                self._clock,
                f"CircuitBreaker {self.name!r}",
                self._telemetry,
            )
        self._store = store
        self._unwatch = store.breaker_watch(self.name, self._on_snapshot)
        self._polling = self._unwatch is None
        # A with-block needs no admission while closed, unless it must be timed.
        self._fast_block = not self._judges_results() and not self._polling
        with contextlib.suppress(StoreUnavailable):  # else the first call that needs it loads it
            self._adopt(
                store.breaker_load(self.name, self._clock.now()), self._clock.now(), current=True
            )
        self.telemetry.track_state(self)  # the state gauge of the OpenTelemetry adapter

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
        _sync_driver.force(self, CircuitState.FORCED_OPEN, "isolated by hand")

    def disable(self) -> None:
        """Let every call through and record nothing (DISABLED) until :meth:`reset`."""
        _sync_driver.force(self, CircuitState.DISABLED, "disabled by hand")

    def reset(self) -> None:
        """Close the circuit and forget its window and its break history."""
        _sync_driver.force(self, CircuitState.CLOSED, "reset by hand")

    async def aisolate(self) -> None:
        """:meth:`isolate` through the store's async interface."""
        await _async_driver.force(self, CircuitState.FORCED_OPEN, "isolated by hand")

    async def adisable(self) -> None:
        """:meth:`disable` through the store's async interface."""
        await _async_driver.force(self, CircuitState.DISABLED, "disabled by hand")

    async def areset(self) -> None:
        """:meth:`reset` through the store's async interface."""
        await _async_driver.force(self, CircuitState.CLOSED, "reset by hand")

    # -- the drivers ---------------------------------------------------------------

    def wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        return _sync_driver.wrap_sync(self, fn, None)

    def wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        return _async_driver.wrap_async(self, fn, None)

    def _wrap_sync(self, fn: Callable[P, R], observer: CallObserver) -> Callable[P, R]:
        return _sync_driver.wrap_sync(self, fn, observer)

    def _wrap_async(
        self, fn: Callable[P, Awaitable[R]], observer: CallObserver
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        return _async_driver.wrap_async(self, fn, observer)

    # The with-blocks are the drivers' functions themselves: no call in between.
    __enter__ = _sync_driver.enter_block
    __exit__ = _sync_driver.exit_block
    __aenter__ = _async_driver.enter_block
    __aexit__ = _async_driver.exit_block

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self._state.value})"


BreakerOptions = options_model(CircuitBreaker.__init__, "BreakerOptions", BreakerRules)

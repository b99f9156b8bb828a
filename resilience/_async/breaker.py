"""The circuit breaker's drivers, written once (``resilience._sync.breaker`` is generated).

Everything a :class:`~resilience.CircuitBreaker` does that talks to its store:
admitting a call (START_PROBING, probe permits), finishing it (tripping,
closing, re-opening), manual transitions, and the protected callables and
with-blocks built on them. The state they work on, and every decision that
needs no store, is the breaker's replica (:mod:`resilience._breaker_replica`).

The closed-state success path is one closure that reads a flag, calls the
function, and ticks an atomic counter: no store call, no lock, nothing of ours awaited.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from .._breaker_replica import BYPASS, PASS, Trip
from .._core.breaker import (
    FAILURE,
    IGNORED,
    SLOW,
    SUCCESS,
    Admission,
    CircuitState,
    ConsecutiveWindow,
    admission,
    break_duration,
    probe_verdict,
)
from .._core.circuit import Transition
from ..errors import StoreUnavailable
from ..telemetry.otel import OTEL, CallObserver

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine  # unasync: async only

    from ..breaker import CircuitBreaker

__all__ = ["enter_block", "exit_block", "force", "wrap_async"]

P = ParamSpec("P")
R = TypeVar("R")

# -- store conversations ---------------------------------------------------------------


async def transition(
    breaker: CircuitBreaker,
    expected_version: int,
    state: CircuitState,
    reason: str,
    trips: int,
    now: float,
) -> bool:
    """Ask the store to move the circuit; adopt whatever it answers."""
    duration = 0.0
    if state is CircuitState.OPEN:
        duration = break_duration(
            trips, breaker._base_break, breaker._break_multiplier, breaker._break_ceiling
        )
    change = Transition(expected_version, state, reason, trips, duration, now)
    won, snapshot = await breaker._store.abreaker_transition(breaker.name, change)
    breaker._adopt(snapshot, now, current=not won)
    return won


async def trip(breaker: CircuitBreaker, due: Trip) -> bool:
    """Open a closed circuit at ``due.version``: the closed-state window says so."""
    # Read the clock now: an untimed window is handed 0.0, and the break must
    # start now, not at the epoch of the clock.
    now = breaker._clock.now()
    won = await transition(breaker, due.version, CircuitState.OPEN, due.reason, 1, now)
    with breaker._lock:
        lost_state = breaker._state is CircuitState.CLOSED and breaker._version < due.version
        version = breaker._version
    if not won and lost_state:
        # The store's version went back: it lost the circuit (a restart
        # without persistence). The trip is still due, at the store's version.
        won = await transition(breaker, version, CircuitState.OPEN, due.reason, 1, now)
    return won


async def force(breaker: CircuitBreaker, state: CircuitState, reason: str) -> None:
    """Move the circuit to ``state`` by hand, whatever it is now."""
    for _ in range(100):  # only lost races repeat; each loss means the version moved on
        now = breaker._clock.now()
        if await transition(breaker, breaker._version, state, reason, 0, now):
            return
    raise RuntimeError(f"circuit {breaker.name!r}: could not win a transition to {state}")


async def refresh(breaker: CircuitBreaker, now: float) -> None:
    """Reload the circuit if the store cannot push and our copy is stale."""
    if breaker._polling and now >= breaker._refresh_at:
        snapshot = await breaker._store.abreaker_load(breaker.name, now)
        breaker._adopt(snapshot, now, current=True)


async def admit(breaker: CircuitBreaker, now: float) -> int:
    """Decide whether a call may run; return its ticket or raise ``CircuitOpenError``."""
    await refresh(breaker, now)
    for _ in range(4):  # START_PROBING loops at most once unless races keep being lost
        with breaker._lock:
            state, version, open_until = breaker._state, breaker._version, breaker._open_until
            trips = breaker._trips
        decision = admission(state, now, open_until)
        if decision is Admission.PASS:
            return PASS
        if decision is Admission.BYPASS:
            return BYPASS
        if decision is Admission.START_PROBING:
            await transition(
                breaker, version, CircuitState.HALF_OPEN, "break duration elapsed", trips, now
            )
            continue
        if decision is Admission.PROBE:
            granted = await breaker._store.abreaker_acquire_probe(
                breaker.name, version, breaker._half_open_calls, breaker._probe_lease, now
            )
            if granted:
                return version
        break
    raise breaker._rejection(now)


async def admitted(breaker: CircuitBreaker, start: float) -> int:
    """Admit a call; a store failure gets the ``on_store_failure`` behaviour."""
    try:
        return await admit(breaker, start)
    except StoreUnavailable:
        if breaker._fail_open:
            return BYPASS  # runs unguarded and unrecorded
        next(breaker._c_rejections)
        raise


async def finish(breaker: CircuitBreaker, ticket: int, outcome: int, now: float) -> None:
    """Record the outcome of an admitted call; open or close the circuit if due."""
    if ticket == BYPASS:
        return  # let through unguarded: counted nowhere, in every form
    breaker._count(outcome)
    if ticket == PASS:
        due = breaker._record_closed(outcome, now)
        if due is not None:
            await trip(breaker, due)
        return
    if outcome in (FAILURE, SLOW):
        # Re-open at once, without handing the permit back first: a permit
        # released before the transition could admit one more probe, in
        # another process, into a half-open period that is already lost.
        # (The transition drops every permit of the version.)
        reason = "probe call was slow" if outcome == SLOW else "probe call failed"
        await transition(breaker, ticket, CircuitState.OPEN, reason, breaker._trips + 1, now)
        return
    succeeded = None if outcome == IGNORED else outcome == SUCCESS
    successes = await breaker._store.abreaker_release_probe(breaker.name, ticket, succeeded)
    if successes < 0:
        return  # the circuit moved on while this probe ran
    verdict = probe_verdict(outcome, successes, breaker._half_open_calls)
    if verdict is CircuitState.OPEN:
        reason = "probe call was slow" if outcome == SLOW else "probe call failed"
        await transition(breaker, ticket, verdict, reason, breaker._trips + 1, now)
    elif verdict is CircuitState.CLOSED:
        reason = f"{successes} probe call{'s' if successes > 1 else ''} succeeded"
        await transition(breaker, ticket, verdict, reason, 0, now)


# Bookkeeping after a call: its failure is logged, never raised over the
# protected call's own result or exception.


async def report_trip(breaker: CircuitBreaker, due: Trip) -> None:
    try:
        await trip(breaker, due)
    except Exception as error:
        breaker._report_failed(error)


async def report_finish(breaker: CircuitBreaker, ticket: int, outcome: int) -> None:
    try:
        await finish(breaker, ticket, outcome, breaker._clock.now())
    except Exception as error:
        breaker._report_failed(error)


# -- the protected callable ------------------------------------------------------------


def wrap_async(
    breaker: CircuitBreaker, fn: Callable[P, Awaitable[R]], observer: CallObserver | None
) -> Callable[P, Coroutine[Any, Any, R]]:
    """``fn`` behind ``breaker``. One body, built twice: without an observer (what an
    observer calls inside its span) and with one; see resilience.telemetry.otel."""
    unobserved = _guarded(breaker, fn, None, fn)  # no observer: the last argument is unused
    return unobserved if observer is None else _guarded(breaker, fn, observer, unobserved)


def _guarded(
    breaker: CircuitBreaker,
    fn: Callable[P, Awaitable[R]],
    observer: CallObserver | None,
    unobserved: Callable[P, Awaitable[R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    slow_path = call
    closed_outcome = breaker._closed_outcome
    outcome_of_error = breaker._outcome_of_error

    if breaker._fast_path_ok():
        window = breaker._window
        assert isinstance(window, ConsecutiveWindow)
        tick = breaker._c_fast_successes.__next__
        reset_streak = breaker._reset_streak

        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            if observer is not None and OTEL.on:
                return await observer.call_async(unobserved, args, kwargs)
            if breaker._closed:
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    due = closed_outcome(outcome_of_error(exc, None))
                    if due is not None:
                        await report_trip(breaker, due)
                    raise
                if window.streak:
                    reset_streak()
                tick()
                return result
            return await slow_path(breaker, fn, args, kwargs)

        return guarded

    now = breaker._clock.now
    timed = breaker._slow_call_duration is not None
    polling = breaker._polling
    outcome_of_result = breaker._outcome_of_result
    judge = breaker._judges_results()
    closed_success = breaker._closed_success

    async def guarded_checked(*args: P.args, **kwargs: P.kwargs) -> R:
        if observer is not None and OTEL.on:
            return await observer.call_async(unobserved, args, kwargs)
        if breaker._closed and (not polling or now() < breaker._refresh_at):
            start = now() if timed else None
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                due = closed_outcome(outcome_of_error(exc, start))
                if due is not None:
                    await report_trip(breaker, due)
                raise
            due = closed_outcome(outcome_of_result(result, start)) if judge else closed_success()
            if due is not None:
                await report_trip(breaker, due)
            return result
        return await slow_path(breaker, fn, args, kwargs)

    return guarded_checked


async def call(
    breaker: CircuitBreaker, fn: Callable[..., Awaitable[R]], args: Any, kwargs: Any
) -> R:
    """The slow path: anything but a closed circuit's plain success."""
    start = breaker._clock.now()
    ticket = await admitted(breaker, start)
    if ticket == BYPASS:
        return await fn(*args, **kwargs)
    try:
        result = await fn(*args, **kwargs)
    except BaseException as exc:
        await report_finish(breaker, ticket, breaker._outcome_of_error(exc, start))
        raise
    await report_finish(breaker, ticket, breaker._outcome_of_result(result, start))
    return result


# -- the with-block ----------------------------------------------------------------------


# The decorator's span covers a with-block too: opened before the admission
# (a rejection ends it at once), closed after the outcome is recorded.


async def enter_block(breaker: CircuitBreaker) -> CircuitBreaker:
    entries = breaker._entries
    opened = OTEL.on
    if opened:
        breaker._telemetry.open_block()
    if breaker._fast_block and breaker._closed:
        # Closed, nothing to time: skip the admission (the common case).
        entries.set((PASS, 0.0, entries.get()))
        return breaker
    start = breaker._clock.now()
    try:
        ticket = await admitted(breaker, start)
    except BaseException as error:
        if opened:
            breaker._telemetry.close_block(type(error), error, error.__traceback__)
        raise
    entries.set((ticket, start, entries.get()))
    return breaker


async def exit_block(
    breaker: CircuitBreaker,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> None:
    entries = breaker._entries
    entry = entries.get()
    if entry is None:
        raise RuntimeError(f"circuit {breaker.name!r}: __exit__ without __enter__")
    ticket, start, previous = entry
    entries.set(previous)
    try:
        if exc is None and ticket == PASS and breaker._fast_block:
            due = breaker._closed_success()
            if due is not None:
                await report_trip(breaker, due)
            return
        outcome = (
            breaker._outcome_of_time(start)
            if exc is None
            else breaker._outcome_of_error(exc, start)
        )
        await report_finish(breaker, ticket, outcome)
    finally:
        if OTEL.on:
            breaker._telemetry.close_block(exc_type, exc, tb)

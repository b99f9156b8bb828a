"""Retry's drivers: the decorator's closures, the retry loop, the call form and
the block form (``for attempt in retry: with attempt: ...``).

Hand-written in async form only: ``scripts/unasync.py`` generates the sync module
(``resilience/_sync/retry.py``) from the async one, and :class:`resilience.Retry`
delegates to both. The success path of a decorated function is one call and one
counter tick; the bookkeeping starts at the first failure
(:meth:`Retry._start_call`), and every failure is judged by :meth:`Retry._judge`,
the method :meth:`Retry.decide` calls too.

Every form reports the decorator's span and metrics through the policy's
channel: the decorated closure and ``acall`` test ``OTEL.on`` inline (one
attribute read) and hand the call to the observer; the block form gets a
:class:`~resilience.telemetry.otel.BlockSpan` (see :func:`observed_attempts`).
"""

from __future__ import annotations

# unasync: sync from collections.abc import Callable, Generator, Iterator
from collections.abc import (  # unasync: async only
    AsyncGenerator,  # unasync: async only
    AsyncIterator,  # unasync: async only
    Awaitable,  # unasync: async only
    Callable,  # unasync: async only
    Coroutine,  # unasync: async only
)  # unasync: async only
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from .._core.retry import NO_RESULT
from .._deadline import DEADLINE, tighter
from .._retry_attempt import Attempt
from .._testing_mode import TESTING_MODE
from ..telemetry.otel import OTEL, CallObserver

if TYPE_CHECKING:
    from ..retry import Retry

__all__ = ["acall", "attempts", "iterate_attempts", "observed_attempts", "retry_rest", "wrap_async"]

P = ParamSpec("P")
R = TypeVar("R")


def wrap_async(
    policy: Retry, fn: Callable[P, Awaitable[R]], observer: CallObserver | None = None
) -> Callable[P, Coroutine[Any, Any, R]]:
    """``fn`` retried by ``policy`` (see :meth:`Policy.wrap_async <resilience.Policy>`)."""
    hit = policy._fast_successes.__next__
    check = policy._retry_if_result
    now = policy._clock.now
    deadline, clock, name = policy._deadline, policy._clock, policy.name
    get_deadline, set_deadline, reset_deadline = DEADLINE.get, DEADLINE.set, DEADLINE.reset
    simple = deadline is None and check is None

    # One body, built twice: without an observer (what an observer calls inside
    # its span) and with one. The test for an OpenTelemetry SDK is one attribute
    # read, inline: a function call would cost more than it does.
    def build(observer: CallObserver | None) -> Callable[P, Coroutine[Any, Any, R]]:
        # Read the clock up front only when a deadline needs it: the success path
        # of a plain retry then costs one call and one counter tick.
        if simple:

            async def retrying(*args: P.args, **kwargs: P.kwargs) -> R:
                if observer is not None and OTEL.on:
                    return await observer.call_async(unobserved, args, kwargs)
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:
                    failure = exc
                else:
                    hit()
                    return result
                return await retry_rest(policy, fn, args, kwargs, failure, NO_RESULT, None)

            return retrying

        async def retrying_checked(*args: P.args, **kwargs: P.kwargs) -> R:
            if observer is not None and OTEL.on:
                return await observer.call_async(unobserved, args, kwargs)
            start = now()
            # This retry's deadline flows inward (see Retry._deadline_scope), built
            # inline: this runs on the success path of every call.
            if deadline is None:
                scope = None
            elif get_deadline() is None:
                scope = set_deadline((start + deadline, clock, name, deadline))
            else:
                scope = set_deadline(tighter(start, deadline, clock, name))
            try:
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:
                    failure = exc
                else:
                    if check is None or not check(result):
                        hit()
                        return result
                    return await retry_rest(policy, fn, args, kwargs, None, result, start)
                return await retry_rest(policy, fn, args, kwargs, failure, NO_RESULT, start)
            finally:
                if scope is not None:
                    reset_deadline(scope)

        return retrying_checked

    unobserved = build(None)
    return unobserved if observer is None else build(observer)


async def retry_rest(
    policy: Retry,
    fn: Callable[..., Awaitable[R]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    exc: BaseException | None,
    result: Any,
    start: float | None,
) -> R:
    """Carry on after the first attempt failed (raised ``exc``, or returned a
    ``result`` that ``retry_if_result`` rejected); ``start``: when it began."""
    call = policy._start_call(start)
    check = policy._retry_if_result
    now = policy._clock.now
    judge = policy._judge
    attempt = policy._telemetry.attempt
    while True:
        elapsed = now() - call.start
        delay = judge(call, exc, result, elapsed, policy._enclosing_remaining(call.start))
        if isinstance(delay, str):  # a give-up reason
            return policy._finish(call, delay, exc, result, elapsed)  # type: ignore[no-any-return]
        if delay > 0 and not TESTING_MODE.active:
            await policy._clock.asleep(delay)
        policy._begin_attempt(call)
        try:
            with attempt(call.attempts):
                value = await fn(*args, **kwargs)
        except Exception as error:
            exc, result = error, NO_RESULT
            continue
        exc, result = None, value
        if check is None or not check(value):
            next(policy._slow_successes)
            return value


async def acall(
    policy: Retry, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
) -> R:
    """Call ``fn(*args, **kwargs)`` (awaiting it, in async code), retrying as configured."""
    if OTEL.on:
        # The decorator's span, through the closure it builds: wrapping per call
        # costs little next to a span, and nothing without an SDK.
        protected = wrap_async(policy, fn)
        return await policy._telemetry.observer.call_async(protected, args, kwargs)
    start = policy._clock.now()
    scope = policy._deadline_scope(start)
    try:
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            # Leave the except block first: retrying inside it would chain every
            # later exception to this one through __context__.
            failure = exc
        else:
            check = policy._retry_if_result
            if check is not None and check(result):
                return await retry_rest(policy, fn, args, kwargs, None, result, start)
            next(policy._fast_successes)
            return result
        return await retry_rest(policy, fn, args, kwargs, failure, NO_RESULT, start)
    finally:
        if scope is not None:
            DEADLINE.reset(scope)


def attempts(policy: Retry) -> AsyncIterator[Attempt]:
    """The block form: ``async for attempt in retry: async with attempt: ...``,
    with the call's span while an OpenTelemetry SDK is set."""
    if OTEL.on:
        return observed_attempts(policy)
    return iterate_attempts(policy)


async def observed_attempts(policy: Retry) -> AsyncIterator[Attempt]:
    """:func:`iterate_attempts` inside the call's span (a BlockSpan).

    The span is current only while a piece of the block form runs: each step of
    the iterator here, and each attempt's block (``Attempt.__aenter__`` to
    ``__aexit__``). Nothing stays attached across a ``yield``: an iterator left
    early (``break``, an exception) is closed later and maybe elsewhere (an async
    one by the event loop, in a task of its own; a sync one when it is collected),
    where there is nothing to detach, only the span to end.
    """
    block = policy._telemetry.observer.block()
    steps = iterate_attempts(policy)
    attempt: Attempt | None = None
    try:
        while True:
            token = block.attach()
            try:
                attempt = await anext(steps)
            except StopAsyncIteration:
                break
            finally:
                block.detach(token)
            attempt._block = block
            yield attempt
    except GeneratorExit:
        # Left early: the call ended as its last attempt's block did.
        escaped = block.escaped
        block.end(escaped if escaped is not None or attempt is None else attempt._exception)
        raise
    except BaseException as error:  # gave up: the last failure, re-raised
        block.end(error)
        raise
    else:
        block.end(None)
    finally:
        await steps.aclose()


# unasync: sync def iterate_attempts(policy: Retry) -> Generator[Attempt, None, None]:
async def iterate_attempts(policy: Retry) -> AsyncGenerator[Attempt, None]:  # unasync: async only
    """The block form's attempts, unobserved."""
    now = policy._clock.now
    check = policy._retry_if_result
    start = now()
    attempt = Attempt(1)
    yield attempt
    if attempt._succeeded(check):
        next(policy._fast_successes)
        return
    call = policy._start_call(start)
    while True:
        exc, result = attempt._exception, attempt._result
        elapsed = now() - call.start
        delay = policy._judge(call, exc, result, elapsed, policy._enclosing_remaining(call.start))
        if isinstance(delay, str):  # a give-up reason
            policy._finish(call, delay, exc, result, elapsed)
            return
        if delay > 0 and not TESTING_MODE.active:
            await policy._clock.asleep(delay)
        policy._begin_attempt(call)
        attempt = Attempt(call.attempts)
        yield attempt
        if attempt._succeeded(check):
            next(policy._slow_successes)
            return

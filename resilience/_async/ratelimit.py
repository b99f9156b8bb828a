"""The rate limiter's drivers, written once (see :mod:`resilience.ratelimit`).

Functions taking the limiter (a :class:`~resilience.ratelimit.RateLimiter`,
``Limit`` or ``CompositeLimit``) first: the facade's classes bind them as
their methods, so a call costs no extra frame. The decorator closures inline
the in-memory fast path (:class:`~resilience.storage.buckets.FastTake`), and
the OpenTelemetry test is one attribute read (``OTEL.on``).
"""

from __future__ import annotations

import asyncio  # unasync: async only
import contextlib
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from .._deadline import remaining_time
from .._validation import clamp_seconds
from ..storage.buckets import plain_key
from ..telemetry.otel import OTEL

if TYPE_CHECKING:
    # unasync: sync from collections.abc import Callable, Sequence
    from collections.abc import Awaitable, Callable, Coroutine, Sequence  # unasync: async only
    from datetime import timedelta
    from types import TracebackType
    from typing import Any  # unasync: async only

    from .._core.bucket import Decision
    from ..clock import Clock
    from ..ratelimit import CompositeLimit, Limit, RateLimiter, _Acquiring
    from ..storage.buckets import BucketRequest, BucketStore
    from ..telemetry.otel import CallObserver

P = ParamSpec("P")
R = TypeVar("R")
A = TypeVar("A", bound="_Acquiring")


# -- acquiring ------------------------------------------------------------------------------


async def aacquire(
    limiter: RateLimiter,
    key: str | None = None,
    cost: int = 1,
    timeout: float | timedelta | None = None,  # noqa: ASYNC109 - public name  # unasync: async only
    # unasync: sync timeout: float | timedelta | None = None,
) -> None:
    """Take ``cost`` tokens, waiting up to ``timeout`` seconds (default: ``max_wait``).

    Raises :class:`~resilience.RateLimitExceeded` at once, without waiting
    and without taking anything, when the tokens would not be there in time.
    No wait is longer than 1e9 s: a longer one is refused the same way. A
    caller interrupted (a task cancelled) while it waits hands its reservation
    back if nobody reserved after it; otherwise the tokens stay spent (erring
    on the safe side).
    """
    if key is not None and type(key) is not str:
        key = plain_key(key)
    max_wait = limiter._max_wait if timeout is None else limiter._wait_limit(timeout)
    take_one = limiter._take_one
    if cost == 1 and take_one is not None and take_one(key):
        next(limiter._acquired)
        return
    limiter._check_cost(cost)
    requests = (limiter._request(key, cost),)
    decision = await limiter._store.abucket_take(requests, _within_deadline(max_wait))
    limiter._check_granted(decision, key)
    if decision.wait > 0:
        await _asleep_or_refund(limiter._store, limiter._clock, requests, decision)
    limiter._count_granted(decision.wait > 0)


async def aacquire_all(
    composite: CompositeLimit,
    timeout: float | timedelta | None = None,  # noqa: ASYNC109 - public name  # unasync: async only
    # unasync: sync timeout: float | timedelta | None = None,
) -> None:
    """Take from every bucket, waiting up to ``timeout`` (default: the limit's
    ``timeout``, else the smallest ``max_wait``); raise at once if it would not do."""
    requests = composite._requests
    decision = await composite._store.abucket_take(
        requests, _within_deadline(composite._max_wait(timeout))
    )
    composite._check_granted(decision)
    if decision.wait > 0:
        await _asleep_or_refund(composite._store, composite._clock, requests, decision)
    composite._count(True, decision.wait > 0)


def _within_deadline(max_wait: float) -> float:
    """``max_wait`` bounded by an enclosing Timeout's deadline: a waiter that could
    not be served before it fails at once instead of sleeping past it."""
    left = remaining_time()
    return max_wait if left is None else min(max_wait, max(0.0, left))


async def _asleep_or_refund(
    store: BucketStore, clock: Clock, requests: Sequence[BucketRequest], decision: Decision
) -> None:
    """Sleep until a reservation is due; if interrupted (a task cancelled), hand it
    back, then re-raise."""
    try:
        await clock.asleep(decision.wait)
    except BaseException:
        # The refund must neither hide why the wait ended (a store that is down
        # raises StoreUnavailable) nor be cut short by a second cancellation: the
        # tokens would be lost to everyone sharing the bucket.
        refund = store.abucket_refund  # unasync: async only
        with contextlib.suppress(Exception):
            await asyncio.shield(refund(requests, decision.reserved))  # unasync: async only
            # unasync: sync store.bucket_refund(requests, decision.reserved)
        raise


# -- feedback and inspection ----------------------------------------------------------------


async def apenalize(
    limiter: RateLimiter, seconds: float | timedelta, key: str | None = None
) -> None:
    """Grant nothing from ``key``'s bucket for ``seconds`` (a server's Retry-After).

    Everyone sharing the bucket (through the store) pauses. Afterwards the
    bucket holds one token and refills at the normal rate. A pause longer
    than 1e9 s (``inf`` included) is cut to 1e9 s.
    """
    if key is not None and type(key) is not str:
        key = plain_key(key)
    pause = clamp_seconds(seconds, "seconds", limiter._owner)
    await limiter._store.abucket_penalize(limiter.name, key, limiter._spec, pause)


async def atokens(limiter: RateLimiter, key: str | None = None) -> float:
    """Tokens ``key``'s bucket holds now (fractional while refilling)."""
    if key is not None and type(key) is not str:
        key = plain_key(key)
    return await limiter._store.abucket_tokens(limiter.name, key, limiter._spec)


# -- the decorator and context-manager forms ------------------------------------------------


def wrap_async(
    policy: _Acquiring, fn: Callable[P, Awaitable[R]], observer: CallObserver | None = None
) -> Callable[P, Coroutine[Any, Any, R]]:
    """``fn`` behind one acquisition per call (the policy's key, cost and timeout)."""
    aacquire = policy.aacquire
    take_one, hit = policy._fast_path()

    # One body, built twice: without an observer (what an observer calls
    # inside its span) and with one; see resilience.telemetry.otel.
    def build(observer: CallObserver | None) -> Callable[P, Coroutine[Any, Any, R]]:
        async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
            if observer is not None and OTEL.on:
                return await observer.call_async(unobserved, args, kwargs)
            # The in-memory fast path inline, sparing a call to aacquire().
            if take_one is not None and take_one(None):
                hit()
            else:
                await aacquire()
            return await fn(*args, **kwargs)

        return limited

    unobserved = build(None)
    return unobserved if observer is None else build(observer)


def wrap_limit_async(
    limit: Limit, fn: Callable[P, Awaitable[R]], observer: CallObserver | None = None
) -> Callable[P, Coroutine[Any, Any, R]]:
    """:func:`wrap_async` for a :class:`~resilience.ratelimit.Limit`, whose key may be
    a function of the decorated function's arguments (then computed per call)."""
    key_of = limit.key
    if not callable(key_of):
        return wrap_async(limit, fn, observer)
    aacquire, cost, timeout = limit.limiter.aacquire, limit.cost, limit.timeout

    async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
        await aacquire(key_of(*args, **kwargs), cost, timeout)
        return await fn(*args, **kwargs)

    if observer is None:
        return limited

    async def observed(*args: P.args, **kwargs: P.kwargs) -> R:
        if OTEL.on:
            return await observer.call_async(limited, args, kwargs)
        await aacquire(key_of(*args, **kwargs), cost, timeout)
        return await fn(*args, **kwargs)

    return observed


async def __aenter__(policy: A) -> A:
    # The decorator's span, from before the acquisition (which may wait or be
    # refused) to the end of the block.
    opened = OTEL.on
    if opened:
        policy.telemetry.open_block()
    try:
        await policy.aacquire()
    except BaseException as error:
        if opened:
            policy.telemetry.close_block(type(error), error, error.__traceback__)
        raise
    return policy


async def __aexit__(
    policy: _Acquiring,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> None:
    # Tokens are spent, not held: nothing to give back but the span.
    if OTEL.on:
        policy.telemetry.close_block(exc_type, exc, tb)

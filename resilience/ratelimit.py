"""RateLimiter: a token bucket per key, sync and asyncio, shareable through a store.

``RateLimiter("emails", rate=100, per=60.0)`` lets 100 acquisitions through per
minute, at most ``burst`` (default: ``rate``) at once. The algorithm is the pure
core in :mod:`resilience._core.bucket`; buckets live behind the
:class:`~resilience.storage.buckets.BucketStore` protocol.

Drivers
-------
* ``try_acquire`` never waits. With the in-memory store, a cost of one goes
  through the store's fast path (one closure: a mutex, a clock read, a dict
  lookup and the core's ``take_now``, no allocation); anything else is one
  ``bucket_take`` call on the store.
* ``acquire`` / ``aacquire`` reserve, then sleep: the store grants the tokens
  ahead of time and says how long to wait; the caller sleeps on the clock
  holding no lock. A caller that could not be served within its timeout is
  refused at once, with the exact ``retry_after``, and consumes nothing.
* :meth:`RateLimiter.all` combines limits into one all-or-nothing acquisition.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, ParamSpec, Self, TypeVar

from pydantic import ValidationInfo, field_validator, model_validator

from ._clock import MAX_DURATION, SYSTEM_CLOCK, Clock
from ._core.bucket import BucketSpec, Decision, check_shape
from ._counters import counter_value
from ._deadline import remaining_time
from ._policy import Policy
from ._validation import (
    MAX_COUNT,
    Count,
    DerivedError,
    FinitePositiveSeconds,
    OptionsModel,
    PolicyName,
    PositiveNumber,
    Seconds,
    build_options,
    clamp_seconds,
)
from .errors import ConfigurationError, RateLimitExceeded
from .storage._guard import FailureMode, GuardedBucketStore
from .storage.buckets import BucketRequest, BucketStore, MemoryBucketStore
from .telemetry._hub import HUB
from .telemetry.events import RateLimitRejected, RateLimitWaited
from .telemetry.otel import OTEL, CallObserver

__all__ = [
    "CompositeLimit",
    "Limit",
    "RateLimiter",
    "RateLimiterOptions",
    "RateLimiterStatistics",
]

P = ParamSpec("P")
R = TypeVar("R")

Key = str | None
KeyFunction = Callable[..., Key]


def _plain_key(key: object) -> str:
    """A limiter key that is not a plain ``str`` or ``None``: a ``str`` subclass
    becomes a plain ``str``; anything else is refused before it reaches a store."""
    if isinstance(key, str):
        return str.__str__(key)
    raise TypeError(f"key: must be a str or None, got {type(key).__name__}")


class RateLimiterOptions(OptionsModel):
    """Validated options of a :class:`RateLimiter`.

    Besides each field's own bounds, the shape they make together is checked
    (:func:`resilience._core.bucket.check_shape`): one token every ``per / rate``
    seconds, between 1e-6 and 1e9 s, and ``burst * per / rate`` (the time an
    empty bucket takes to refill) at most 1e9 s.
    """

    name: PolicyName
    rate: PositiveNumber
    """Tokens added per ``per`` seconds."""
    per: FinitePositiveSeconds = 1.0
    burst: Count | None = None
    """Bucket capacity: most tokens available at once. Default: ``rate``
    (rounded down, at least 1)."""
    max_wait: Seconds | None = None
    """How long ``acquire`` and the decorator/context forms wait by default
    (``None`` or ``inf``: as long as it takes, up to 1e9 s)."""
    store: Any = None
    clock: Any = None
    on_store_failure: FailureMode = "fail_closed"
    """What to do while a shared store is unavailable: ``"fail_closed"`` (raise
    :class:`~resilience.StoreUnavailable`), ``"fail_open"`` (grant), ``"local"``
    (limit in this process until the store is back). See docs/storage.md."""

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, BucketStore):
            raise ValueError(f"expected a BucketStore (e.g. MemoryBucketStore), got {value!r}")
        return value

    @field_validator("clock")
    @classmethod
    def _check_clock(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not isinstance(value, Clock):
            raise ValueError(f"expected a Clock (now, sleep, asleep), got {value!r}")
        store = info.data.get("store")
        memory_clock = store._bucket_clock if isinstance(store, MemoryBucketStore) else value
        if value is not None and value is not memory_clock:
            raise ValueError(
                "differs from the memory store's clock: give both the same clock "
                "(MemoryBucketStore(clock)), or give it to the store only"
            )
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> RateLimiterOptions:
        # Frozen model: defaults that depend on other fields are set once, here.
        if self.burst is None:
            object.__setattr__(self, "burst", min(MAX_COUNT, max(1, int(self.rate))))
        assert self.burst is not None
        problem = check_shape(self.rate, self.per, self.burst)
        if problem is not None:
            raise DerivedError(*problem)
        store, clock = self.store, self.clock
        if store is None:
            store = MemoryBucketStore(clock)
        elif isinstance(store, MemoryBucketStore):
            clock = store._bucket_clock  # the same as the limiter's, if it has one
        object.__setattr__(self, "store", store)
        object.__setattr__(self, "clock", SYSTEM_CLOCK if clock is None else clock)
        return self


@dataclass(frozen=True, slots=True)
class RateLimiterStatistics:
    """Counts kept by one :class:`RateLimiter` over all its keys.

    An acquisition that waited counts in ``acquired`` and in ``waited``; one
    refused (no tokens, or not within its timeout) in ``rejected``. ``tokens``
    is what the unkeyed bucket holds now.
    """

    acquired: int
    rejected: int
    waited: int
    tokens: float


def _nothing() -> None:
    return None


class _Acquiring(Policy):
    """The decorator and context-manager forms, over ``acquire`` / ``aacquire``."""

    __slots__ = ()

    kind: ClassVar[str] = "rate_limiter"

    def acquire(self) -> None:
        raise NotImplementedError

    async def aacquire(self) -> None:
        raise NotImplementedError

    def _fast_path(self) -> tuple[Callable[[Key], bool] | None, Callable[[], object]]:
        """The in-memory take for one unkeyed token and the counter it ticks, if any."""
        return None, _nothing

    def wrap_sync(self, fn: Callable[P, R], observer: CallObserver | None = None) -> Callable[P, R]:
        acquire = self.acquire
        take_one, hit = self._fast_path()

        # One body, built twice: without an observer (what an observer calls
        # inside its span) and with one; see resilience.telemetry.otel.
        def build(observer: CallObserver | None) -> Callable[P, R]:
            def limited(*args: P.args, **kwargs: P.kwargs) -> R:
                if observer is not None and OTEL.on:
                    return observer.call_sync(unobserved, args, kwargs)
                # The in-memory fast path inline, sparing a call to acquire().
                if take_one is not None and take_one(None):
                    hit()
                else:
                    acquire()
                return fn(*args, **kwargs)

            return limited

        unobserved = build(None)
        return unobserved if observer is None else build(observer)

    def wrap_async(
        self, fn: Callable[P, Awaitable[R]], observer: CallObserver | None = None
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        aacquire = self.aacquire
        take_one, hit = self._fast_path()

        def build(observer: CallObserver | None) -> Callable[P, Coroutine[Any, Any, R]]:
            async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
                if observer is not None and OTEL.on:
                    return await observer.call_async(unobserved, args, kwargs)
                if take_one is not None and take_one(None):
                    hit()
                else:
                    await aacquire()
                return await fn(*args, **kwargs)

            return limited

        unobserved = build(None)
        return unobserved if observer is None else build(observer)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def __aenter__(self) -> Self:
        await self.aacquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class RateLimiter(_Acquiring):
    """A token bucket per key: ``rate`` tokens every ``per`` seconds, ``burst`` at once.

    One limiter serves any number of keys (``key=None`` is its default bucket),
    threads and asyncio tasks. Used as a decorator or a (sync or async) context
    manager it acquires one token from the default bucket, waiting up to
    ``max_wait``; :meth:`limit` binds another key, cost or timeout.
    """

    __slots__ = (
        "__weakref__",
        "_acquired",
        "_clock",
        "_max_wait",
        "_owner",
        "_rejected",
        "_spec",
        "_store",
        "_take_one",
        "_waited",
        "name",
        "options",
    )

    def __init__(
        self,
        name: str,
        *,
        rate: float,
        per: float | datetime.timedelta = 1.0,
        burst: int | None = None,
        max_wait: float | datetime.timedelta | None = None,
        store: BucketStore | None = None,
        clock: Clock | None = None,
        on_store_failure: FailureMode = "fail_closed",
    ) -> None:
        options = build_options(
            RateLimiterOptions,
            f"RateLimiter {name!r}",
            name=name,
            rate=rate,
            per=per,
            burst=burst,
            max_wait=max_wait,
            store=store,
            clock=clock,
            on_store_failure=on_store_failure,
        )
        self._configure(options)

    def _configure(self, options: RateLimiterOptions) -> None:
        assert options.burst is not None  # filled in by the options model
        self.options = options
        self.name = options.name
        self._owner = f"RateLimiter {options.name!r}"
        self._spec = spec = BucketSpec.of(options.rate, options.per, options.burst)
        # Every wait has a ceiling: "as long as it takes" is at most MAX_DURATION.
        max_wait = options.max_wait
        self._max_wait = MAX_DURATION if max_wait is None else min(max_wait, MAX_DURATION)
        self._store: BucketStore = options.store
        self._clock: Clock = options.clock
        if not isinstance(options.store, MemoryBucketStore):
            # A store that can fail: its calls go through the failure policy.
            # (The memory store never fails; its fast path stays as it is.)
            self._store = GuardedBucketStore(
                options.store, options.on_store_failure, options.clock, self._owner
            )
        self._acquired = itertools.count()
        self._rejected = itertools.count()
        self._waited = itertools.count()
        # The in-memory store offers a fast path for the common cost of one.
        store = options.store
        self._take_one: Callable[[Key], bool] | None = None
        if isinstance(store, MemoryBucketStore):
            self._take_one = store._bucket_taker(options.name, spec.interval, spec.headroom)

    # -- properties -------------------------------------------------------------------

    @property
    def rate(self) -> float:
        return self.options.rate

    @property
    def per(self) -> float:
        return self.options.per

    @property
    def burst(self) -> int:
        return self._spec.burst

    @property
    def store(self) -> BucketStore:
        return self.options.store  # type: ignore[no-any-return]

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def statistics(self) -> RateLimiterStatistics:
        """Counts over every acquisition so far (reads the default bucket's tokens)."""
        return RateLimiterStatistics(
            acquired=counter_value(self._acquired),
            rejected=counter_value(self._rejected),
            waited=counter_value(self._waited),
            tokens=self.tokens(),
        )

    # -- checks done per call, cheaply ----------------------------------------------------

    def _check_cost(self, cost: int) -> None:
        """Reject a cost that is not a whole number of tokens the bucket can hold."""
        if type(cost) is not int or cost < 1:
            problem = f"must be an integer >= 1, got {cost!r}"
        elif cost > self._spec.burst:
            problem = f"must be <= burst ({self._spec.burst}), got {cost}: it could never fit"
        else:
            return
        raise ConfigurationError(self._owner, [("cost", problem)])

    def _wait_limit(self, timeout: float | datetime.timedelta) -> float:
        return clamp_seconds(timeout, "timeout", self._owner)

    def _request(self, key: Key, cost: int) -> BucketRequest:
        return BucketRequest(self.name, key, cost, self._spec)

    # -- acquiring -------------------------------------------------------------------------

    def _fast_path(self) -> tuple[Callable[[Key], bool] | None, Callable[[], object]]:
        return self._take_one, self._acquired.__next__

    def try_acquire(self, key: Key = None, cost: int = 1) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket if it has them now; never waits."""
        if key is not None and type(key) is not str:
            key = _plain_key(key)
        take_one = self._take_one
        if cost == 1 and take_one is not None:
            granted = take_one(key)  # the in-memory fast path
        else:
            self._check_cost(cost)
            granted = self._store.bucket_take((self._request(key, cost),)).granted
        if granted:
            next(self._acquired)
            return True
        next(self._rejected)
        if HUB.active:
            HUB.emit(RateLimitRejected(self.name, None, key))
        return False

    def _check_granted(self, decision: Decision, key: Key) -> None:
        """Raise (and count) a refusal; announce a wait."""
        if not decision.granted:
            next(self._rejected)
            if HUB.active:
                HUB.emit(RateLimitRejected(self.name, decision.retry_after, key))
            raise RateLimitExceeded(self.name, decision.retry_after, key=key)
        if decision.wait > 0 and HUB.active:
            HUB.emit(RateLimitWaited(self.name, decision.wait, key))

    def _count_granted(self, waited: bool) -> None:
        if waited:
            next(self._waited)
        next(self._acquired)

    def acquire(
        self, key: Key = None, cost: int = 1, timeout: float | datetime.timedelta | None = None
    ) -> None:
        """Take ``cost`` tokens, waiting up to ``timeout`` seconds (default: ``max_wait``).

        Raises :class:`~resilience.RateLimitExceeded` at once, without waiting
        and without taking anything, when the tokens would not be there in time.
        No wait is longer than 1e9 s: a longer one is refused the same way.
        """
        if key is not None and type(key) is not str:
            key = _plain_key(key)
        max_wait = self._max_wait if timeout is None else self._wait_limit(timeout)
        take_one = self._take_one
        if cost == 1 and take_one is not None and take_one(key):
            next(self._acquired)
            return
        self._check_cost(cost)
        requests = (self._request(key, cost),)
        decision = self._store.bucket_take(requests, _within_deadline(max_wait))
        self._check_granted(decision, key)
        if decision.wait > 0:
            _sleep_or_refund(self._store, self._clock, requests, decision)
        self._count_granted(decision.wait > 0)

    async def aacquire(
        self,
        key: Key = None,
        cost: int = 1,
        timeout: float | datetime.timedelta | None = None,  # noqa: ASYNC109 - the contract's name
    ) -> None:
        """Take ``cost`` tokens, awaiting up to ``timeout`` seconds (default: ``max_wait``).

        A task cancelled while it waits hands its reservation back if nobody
        reserved after it; otherwise the tokens stay spent (erring on the safe
        side).
        """
        if key is not None and type(key) is not str:
            key = _plain_key(key)
        max_wait = self._max_wait if timeout is None else self._wait_limit(timeout)
        take_one = self._take_one
        if cost == 1 and take_one is not None and take_one(key):
            next(self._acquired)
            return
        self._check_cost(cost)
        requests = (self._request(key, cost),)
        decision = await self._store.abucket_take(requests, _within_deadline(max_wait))
        self._check_granted(decision, key)
        if decision.wait > 0:
            await _asleep_or_refund(self._store, self._clock, requests, decision)
        self._count_granted(decision.wait > 0)

    # -- feedback and inspection ---------------------------------------------------------------

    def penalize(self, seconds: float | datetime.timedelta, key: Key = None) -> None:
        """Grant nothing from ``key``'s bucket for ``seconds`` (a server's Retry-After).

        Everyone sharing the bucket (through the store) pauses. Afterwards the
        bucket holds one token and refills at the normal rate. A pause longer
        than 1e9 s (``inf`` included) is cut to 1e9 s.
        """
        if key is not None and type(key) is not str:
            key = _plain_key(key)
        pause = clamp_seconds(seconds, "seconds", self._owner)
        self._store.bucket_penalize(self.name, key, self._spec, pause)

    async def apenalize(self, seconds: float | datetime.timedelta, key: Key = None) -> None:
        """:meth:`penalize`, for a store whose calls are awaited."""
        if key is not None and type(key) is not str:
            key = _plain_key(key)
        pause = clamp_seconds(seconds, "seconds", self._owner)
        await self._store.abucket_penalize(self.name, key, self._spec, pause)

    def tokens(self, key: Key = None) -> float:
        """Tokens ``key``'s bucket holds now (fractional while refilling)."""
        if key is not None and type(key) is not str:
            key = _plain_key(key)
        return self._store.bucket_tokens(self.name, key, self._spec)

    async def atokens(self, key: Key = None) -> float:
        """:meth:`tokens`, for a store whose calls are awaited."""
        if key is not None and type(key) is not str:
            key = _plain_key(key)
        return await self._store.abucket_tokens(self.name, key, self._spec)

    # -- binding and combining ------------------------------------------------------------------

    def limit(
        self,
        key: Key | KeyFunction = None,
        *,
        cost: int = 1,
        timeout: float | datetime.timedelta | None = None,
    ) -> Limit:
        """This limiter for one key, cost and timeout: a decorator, a context manager,
        and a part of :meth:`all`. ``key`` may be a function of the decorated
        function's arguments (decorator use only)."""
        if not callable(key):
            self._check_cost(cost)
            if key is not None and type(key) is not str:
                key = _plain_key(key)
        return Limit(self, key, cost, timeout)

    @staticmethod
    def all(
        *parts: RateLimiter | Limit, timeout: float | datetime.timedelta | None = None
    ) -> CompositeLimit:
        """One all-or-nothing acquisition over several limits.

        ``RateLimiter.all(global_limit, per_recipient.limit(recipient))`` takes a
        token from both buckets, or from neither. The limiters must share one
        store (the atomic step is one store call).
        """
        return CompositeLimit(parts, timeout)

    def __repr__(self) -> str:
        o = self.options
        return (
            f"RateLimiter({o.name!r}, rate={o.rate!r}, per={o.per!r}, burst={o.burst!r}, "
            f"store={self.options.store!r})"
        )


class Limit(_Acquiring):
    """A :class:`RateLimiter` bound to one key, cost and timeout (see :meth:`RateLimiter.limit`)."""

    __slots__ = ("cost", "key", "limiter", "name", "timeout")

    def __init__(
        self,
        limiter: RateLimiter,
        key: Key | KeyFunction,
        cost: int,
        timeout: float | datetime.timedelta | None,
    ) -> None:
        self.limiter = limiter
        self.name = limiter.name
        self.key = key
        self.cost = cost
        self.timeout = timeout

    def _key(self) -> Key:
        key = self.key
        if callable(key):
            raise TypeError(
                f"limit on {self.name!r} has a key function: use it as a decorator, "
                "or bind a key with limiter.limit(key)"
            )
        if key is not None and type(key) is not str:
            key = _plain_key(key)
        return key

    def try_acquire(self) -> bool:
        return self.limiter.try_acquire(self._key(), self.cost)

    def acquire(self) -> None:
        self.limiter.acquire(self._key(), self.cost, self.timeout)

    async def aacquire(self) -> None:
        await self.limiter.aacquire(self._key(), self.cost, self.timeout)

    def wrap_sync(self, fn: Callable[P, R], observer: CallObserver | None = None) -> Callable[P, R]:
        key = self.key
        if not callable(key):
            return super().wrap_sync(fn, observer)
        key_of: KeyFunction = key
        acquire, cost, timeout = self.limiter.acquire, self.cost, self.timeout

        def limited(*args: P.args, **kwargs: P.kwargs) -> R:
            acquire(key_of(*args, **kwargs), cost, timeout)
            return fn(*args, **kwargs)

        if observer is None:
            return limited

        def observed(*args: P.args, **kwargs: P.kwargs) -> R:
            if OTEL.on:
                return observer.call_sync(limited, args, kwargs)
            acquire(key_of(*args, **kwargs), cost, timeout)
            return fn(*args, **kwargs)

        return observed

    def wrap_async(
        self, fn: Callable[P, Awaitable[R]], observer: CallObserver | None = None
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        key = self.key
        if not callable(key):
            return super().wrap_async(fn, observer)
        key_of: KeyFunction = key
        aacquire, cost, timeout = self.limiter.aacquire, self.cost, self.timeout

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

    def __repr__(self) -> str:
        return f"Limit({self.name!r}, key={self.key!r}, cost={self.cost})"


class CompositeLimit(_Acquiring):
    """Several limits taken together, all or nothing (see :meth:`RateLimiter.all`).

    Refused when any bucket is short; then no bucket is touched, and
    ``retry_after`` is when all of them will have the tokens. Every limiter
    involved counts the acquisition (acquired, waited or rejected).
    """

    __slots__ = ("_clock", "_limiters", "_requests", "_store", "name", "timeout")

    def __init__(
        self,
        parts: Sequence[RateLimiter | Limit],
        timeout: float | datetime.timedelta | None = None,
    ) -> None:
        if not parts:
            raise ConfigurationError("RateLimiter.all", [("parts", "give at least one limit")])
        limits = [part if isinstance(part, Limit) else Limit(part, None, 1, None) for part in parts]
        store = limits[0].limiter.store
        merged: dict[tuple[str, Key], BucketRequest] = {}
        limiters: list[RateLimiter] = []
        for limit in limits:
            limiter, key = limit.limiter, limit._key()
            limiter._check_cost(limit.cost)
            if limiter.store is not store:
                raise ConfigurationError(
                    "RateLimiter.all",
                    [("store", "the limiters must share one store to be taken atomically")],
                )
            previous = merged.get((limiter.name, key))
            cost = limit.cost + (0 if previous is None else previous.cost)
            # The same bucket twice is one request for the summed cost.
            merged[(limiter.name, key)] = BucketRequest(limiter.name, key, cost, limiter._spec)
            if limiter not in limiters:
                limiters.append(limiter)
        for request in merged.values():
            if request.cost > request.spec.burst:
                raise ConfigurationError(
                    "RateLimiter.all",
                    [("cost", f"{request.cost} from {request.name!r} exceeds its burst")],
                )
        self._requests = tuple(merged.values())
        self._limiters = tuple(limiters)
        # Through the first limiter's failure policy, if the store can fail.
        self._store: BucketStore = limiters[0]._store
        self._clock = limiters[0].clock
        self.name = "+".join(limiter.name for limiter in limiters)
        self.timeout = timeout

    def _max_wait(self, timeout: float | datetime.timedelta | None) -> float:
        if timeout is None:
            timeout = self.timeout
        if timeout is None:
            return min(limiter._max_wait for limiter in self._limiters)
        return clamp_seconds(timeout, "timeout", "RateLimiter.all")

    def _count(self, granted: bool, waited: bool) -> None:
        for limiter in self._limiters:
            if granted:
                limiter._count_granted(waited)
            else:
                next(limiter._rejected)

    def _check_granted(self, decision: Decision) -> None:
        """Raise (and count) a refusal; announce a wait."""
        if not decision.granted:
            self._count(False, False)
            if HUB.active:
                HUB.emit(RateLimitRejected(self.name, decision.retry_after))
            raise RateLimitExceeded(self.name, decision.retry_after)
        if decision.wait > 0 and HUB.active:
            HUB.emit(RateLimitWaited(self.name, decision.wait))

    def try_acquire(self) -> bool:
        """Take from every bucket if all have the tokens now; never waits."""
        granted = self._store.bucket_take(self._requests, 0.0).granted
        self._count(granted, False)
        if not granted and HUB.active:
            HUB.emit(RateLimitRejected(self.name, None))
        return granted

    def acquire(self, timeout: float | datetime.timedelta | None = None) -> None:
        """Take from every bucket, waiting up to ``timeout`` (default: the limit's
        ``timeout``, else the smallest ``max_wait``); raise at once if it would not do."""
        decision = self._store.bucket_take(
            self._requests, _within_deadline(self._max_wait(timeout))
        )
        self._check_granted(decision)
        if decision.wait > 0:
            _sleep_or_refund(self._store, self._clock, self._requests, decision)
        self._count(True, decision.wait > 0)

    async def aacquire(
        self,
        timeout: float | datetime.timedelta | None = None,  # noqa: ASYNC109 - as RateLimiter's
    ) -> None:
        """:meth:`acquire`, awaiting the store and the wait."""
        decision = await self._store.abucket_take(
            self._requests, _within_deadline(self._max_wait(timeout))
        )
        self._check_granted(decision)
        if decision.wait > 0:
            await _asleep_or_refund(self._store, self._clock, self._requests, decision)
        self._count(True, decision.wait > 0)

    def __repr__(self) -> str:
        parts = ", ".join(f"{r.name}[{r.key!r}]x{r.cost}" for r in self._requests)
        return f"CompositeLimit({parts})"


def _within_deadline(max_wait: float) -> float:
    """``max_wait`` bounded by an enclosing Timeout's deadline: a waiter that could
    not be served before it fails at once instead of sleeping past it."""
    left = remaining_time()
    return max_wait if left is None else min(max_wait, max(0.0, left))


def _sleep_or_refund(
    store: BucketStore, clock: Clock, requests: Sequence[BucketRequest], decision: Decision
) -> None:
    """Sleep until a reservation is due; if interrupted, hand it back, then re-raise."""
    try:
        clock.sleep(decision.wait)
    except BaseException:
        store.bucket_refund(requests, decision.reserved)
        raise


async def _asleep_or_refund(
    store: BucketStore, clock: Clock, requests: Sequence[BucketRequest], decision: Decision
) -> None:
    """:func:`_sleep_or_refund` for asyncio: a cancelled waiter gives its tokens back."""
    try:
        await clock.asleep(decision.wait)
    except BaseException:
        await store.abucket_refund(requests, decision.reserved)
        raise

"""RateLimiter: a token bucket per key, sync and asyncio, shareable through a store.

``RateLimiter("emails", rate=100, per=60.0)`` lets 100 acquisitions through per
minute, at most ``burst`` (default: ``rate``) at once. The algorithm is the pure
core in :mod:`resilience._core.bucket`; buckets live behind the
:class:`~resilience.storage.buckets.BucketStore` protocol.

Drivers
-------
* ``try_acquire`` never waits. With a store that has the
  :class:`~resilience.storage.buckets.FastTake` capability (the in-memory
  ones), a cost of one goes through the store's fast path (one closure: a
  mutex, a clock read, a dict lookup and the core's ``take_now``, no
  allocation); anything else is one ``bucket_take`` call on the store.
* ``acquire`` / ``aacquire`` reserve, then sleep: the store grants the tokens
  ahead of time and says how long to wait; the caller sleeps on the clock
  holding no lock. A caller that could not be served within its timeout is
  refused at once, with the exact ``retry_after``, and consumes nothing.
* :meth:`RateLimiter.all` combines limits into one all-or-nothing acquisition.

The waiting forms (``acquire``/``aacquire``, the decorators, ``with`` and
``async with``) are written once, in :mod:`resilience._async.ratelimit`; the
sync ones are generated from it (:mod:`resilience._sync.ratelimit`).
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, ParamSpec, Self, TypeVar

from pydantic import SkipValidation, field_validator, model_validator

from ._async import ratelimit as _async_ratelimit
from ._core.bucket import BucketSpec, Decision, check_shape
from ._counters import counter_value
from ._policy import Policy
from ._sync import ratelimit as _sync_ratelimit
from ._validation import (
    MAX_COUNT,
    Count,
    DerivedError,
    Duration,
    FinitePositiveDuration,
    OptionsModel,
    PolicyName,
    PositiveNumber,
    clamp_seconds,
    options_from,
    options_model,
)
from .clock import MAX_DURATION, SYSTEM_CLOCK, Clock
from .errors import ConfigurationError, RateLimitExceeded
from .storage._guard import FailureMode, GuardedBucketStore
from .storage.buckets import BucketRequest, BucketStore, FastTake, MemoryBucketStore, plain_key
from .telemetry.channel import Telemetry
from .telemetry.events import RateLimitRejected, RateLimitWaited
from .telemetry.otel import CallObserver

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


def _default_burst(rate: float) -> int:
    """``rate`` rounded down, at least 1."""
    return min(MAX_COUNT, max(1, int(rate)))


class _RateLimiterRules(OptionsModel):
    """What :class:`RateLimiter`'s signature cannot say; ``RateLimiterOptions`` derives from it.

    Besides each option's own bounds, the shape they make together is checked
    (:func:`resilience._core.bucket.check_shape`): one token every ``per / rate``
    seconds, between 1e-6 and 1e9 s, and ``burst * per / rate`` (the time an
    empty bucket takes to refill) at most 1e9 s.
    """

    @field_validator("store", check_fields=False)
    @classmethod
    def _check_store(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, BucketStore):
            raise ValueError(f"expected a BucketStore (e.g. MemoryBucketStore), got {value!r}")
        return value

    @field_validator("clock", check_fields=False)
    @classmethod
    def _check_clock(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, Clock):
            raise ValueError(f"expected a Clock (now, sleep, asleep), got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_shape(self) -> Self:
        options = vars(self)  # the fields are declared by the derived model
        rate, burst = options["rate"], options["burst"]
        problem = check_shape(
            rate, options["per"], _default_burst(rate) if burst is None else burst
        )
        if problem is not None:
            raise DerivedError(*problem)
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

    def wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        return _sync_ratelimit.wrap_sync(self, fn)

    def wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        return _async_ratelimit.wrap_async(self, fn)

    def _wrap_sync(self, fn: Callable[P, R], observer: CallObserver) -> Callable[P, R]:
        return _sync_ratelimit.wrap_sync(self, fn, observer)

    def _wrap_async(
        self, fn: Callable[P, Awaitable[R]], observer: CallObserver
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        return _async_ratelimit.wrap_async(self, fn, observer)

    __enter__ = _sync_ratelimit.__enter__
    __exit__ = _sync_ratelimit.__exit__
    __aenter__ = _async_ratelimit.__aenter__
    __aexit__ = _async_ratelimit.__aexit__


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
        "_backend",
        "_clock",
        "_max_wait",
        "_owner",
        "_rejected",
        "_spec",
        "_store",
        "_take_one",
        "_telemetry",
        "_waited",
        "name",
        "options",
    )

    def __init__(
        self,
        name: PolicyName,
        *,
        rate: PositiveNumber,
        per: FinitePositiveDuration = 1.0,
        burst: Count | None = None,
        max_wait: Duration | None = None,
        store: SkipValidation[BucketStore | None] = None,
        clock: SkipValidation[Clock | None] = None,
        on_store_failure: FailureMode = "fail_closed",
    ) -> None:
        """Each option is declared here once; ``RateLimiterOptions`` is derived from it.

        ``rate`` tokens are added per ``per`` seconds; ``burst`` is the bucket's
        capacity, the most tokens available at once (default: ``rate`` rounded
        down, at least 1). ``max_wait``: how long ``acquire`` and the
        decorator/context forms wait by default (``None`` or ``inf``: as long as
        it takes, up to 1e9 s). ``on_store_failure``, while a shared store is
        unavailable: ``"fail_closed"`` (raise :class:`~resilience.StoreUnavailable`),
        ``"fail_open"`` (grant), ``"local"`` (limit in this process until the store
        is back); see docs/storage.md.
        """
        self._configure(options_from(RateLimiterOptions, f"RateLimiter {name!r}", locals()))

    def _configure(self, options: Any) -> None:
        self.options = options
        self.name = options.name
        self._telemetry = Telemetry(self.kind, options.name)
        self._owner = f"RateLimiter {options.name!r}"
        burst = _default_burst(options.rate) if options.burst is None else options.burst
        self._spec = spec = BucketSpec.of(options.rate, options.per, burst)
        # Every wait has a ceiling: "as long as it takes" is at most MAX_DURATION.
        max_wait = options.max_wait
        self._max_wait = MAX_DURATION if max_wait is None else min(max_wait, MAX_DURATION)
        self._acquired = itertools.count()
        self._rejected = itertools.count()
        self._waited = itertools.count()
        store: BucketStore | None = options.store
        if store is None:
            # The default store is made here, once, and kept in the options, so that a
            # limiter rebuilt from them (from_options) shares its buckets.
            store = MemoryBucketStore(options.clock)
            self.options = options.model_copy(update={"store": store})
        self._backend = store
        clock = options.clock
        self._take_one: Callable[[Key], bool] | None = None
        if isinstance(store, FastTake):
            # An in-process store: the fast path for a cost of one, on the store's clock,
            # and no failure policy (it has no outages).
            fast = store.bucket_fast_take(options.name, spec)
            if clock is not None and clock is not fast.clock:
                raise ConfigurationError(
                    self._owner,
                    [
                        (
                            "clock",
                            "differs from the memory store's clock: give both the same clock "
                            "(MemoryBucketStore(clock)), or give it to the store only",
                        )
                    ],
                )
            self._take_one, clock = fast.take, fast.clock
        self._clock: Clock = SYSTEM_CLOCK if clock is None else clock
        self._store = store
        if self._take_one is None:
            # A store that can fail: its calls go through the failure policy.
            self._store = GuardedBucketStore(
                store, options.on_store_failure, self._clock, self._owner, self._telemetry
            )

    # -- properties -------------------------------------------------------------------

    @property
    def rate(self) -> float:
        return float(self.options.rate)

    @property
    def per(self) -> float:
        return float(self.options.per)

    @property
    def burst(self) -> int:
        return self._spec.burst

    @property
    def store(self) -> BucketStore:
        return self._backend

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
            key = plain_key(key)
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
        tel = self._telemetry
        if tel.wants(RateLimitRejected):
            tel.emit(RateLimitRejected(self.name, None, key))
        return False

    def _check_granted(self, decision: Decision, key: Key) -> None:
        """Raise (and count) a refusal; announce a wait."""
        tel = self._telemetry
        if not decision.granted:
            next(self._rejected)
            if tel.wants(RateLimitRejected):
                tel.emit(RateLimitRejected(self.name, decision.retry_after, key))
            raise RateLimitExceeded(self.name, decision.retry_after, key=key)
        if decision.wait > 0 and tel.wants(RateLimitWaited):
            tel.emit(RateLimitWaited(self.name, decision.wait, key))

    def _count_granted(self, waited: bool) -> None:
        if waited:
            next(self._waited)
        next(self._acquired)

    acquire = _sync_ratelimit.acquire
    aacquire = _async_ratelimit.aacquire

    # -- feedback and inspection ---------------------------------------------------------------

    penalize = _sync_ratelimit.penalize
    apenalize = _async_ratelimit.apenalize
    tokens = _sync_ratelimit.tokens
    atokens = _async_ratelimit.atokens

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
                key = plain_key(key)
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
            f"RateLimiter({o.name!r}, rate={o.rate!r}, per={o.per!r}, "
            f"burst={self._spec.burst!r}, store={self._backend!r})"
        )


RateLimiterOptions = options_model(RateLimiter.__init__, "RateLimiterOptions", _RateLimiterRules)


class Limit(_Acquiring):
    """A :class:`RateLimiter` bound to one key, cost and timeout (see :meth:`RateLimiter.limit`)."""

    __slots__ = ("_telemetry", "cost", "key", "limiter", "name", "timeout")  # Policy.telemetry

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
            key = plain_key(key)
        return key

    def try_acquire(self) -> bool:
        return self.limiter.try_acquire(self._key(), self.cost)

    def acquire(self) -> None:
        self.limiter.acquire(self._key(), self.cost, self.timeout)

    async def aacquire(self) -> None:
        await self.limiter.aacquire(self._key(), self.cost, self.timeout)

    def wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        return _sync_ratelimit.wrap_limit_sync(self, fn)

    def wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        return _async_ratelimit.wrap_limit_async(self, fn)

    def _wrap_sync(self, fn: Callable[P, R], observer: CallObserver) -> Callable[P, R]:
        return _sync_ratelimit.wrap_limit_sync(self, fn, observer)

    def _wrap_async(
        self, fn: Callable[P, Awaitable[R]], observer: CallObserver
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        return _async_ratelimit.wrap_limit_async(self, fn, observer)

    def __repr__(self) -> str:
        return f"Limit({self.name!r}, key={self.key!r}, cost={self.cost})"


class CompositeLimit(_Acquiring):
    """Several limits taken together, all or nothing (see :meth:`RateLimiter.all`).

    Refused when any bucket is short; then no bucket is touched, and
    ``retry_after`` is when all of them will have the tokens. Every limiter
    involved counts the acquisition (acquired, waited or rejected).
    """

    __slots__ = ("_clock", "_limiters", "_requests", "_store", "_telemetry", "name", "timeout")

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
            tel = self.telemetry
            if tel.wants(RateLimitRejected):
                tel.emit(RateLimitRejected(self.name, decision.retry_after))
            raise RateLimitExceeded(self.name, decision.retry_after)
        if decision.wait > 0:
            tel = self.telemetry
            if tel.wants(RateLimitWaited):
                tel.emit(RateLimitWaited(self.name, decision.wait))

    def try_acquire(self) -> bool:
        """Take from every bucket if all have the tokens now; never waits."""
        granted = self._store.bucket_take(self._requests, 0.0).granted
        self._count(granted, False)
        if not granted:
            tel = self.telemetry
            if tel.wants(RateLimitRejected):
                tel.emit(RateLimitRejected(self.name, None))
        return granted

    acquire = _sync_ratelimit.acquire_all
    aacquire = _async_ratelimit.aacquire_all

    def __repr__(self) -> str:
        parts = ", ".join(f"{r.name}[{r.key!r}]x{r.cost}" for r in self._requests)
        return f"CompositeLimit({parts})"

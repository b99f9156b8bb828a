"""Retry: call again after a failure, with classified errors and jittered backoff.

The per-call path is built for speed: the decorator returns one closure that, on
success, does nothing but call the function and tick an atomic counter. All
retry bookkeeping lives in a :class:`_Call` object created on the first failure,
so a ``Retry`` shared by many threads and tasks keeps no per-call state on
itself. Sync and async drivers are thin loops around the same decision method,
:meth:`Retry._next_delay`.
"""

from __future__ import annotations

import contextvars
import itertools
import math
import random
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, overload

from pydantic import Field, field_validator

from ._clock import MAX_DURATION, SYSTEM_CLOCK, Clock
from ._counters import counter_value
from ._deadline import DEADLINE, RawDeadline, remaining_time, tighter
from ._policy import Policy
from ._testing_mode import TESTING_MODE
from ._validation import (
    MAX_NAME_LENGTH,
    Count,
    OptionsModel,
    PolicyName,
    PositiveSeconds,
    build_options,
)
from .backoff import Backoff
from .classify import (
    ClassifierLike,
    ErrorClass,
    error_filter,
    make_classifier,
    normalize_error_selector,
)
from .errors import ConfigurationError
from .telemetry._hub import HUB
from .telemetry.events import AttemptStarted, GaveUp, RetryScheduled
from .telemetry.otel import OTEL, CallObserver, attempt_span

__all__ = [
    "Attempt",
    "GiveUpReason",
    "Retry",
    "RetryInfo",
    "RetryOptions",
    "RetryStatistics",
    "with_retry",
]

P = ParamSpec("P")
R = TypeVar("R")

GiveUpReason = Literal["not_retryable", "attempts", "deadline"]

DEFAULT_RETRY_AFTER_CEILING = 300.0
"""The longest wait a server's ``Retry-After`` (or a rejection's ``retry_after``)
may ask for when neither ``max_delay`` nor the backoff sets a ceiling: constant,
schedule and uncapped linear backoffs. A longer hint is capped to it (see
docs/retry.md, "Deadline and Retry-After")."""

_NO_RESULT: Any = object()


def _coerce_backoff(value: Any, field: str, owner: str) -> Any:
    """Build a Backoff from a dict (as configuration files give it), naming ``field``."""
    if not isinstance(value, Mapping):
        return value
    try:
        return Backoff.from_options(dict(value))
    except ConfigurationError as error:
        nested = [
            (f"{field}.{name}", message.partition(": ")[2])
            for name, message in zip(error.fields, error.errors, strict=True)
        ]
        raise ConfigurationError(owner, nested) from error


RetryOn = Iterable[ErrorClass | str | type[BaseException]] | Callable[[BaseException], bool]


class RetryOptions(OptionsModel):
    """Validated options of a :class:`Retry`."""

    attempts: Count = 3
    backoff: Backoff = Field(default_factory=lambda: Backoff.exponential(0.1, 10.0))
    deadline: PositiveSeconds | None = None
    max_delay: PositiveSeconds | None = None
    retry_on: Any = None
    backoff_by_class: dict[ErrorClass, Backoff] = Field(default_factory=dict)
    respect_retry_after: bool = True
    retry_if_result: Callable[[Any], bool] | None = None
    classifier: Any = None
    on_retry: Callable[[RetryInfo], object] | None = None
    on_give_up: Callable[[RetryInfo], object] | None = None
    name: PolicyName = "retry"
    clock: Clock = SYSTEM_CLOCK
    rng: random.Random | None = None

    @field_validator("retry_on")
    @classmethod
    def _check_retry_on(cls, value: Any) -> Any:
        return normalize_error_selector(value)

    @field_validator("classifier")
    @classmethod
    def _check_classifier(cls, value: Any) -> Any:
        try:
            make_classifier(value)
        except (TypeError, ValueError) as error:
            raise ValueError(str(error)) from None
        return value


@dataclass(frozen=True, slots=True)
class RetryInfo:
    """What a hook is told about a failed attempt (``on_retry``) or a give-up."""

    name: str
    attempt: int
    """Number of the attempt that just failed (1-based)."""
    delay: float | None
    """Seconds until the next attempt; ``None`` when giving up."""
    exception: BaseException | None
    result: Any
    error_class: ErrorClass | None
    elapsed: float
    reason: GiveUpReason | None = None


@dataclass(frozen=True, slots=True)
class RetryStatistics:
    """Counts kept by one :class:`Retry` object over all its calls.

    A call is counted once its first attempt has ended.
    """

    calls: int
    attempts: int
    retries: int
    successes: int
    give_ups: int


class _Call:
    """Bookkeeping of one call that has failed at least once."""

    __slots__ = ("attempts", "error_class", "max_attempts", "previous_delay", "start")

    def __init__(self, start: float, max_attempts: int) -> None:
        self.attempts = 1
        self.start = start
        self.previous_delay: float | None = None
        self.error_class: ErrorClass | None = None
        self.max_attempts = max_attempts


class _GiveUp(Exception):
    """Internal control flow of the retry loop; never escapes it."""

    __slots__ = ("reason",)

    def __init__(self, reason: GiveUpReason) -> None:
        self.reason = reason


class Retry(Policy):
    """A retry policy: how many attempts, how long to wait, what to retry.

    One ``Retry`` may serve any number of functions, threads and tasks at once.
    """

    kind = "retry"

    __slots__ = (
        "__weakref__",
        "_attempts",
        "_backoff",
        "_backoff_by_class",
        "_classify",
        "_clock",
        "_deadline",
        "_delay_ceiling",
        "_fast_successes",
        "_give_ups",
        "_on_give_up",
        "_on_retry",
        "_retries",
        "_retry_after_ceiling",
        "_retry_if_result",
        "_retryable",
        "_rng",
        "_slow_calls",
        "_slow_successes",
        "name",
        "options",
    )

    def __init__(
        self,
        *,
        attempts: int = 3,
        backoff: Backoff | Mapping[str, Any] | None = None,
        deadline: float | Any | None = None,
        max_delay: float | Any | None = None,
        retry_on: RetryOn | None = None,
        backoff_by_class: Mapping[ErrorClass | str, Backoff | Mapping[str, Any]] | None = None,
        respect_retry_after: bool = True,
        retry_if_result: Callable[[Any], bool] | None = None,
        classifier: ClassifierLike | Iterable[ClassifierLike] = None,
        on_retry: Callable[[RetryInfo], object] | None = None,
        on_give_up: Callable[[RetryInfo], object] | None = None,
        name: str = "retry",
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "attempts": attempts,
            "deadline": deadline,
            "max_delay": max_delay,
            "retry_on": retry_on,
            "respect_retry_after": respect_retry_after,
            "retry_if_result": retry_if_result,
            "classifier": classifier,
            "on_retry": on_retry,
            "on_give_up": on_give_up,
            "name": name,
            "clock": SYSTEM_CLOCK if clock is None else clock,
            "rng": rng,
        }
        owner = f"Retry {name!r}"
        if backoff is not None:
            values["backoff"] = _coerce_backoff(backoff, "backoff", owner)
        if backoff_by_class is not None:
            values["backoff_by_class"] = {
                key: _coerce_backoff(value, f"backoff_by_class.{key}", owner)
                for key, value in backoff_by_class.items()
            }
        self._configure(build_options(RetryOptions, owner, **values))

    def _configure(self, options: RetryOptions) -> None:
        self.options = options
        self.name = options.name
        self._attempts = options.attempts
        self._backoff = options.backoff
        self._backoff_by_class = dict(options.backoff_by_class)
        self._deadline = options.deadline
        max_delay = options.max_delay
        # No wait is ever longer than max_delay, nor than MAX_DURATION (inf included).
        self._delay_ceiling = MAX_DURATION if max_delay is None else min(max_delay, MAX_DURATION)
        # A server's Retry-After is honoured up to the backoff's own cap (for the
        # backoff of the error's class); see _hint_ceiling.
        self._retry_after_ceiling = {
            backoff: self._hint_ceiling(backoff)
            for backoff in (options.backoff, *options.backoff_by_class.values())
        }
        self._classify = make_classifier(options.classifier)
        self._retryable = error_filter(options.retry_on, self._classify)
        self._retry_if_result = options.retry_if_result
        self._on_retry = options.on_retry
        self._on_give_up = options.on_give_up
        self._clock = options.clock
        self._rng = options.rng if options.rng is not None else random.Random()
        self._fast_successes = itertools.count()
        self._slow_calls = itertools.count()
        self._slow_successes = itertools.count()
        self._retries = itertools.count()
        self._give_ups = itertools.count()

    # -- presets ----------------------------------------------------------------

    @classmethod
    def default(cls, **overrides: Any) -> Retry:
        """3 attempts, exponential backoff from 0.1 s (x2, capped at 10 s, full jitter),
        no deadline: the same as ``Retry()``, and what ``@with_retry`` uses."""
        options: dict[str, Any] = {
            "attempts": 3,
            "backoff": Backoff.exponential(0.1, 10.0, jitter="full"),
        }
        return cls(**(options | overrides))

    @classmethod
    def aggressive(cls, **overrides: Any) -> Retry:
        """10 attempts, exponential backoff from 0.05 s (x2, capped at 5 s, full jitter),
        60 s deadline: for calls that must get through and can afford to wait."""
        options: dict[str, Any] = {
            "attempts": 10,
            "backoff": Backoff.exponential(0.05, 5.0, jitter="full"),
            "deadline": 60.0,
            "name": "aggressive",
        }
        return cls(**(options | overrides))

    @classmethod
    def fast(cls, **overrides: Any) -> Retry:
        """3 attempts, exponential backoff from 0.01 s (x2, capped at 0.1 s, equal jitter),
        1 s deadline: for latency-sensitive paths where a slow answer is a wrong one."""
        options: dict[str, Any] = {
            "attempts": 3,
            "backoff": Backoff.exponential(0.01, 0.1, jitter="equal"),
            "deadline": 1.0,
            "name": "fast",
        }
        return cls(**(options | overrides))

    # -- statistics ---------------------------------------------------------------

    @property
    def statistics(self) -> RetryStatistics:
        """Counts over every call made through this object so far."""
        fast = counter_value(self._fast_successes)
        slow_calls = counter_value(self._slow_calls)
        retries = counter_value(self._retries)
        calls = fast + slow_calls
        return RetryStatistics(
            calls=calls,
            attempts=calls + retries,
            retries=retries,
            successes=fast + counter_value(self._slow_successes),
            give_ups=counter_value(self._give_ups),
        )

    # -- the decision shared by every driver ------------------------------------------

    def _deadline_scope(self, start: float) -> contextvars.Token[RawDeadline | None] | None:
        """Make this retry's own deadline the ambient one for the call, so that what
        runs inside (a rate limiter's wait, a bulkhead's queue, ``remaining_time()``)
        is bounded by it too. Only retries with a deadline pay for it."""
        if self._deadline is None:
            return None
        return DEADLINE.set(tighter(start, self._deadline, self._clock, self.name))

    def _start_call(self, start: float | None) -> _Call:
        next(self._slow_calls)
        return _Call(
            self._clock.now() if start is None else start,
            TESTING_MODE.cap(self._attempts),
        )

    def _hint_ceiling(self, backoff: Backoff) -> float:
        """The longest wait a server's hint may ask for, with this backoff: the
        backoff's cap and ``max_delay``, whichever is smaller; without either,
        :data:`DEFAULT_RETRY_AFTER_CEILING`."""
        cap = getattr(backoff.options, "cap", math.inf)
        if not math.isfinite(cap):
            cap = math.inf if self.options.max_delay is not None else DEFAULT_RETRY_AFTER_CEILING
        return min(cap, self._delay_ceiling)

    def _next_delay(self, call: _Call, exc: BaseException | None, result: Any) -> float:
        """After a failed attempt: the delay before the next one, or raise ``_GiveUp``."""
        retry_after: float | None = None
        if exc is not None:
            classification = self._classify(exc)
            call.error_class = classification.error_class
            if not self._retryable(exc, classification):
                raise _GiveUp("not_retryable")
            retry_after = classification.retry_after
        else:
            call.error_class = None
        if call.attempts >= call.max_attempts:
            raise _GiveUp("attempts")
        backoff = self._backoff_by_class.get(call.error_class, self._backoff)  # type: ignore[arg-type]
        delay = backoff.delay(call.attempts, call.previous_delay, self._rng)
        if not delay <= self._delay_ceiling:  # NaN from a custom backoff too
            delay = self._delay_ceiling if delay > 0 else 0.0
        # A hint that is not a number >= 0 (NaN, negative) is no hint; inf is capped.
        if retry_after is not None and self.options.respect_retry_after and retry_after > delay:
            delay = max(delay, min(retry_after, self._retry_after_ceiling[backoff]))
        if self._deadline is not None:
            elapsed = self._clock.now() - call.start
            if elapsed + delay >= self._deadline:  # no time would be left to try
                raise _GiveUp("deadline")
        # An enclosing Timeout's deadline: never sleep into it (no time would be left).
        left = remaining_time()
        if left is not None and delay >= left:
            raise _GiveUp("deadline")
        call.previous_delay = delay
        if self._on_retry is not None:
            self._on_retry(self._info(call, delay, exc, result, None))
        if HUB.active:
            error_class = None if call.error_class is None else call.error_class.value
            HUB.emit(RetryScheduled(self.name, call.attempts, delay, error_class, exc))
        return delay

    def _begin_attempt(self, call: _Call) -> None:
        # Counted here, not when the retry is scheduled: a call whose backoff sleep
        # was interrupted (an exception, a cancelled task) made no further attempt.
        next(self._retries)
        call.attempts += 1
        if HUB.active:
            HUB.emit(AttemptStarted(self.name, call.attempts))

    def _info(
        self,
        call: _Call,
        delay: float | None,
        exc: BaseException | None,
        result: Any,
        reason: GiveUpReason | None,
    ) -> RetryInfo:
        return RetryInfo(
            name=self.name,
            attempt=call.attempts,
            delay=delay,
            exception=exc,
            result=None if result is _NO_RESULT else result,
            error_class=call.error_class,
            elapsed=self._clock.now() - call.start,
            reason=reason,
        )

    def _give_up(
        self, call: _Call, reason: GiveUpReason, exc: BaseException | None, result: Any
    ) -> Any:
        """Finish a failed call: re-raise the last exception, or return the last result."""
        next(self._give_ups)
        if self._on_give_up is not None:
            self._on_give_up(self._info(call, None, exc, result, reason))
        if HUB.active:
            error_class = None if call.error_class is None else call.error_class.value
            elapsed = self._clock.now() - call.start
            HUB.emit(GaveUp(self.name, call.attempts, elapsed, reason, error_class, exc))
        if exc is None:
            return result
        if call.attempts > 1 or reason != "not_retryable":
            elapsed = self._clock.now() - call.start
            why = {
                "not_retryable": "error not retryable",
                "attempts": "attempts exhausted",
                "deadline": "next wait would pass the deadline",
            }[reason]
            exc.add_note(
                f"resilience: retry {self.name!r} gave up after {call.attempts} "
                f"attempt{'s' if call.attempts != 1 else ''} over {elapsed:.3f}s ({why})"
            )
        raise exc

    def _should_sleep(self) -> bool:
        return not TESTING_MODE.active

    # -- sync and async drivers -------------------------------------------------------

    def wrap_sync(self, fn: Callable[P, R], observer: CallObserver | None = None) -> Callable[P, R]:
        hit = self._fast_successes.__next__
        retry_rest = self._retry_rest_sync
        check = self._retry_if_result
        now = self._clock.now
        deadline, clock, name = self._deadline, self._clock, self.name
        get_deadline, set_deadline = DEADLINE.get, DEADLINE.set
        simple = self._deadline is None and check is None

        # One body, built twice: without an observer (what an observer calls
        # inside its span) and with one. The test for an OpenTelemetry SDK is
        # written inline because a function call would cost more than it does.
        def build(observer: CallObserver | None) -> Callable[P, R]:
            # Read the clock up front only when a deadline needs it: the success
            # path of a plain retry then costs one call and one counter tick.
            if simple:

                def retrying(*args: P.args, **kwargs: P.kwargs) -> R:
                    if observer is not None and OTEL.on:
                        return observer.call_sync(unobserved, args, kwargs)
                    try:
                        result = fn(*args, **kwargs)
                    except Exception as exc:
                        failure = exc
                    else:
                        hit()
                        return result
                    return retry_rest(fn, args, kwargs, failure, _NO_RESULT, None)

                return retrying

            def retrying_checked(*args: P.args, **kwargs: P.kwargs) -> R:
                if observer is not None and OTEL.on:
                    return observer.call_sync(unobserved, args, kwargs)
                start = now()
                # This retry's deadline flows inward (see _deadline_scope), built
                # inline: this runs on the success path of every call.
                if deadline is None:
                    scope = None
                elif get_deadline() is None:
                    scope = set_deadline((start + deadline, clock, name, deadline))
                else:
                    scope = set_deadline(tighter(start, deadline, clock, name))
                try:
                    try:
                        result = fn(*args, **kwargs)
                    except Exception as exc:
                        failure = exc
                    else:
                        if check is None or not check(result):
                            hit()
                            return result
                        return retry_rest(fn, args, kwargs, None, result, start)
                    return retry_rest(fn, args, kwargs, failure, _NO_RESULT, start)
                finally:
                    if scope is not None:
                        DEADLINE.reset(scope)

            return retrying_checked

        unobserved = build(None)
        return unobserved if observer is None else build(observer)

    def _retry_rest_sync(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        exc: BaseException | None,
        result: Any,
        start: float | None,
    ) -> R:
        call = self._start_call(start)
        check = self._retry_if_result
        sleep = self._clock.sleep
        while True:
            try:
                delay = self._next_delay(call, exc, result)
            except _GiveUp as give_up:
                reason = give_up.reason
                break
            if delay > 0 and self._should_sleep():
                sleep(delay)
            self._begin_attempt(call)
            try:
                with attempt_span(self.name, call.attempts):
                    value = fn(*args, **kwargs)
            except Exception as error:
                exc, result = error, _NO_RESULT
                continue
            exc, result = None, value
            if check is None or not check(value):
                next(self._slow_successes)
                return value
        return self._give_up(call, reason, exc, result)  # type: ignore[no-any-return]

    def wrap_async(
        self, fn: Callable[P, Awaitable[R]], observer: CallObserver | None = None
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        hit = self._fast_successes.__next__
        retry_rest = self._retry_rest_async
        check = self._retry_if_result
        now = self._clock.now
        deadline, clock, name = self._deadline, self._clock, self.name
        get_deadline, set_deadline = DEADLINE.get, DEADLINE.set
        simple = self._deadline is None and check is None

        def build(observer: CallObserver | None) -> Callable[P, Coroutine[Any, Any, R]]:
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
                    return await retry_rest(fn, args, kwargs, failure, _NO_RESULT, None)

                return retrying

            async def retrying_checked(*args: P.args, **kwargs: P.kwargs) -> R:
                if observer is not None and OTEL.on:
                    return await observer.call_async(unobserved, args, kwargs)
                start = now()
                # This retry's deadline flows inward (see _deadline_scope), built
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
                        return await retry_rest(fn, args, kwargs, None, result, start)
                    return await retry_rest(fn, args, kwargs, failure, _NO_RESULT, start)
                finally:
                    if scope is not None:
                        DEADLINE.reset(scope)

            return retrying_checked

        unobserved = build(None)
        return unobserved if observer is None else build(observer)

    async def _retry_rest_async(
        self,
        fn: Callable[..., Awaitable[R]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        exc: BaseException | None,
        result: Any,
        start: float | None,
    ) -> R:
        call = self._start_call(start)
        check = self._retry_if_result
        asleep = self._clock.asleep
        while True:
            try:
                delay = self._next_delay(call, exc, result)
            except _GiveUp as give_up:
                reason = give_up.reason
                break
            if delay > 0 and self._should_sleep():
                await asleep(delay)
            self._begin_attempt(call)
            try:
                with attempt_span(self.name, call.attempts):
                    value = await fn(*args, **kwargs)
            except Exception as error:
                exc, result = error, _NO_RESULT
                continue
            exc, result = None, value
            if check is None or not check(value):
                next(self._slow_successes)
                return value
        return self._give_up(call, reason, exc, result)  # type: ignore[no-any-return]

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)``, retrying as configured."""
        start = self._clock.now()
        scope = self._deadline_scope(start)
        try:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                # Leave the except block first: retrying inside it would chain every
                # later exception to this one through __context__.
                failure = exc
            else:
                check = self._retry_if_result
                if check is not None and check(result):
                    return self._retry_rest_sync(fn, args, kwargs, None, result, start)
                next(self._fast_successes)
                return result
            return self._retry_rest_sync(fn, args, kwargs, failure, _NO_RESULT, start)
        finally:
            if scope is not None:
                DEADLINE.reset(scope)

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call and await ``fn(*args, **kwargs)``, retrying as configured."""
        start = self._clock.now()
        scope = self._deadline_scope(start)
        try:
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                failure = exc
            else:
                check = self._retry_if_result
                if check is not None and check(result):
                    return await self._retry_rest_async(fn, args, kwargs, None, result, start)
                next(self._fast_successes)
                return result
            return await self._retry_rest_async(fn, args, kwargs, failure, _NO_RESULT, start)
        finally:
            if scope is not None:
                DEADLINE.reset(scope)

    # -- block form: ``for attempt in retry: with attempt: ...`` ------------------------

    def __iter__(self) -> Iterator[Attempt]:
        start = self._clock.now()
        attempt = Attempt(1)
        yield attempt
        if attempt._succeeded(self._retry_if_result):
            next(self._fast_successes)
            return
        call = self._start_call(start)
        while True:
            try:
                delay = self._next_delay(call, attempt._exception, attempt._result)
            except _GiveUp as give_up:
                self._give_up(call, give_up.reason, attempt._exception, attempt._result)
                return
            if delay > 0 and self._should_sleep():
                self._clock.sleep(delay)
            self._begin_attempt(call)
            attempt = Attempt(call.attempts)
            yield attempt
            if attempt._succeeded(self._retry_if_result):
                next(self._slow_successes)
                return

    async def __aiter__(self) -> AsyncIterator[Attempt]:
        start = self._clock.now()
        attempt = Attempt(1)
        yield attempt
        if attempt._succeeded(self._retry_if_result):
            next(self._fast_successes)
            return
        call = self._start_call(start)
        while True:
            try:
                delay = self._next_delay(call, attempt._exception, attempt._result)
            except _GiveUp as give_up:
                self._give_up(call, give_up.reason, attempt._exception, attempt._result)
                return
            if delay > 0 and self._should_sleep():
                await self._clock.asleep(delay)
            self._begin_attempt(call)
            attempt = Attempt(call.attempts)
            yield attempt
            if attempt._succeeded(self._retry_if_result):
                next(self._slow_successes)
                return

    def __repr__(self) -> str:
        o = self.options
        return (
            f"Retry(name={o.name!r}, attempts={o.attempts}, backoff={o.backoff!r}, "
            f"deadline={o.deadline!r})"
        )


class Attempt:
    """One attempt of the block form; use it as a (sync or async) context manager.

    An exception raised in the block is caught and handed to the retry loop,
    which either retries or re-raises it unchanged. ``set_result`` hands a value
    to ``retry_if_result``.
    """

    __slots__ = ("_exception", "_result", "number")

    def __init__(self, number: int) -> None:
        self.number = number
        self._exception: BaseException | None = None
        self._result: Any = _NO_RESULT

    def set_result(self, value: Any) -> None:
        """Record the attempt's result, for ``retry_if_result`` to judge."""
        self._result = value

    def _succeeded(self, check: Callable[[Any], bool] | None) -> bool:
        if self._exception is not None:
            return False
        return check is None or self._result is _NO_RESULT or not check(self._result)

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        # Only Exception subclasses are retried: KeyboardInterrupt, SystemExit,
        # GeneratorExit and CancelledError always propagate.
        if isinstance(exc, Exception):
            self._exception = exc
            return True
        return False

    async def __aenter__(self) -> Attempt:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<Attempt {self.number}>"


@overload
def with_retry(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def with_retry(
    fn: None = None, /, **options: Any
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def with_retry(fn: Callable[P, R] | None = None, /, **options: Any) -> Any:
    """Retry the decorated function: bare (``@with_retry``) uses :meth:`Retry.default`;
    with arguments (``@with_retry(attempts=5, ...)``) they override its options.

    The wrapper's ``.policy`` attribute is the :class:`Retry`, for its statistics.
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        settings = dict(options)
        qualname = getattr(func, "__qualname__", None)
        # A name is at most MAX_NAME_LENGTH characters: keep the innermost part.
        default = qualname[-MAX_NAME_LENGTH:] if isinstance(qualname, str) and qualname else "retry"
        settings.setdefault("name", default)
        return Retry.default(**settings)(func)

    if fn is not None:
        if options:
            raise TypeError("with_retry takes either a function or options, not both")
        return decorate(fn)
    return decorate

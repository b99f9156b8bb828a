"""Retry: call again after a failure, with classified errors and jittered backoff.

Three layers, each in its own module:

* the decision, pure: :mod:`resilience._core.retry` (and the backoff arithmetic,
  :mod:`resilience._core.backoff`);
* the drivers, written once in :mod:`resilience._async.retry` and generated into
  :mod:`resilience._sync.retry`: the decorator's closures, the retry loop,
  ``call``/``acall`` and the block form;
* this facade: the public :class:`Retry` (options, statistics, hooks, events),
  the per-call bookkeeping the drivers share, and :meth:`Retry.decide`, the
  decision for callers that run the attempts themselves (job queues).

The per-call path is built for speed: the decorator returns one closure that, on
success, does nothing but call the function and tick an atomic counter. All
retry bookkeeping lives in a :class:`_Call` object created on the first failure,
so a ``Retry`` shared by many threads and tasks keeps no per-call state on
itself. Every failure, in every form and in :meth:`Retry.decide`, is judged by
the one method :meth:`Retry._judge`.
"""

from __future__ import annotations

import contextvars
import datetime
import itertools
import math
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypedDict, TypeVar, Unpack, overload

from pydantic import SkipValidation, field_validator

from ._async import retry as _async_driver
from ._core.retry import (
    DEFAULT_RETRY_AFTER_CEILING,
    NO_RESULT,
    GiveUpReason,
    RetryRules,
    Waiting,
    delay_ceiling,
    hint_ceiling,
)
from ._counters import counter_value
from ._deadline import DEADLINE, RawDeadline, tighter
from ._policy import Policy
from ._sync import retry as _sync_driver
from ._testing_mode import TESTING_MODE
from ._validation import (
    MAX_NAME_LENGTH,
    Count,
    OptionsModel,
    PolicyName,
    PositiveDuration,
    options_from,
    options_model,
)
from .backoff import Backoff
from .classify import (
    ClassifierLike,
    ErrorClass,
    checked_classifier,
    error_filter,
    make_classifier,
    normalize_error_selector,
)
from .clock import SYSTEM_CLOCK, Clock
from .errors import ConfigurationError
from .telemetry.channel import Telemetry
from .telemetry.events import AttemptStarted, GaveUp, RetryScheduled
from .telemetry.otel import BlockSpan, CallObserver

__all__ = [
    "DEFAULT_RETRY_AFTER_CEILING",
    "Attempt",
    "GiveUpReason",
    "Retry",
    "RetryDecision",
    "RetryInfo",
    "RetryOptions",
    "RetryStatistics",
    "with_retry",
]

P = ParamSpec("P")
R = TypeVar("R")


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


class RetryRulesModel(OptionsModel):
    """What :class:`Retry`'s signature cannot say; ``RetryOptions`` derives from it."""

    @field_validator("retry_on", check_fields=False)
    @classmethod
    def _check_retry_on(cls, value: Any) -> Any:
        return normalize_error_selector(value)

    _check_classifier = field_validator("classifier", check_fields=False)(checked_classifier)

    @field_validator("backoff", check_fields=False)
    @classmethod
    def _default_backoff(cls, value: Any) -> Backoff:
        # The parameter is not validated by its type (a union would name its
        # branches as fields, ``backoff.is-instance[Backoff]``): checked here.
        if value is None:
            return Backoff.exponential(0.1, 10.0)
        if isinstance(value, Mapping):  # a model built directly from a document
            try:
                return Backoff.from_options(dict(value))
            except ConfigurationError as error:
                raise ValueError("; ".join(error.errors)) from None
        if not isinstance(value, Backoff):
            raise ValueError(f"expected a Backoff, got {type(value).__name__}")
        return value

    @field_validator("clock", check_fields=False)
    @classmethod
    def _default_clock(cls, value: Clock | None) -> Clock:
        return SYSTEM_CLOCK if value is None else value

    @field_validator("backoff_by_class", check_fields=False)
    @classmethod
    def _check_backoff_by_class(cls, value: Any) -> dict[ErrorClass, Backoff]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError(f"must be a mapping of error class to Backoff, got {value!r}")
        checked: dict[ErrorClass, Backoff] = {}
        for key, backoff in value.items():
            try:
                error_class = ErrorClass(key)
            except ValueError:
                raise ValueError(f"{key!r} is not an error class") from None
            if not isinstance(backoff, Backoff):
                raise ValueError(f"{key}: expected a Backoff, got {type(backoff).__name__}")
            checked[error_class] = backoff
        return checked


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
class RetryDecision:
    """What :meth:`Retry.decide` says after an attempt: retry (after ``delay``) or not."""

    retry: bool
    """Whether to make another attempt."""
    delay: float | None
    """Seconds to wait before it when retrying; ``None`` otherwise."""
    error_class: ErrorClass | None
    """The failure's class; ``None`` for a result (judged bad, or a success)."""
    reason: GiveUpReason | None
    """Why a failure is not retried; ``None`` when retrying, and on success."""


_SUCCESS = RetryDecision(retry=False, delay=None, error_class=None, reason=None)


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

    def __init__(
        self,
        start: float,
        max_attempts: int,
        attempts: int = 1,
        previous_delay: float | None = None,
    ) -> None:
        self.attempts = attempts
        """The number of the attempt that ran last (1-based)."""
        self.start = start
        self.previous_delay = previous_delay
        self.error_class: ErrorClass | None = None
        self.max_attempts = max_attempts


class RetryKeywords(TypedDict, total=False):
    """The keywords of :class:`Retry`, for type checkers: what ``with_retry(...)`` and
    the presets (``Retry.default(...)``) accept. tests/test_options.py holds them
    equal to ``Retry.__init__``'s, name for name and type for type."""

    attempts: int
    backoff: Backoff | Mapping[str, Any] | None
    deadline: float | datetime.timedelta | None
    max_delay: float | datetime.timedelta | None
    retry_on: RetryOn | None
    backoff_by_class: Mapping[ErrorClass | str, Backoff | Mapping[str, Any]] | None
    respect_retry_after: bool
    retry_if_result: Callable[[Any], bool] | None
    classifier: ClassifierLike | Iterable[ClassifierLike]
    on_retry: Callable[[RetryInfo], object] | None
    on_give_up: Callable[[RetryInfo], object] | None
    name: str
    clock: Clock | None
    rng: random.Random | None


class Retry(Policy):
    """A retry policy: how many attempts, how long to wait, what to retry.

    One ``Retry`` may serve any number of functions, threads and tasks at once.
    """

    kind = "retry"

    __slots__ = (
        "__weakref__",
        "_attempts",
        "_classify",
        "_clock",
        "_deadline",
        "_fast_successes",
        "_give_ups",
        "_on_give_up",
        "_on_retry",
        "_retries",
        "_retry_if_result",
        "_retryable",
        "_rng",
        "_rules",
        "_slow_calls",
        "_slow_successes",
        "_telemetry",
        "name",
        "options",
    )

    def __init__(
        self,
        *,
        attempts: Count = 3,
        backoff: SkipValidation[Backoff | Mapping[str, Any] | None] = None,
        deadline: PositiveDuration | None = None,
        max_delay: PositiveDuration | None = None,
        retry_on: SkipValidation[RetryOn | None] = None,
        backoff_by_class: SkipValidation[
            Mapping[ErrorClass | str, Backoff | Mapping[str, Any]] | None
        ] = None,
        respect_retry_after: bool = True,
        retry_if_result: Callable[[Any], bool] | None = None,
        classifier: SkipValidation[ClassifierLike | Iterable[ClassifierLike]] = None,
        on_retry: Callable[[RetryInfo], object] | None = None,
        on_give_up: Callable[[RetryInfo], object] | None = None,
        name: PolicyName = "retry",
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Each option is declared here once; ``RetryOptions`` is derived from it."""
        owner = f"Retry {name!r}"
        # A backoff may come as a mapping (from a document): built here, so that an
        # error inside it names the nested field (``backoff.base``).
        if backoff is not None:
            backoff = _coerce_backoff(backoff, "backoff", owner)
        if backoff_by_class is not None and isinstance(backoff_by_class, Mapping):
            backoff_by_class = {
                key: _coerce_backoff(value, f"backoff_by_class.{key}", owner)
                for key, value in backoff_by_class.items()
            }
        self._configure(options_from(RetryOptions, owner, locals()))

    def _configure(self, options: Any) -> None:
        self.options = options
        self.name = options.name
        self._telemetry = Telemetry(self.kind, options.name)
        self._attempts = options.attempts
        self._deadline = options.deadline
        max_delay = options.max_delay

        # A server's Retry-After is honoured up to the cap of the backoff of the
        # error's class (and max_delay): see hint_ceiling.
        def waiting(backoff: Backoff) -> Waiting:
            cap = getattr(backoff.options, "cap", math.inf)
            return Waiting(backoff.rule, hint_ceiling(cap, max_delay))

        default = waiting(options.backoff)
        own = {key: waiting(backoff) for key, backoff in options.backoff_by_class.items()}
        self._rules = RetryRules(
            waiting_by_class={key: own.get(key, default) for key in (None, *ErrorClass)},
            # No wait is ever longer than max_delay, nor than MAX_DURATION (inf included).
            delay_ceiling=delay_ceiling(max_delay),
            respect_retry_after=options.respect_retry_after,
            deadline=options.deadline,
        )
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
    def default(cls, **overrides: Unpack[RetryKeywords]) -> Retry:
        """3 attempts, exponential backoff from 0.1 s (x2, capped at 10 s, full jitter),
        no deadline: the same as ``Retry()``, and what ``@with_retry`` uses."""
        options: dict[str, Any] = {
            "attempts": 3,
            "backoff": Backoff.exponential(0.1, 10.0, jitter="full"),
        }
        return cls(**{**options, **overrides})

    @classmethod
    def aggressive(cls, **overrides: Unpack[RetryKeywords]) -> Retry:
        """10 attempts, exponential backoff from 0.05 s (x2, capped at 5 s, full jitter),
        60 s deadline: for calls that must get through and can afford to wait."""
        options: dict[str, Any] = {
            "attempts": 10,
            "backoff": Backoff.exponential(0.05, 5.0, jitter="full"),
            "deadline": 60.0,
            "name": "aggressive",
        }
        return cls(**{**options, **overrides})

    @classmethod
    def fast(cls, **overrides: Unpack[RetryKeywords]) -> Retry:
        """3 attempts, exponential backoff from 0.01 s (x2, capped at 0.1 s, equal jitter),
        1 s deadline: for latency-sensitive paths where a slow answer is a wrong one."""
        options: dict[str, Any] = {
            "attempts": 3,
            "backoff": Backoff.exponential(0.01, 0.1, jitter="equal"),
            "deadline": 1.0,
            "name": "fast",
        }
        return cls(**{**options, **overrides})

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

    # -- per-call bookkeeping, shared by every driver and by decide() -------------------

    def _deadline_scope(self, start: float) -> contextvars.Token[RawDeadline | None] | None:
        """Make this retry's own deadline the ambient one for the call, so that what
        runs inside (a rate limiter's wait, a bulkhead's queue, ``remaining_time()``)
        is bounded by it too. Only retries with a deadline pay for it."""
        if self._deadline is None:
            return None
        return DEADLINE.set(tighter(start, self._deadline, self._clock, self.name))

    def _enclosing_remaining(self, start: float) -> float | None:
        """What an enclosing deadline leaves, or None: the retry's own deadline is
        judged from the elapsed time alone, exactly as :meth:`decide` judges it
        (the absolute times of a clock far from zero would round differently)."""
        deadline = DEADLINE.get()
        if deadline is None:
            return None
        own = self._deadline
        if own is not None and deadline[0] == start + own and deadline[2] == self.name:
            return None  # the scope this retry set itself (see tighter: an outer one is sooner)
        return deadline[0] - deadline[1].now()

    def _start_call(self, start: float | None) -> _Call:
        next(self._slow_calls)
        return _Call(
            self._clock.now() if start is None else start,
            TESTING_MODE.cap(self._attempts),
        )

    def _judge(
        self,
        call: _Call,
        exc: BaseException | None,
        result: Any,
        elapsed: float,
        remaining: float | None,
    ) -> float | GiveUpReason:
        """After ``call``'s last attempt failed (raised ``exc``, or returned a
        ``result`` judged bad): the delay before the next attempt, or the reason
        to give up. Calls the hook and emits the event of either outcome, and
        counts a give-up. ``elapsed``: seconds since the call began; ``remaining``:
        what an enclosing deadline leaves (``None``: none)."""
        if exc is None:
            call.error_class = error_class = None
            retryable, retry_after = True, None
        else:
            classification = self._classify(exc)
            call.error_class = error_class = classification.error_class
            # Only Exception subclasses are retried (a loop never sees the others).
            retryable = isinstance(exc, Exception) and self._retryable(exc, classification)
            retry_after = classification.retry_after
        delay = self._rules.next_delay(
            call.attempts,
            call.max_attempts,
            retryable,
            error_class,
            retry_after,
            call.previous_delay,
            elapsed,
            remaining,
            self._rng,
        )
        if isinstance(delay, str):  # a give-up reason
            next(self._give_ups)
            if self._on_give_up is not None:
                self._on_give_up(self._info(call, None, exc, result, delay, elapsed))
            tel = self._telemetry
            if tel.wants(GaveUp):
                value = None if error_class is None else error_class.value
                tel.emit(GaveUp(self.name, call.attempts, elapsed, delay, value, exc))
            return delay
        call.previous_delay = delay
        if self._on_retry is not None:
            self._on_retry(self._info(call, delay, exc, result, None, elapsed))
        tel = self._telemetry
        if tel.wants(RetryScheduled):
            value = None if error_class is None else error_class.value
            tel.emit(RetryScheduled(self.name, call.attempts, delay, value, exc))
        return delay

    def _begin_attempt(self, call: _Call) -> None:
        # Counted here, not when the retry is scheduled: a call whose backoff sleep
        # was interrupted (an exception, a cancelled task) made no further attempt.
        next(self._retries)
        call.attempts += 1
        tel = self._telemetry
        if tel.wants(AttemptStarted):
            tel.emit(AttemptStarted(self.name, call.attempts))

    def _info(
        self,
        call: _Call,
        delay: float | None,
        exc: BaseException | None,
        result: Any,
        reason: GiveUpReason | None,
        elapsed: float,
    ) -> RetryInfo:
        return RetryInfo(
            name=self.name,
            attempt=call.attempts,
            delay=delay,
            exception=exc,
            result=None if result is NO_RESULT else result,
            error_class=call.error_class,
            elapsed=elapsed,
            reason=reason,
        )

    def _finish(
        self,
        call: _Call,
        reason: GiveUpReason,
        exc: BaseException | None,
        result: Any,
        elapsed: float,
    ) -> Any:
        """End a call :meth:`_judge` gave up on: re-raise the last exception (with a
        note, once it was retried or could have been), or return the last result."""
        if exc is None:
            return result
        if call.attempts > 1 or reason != "not_retryable":
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

    # -- the decision, for callers that run the attempts themselves ---------------------

    def decide(
        self,
        attempt: int,
        exception: BaseException | None = None,
        *,
        result: Any = NO_RESULT,
        elapsed: float | datetime.timedelta = 0.0,
        previous_delay: float | datetime.timedelta | None = None,
    ) -> RetryDecision:
        """After attempt number ``attempt`` (1 = the first call) raised ``exception``
        or returned ``result``: retry, after how long, or stop, and why.

        For callers that run the attempts themselves, across processes and
        restarts (durable jobs, task queues): the decision depends on its
        arguments, the options and the policy's ``rng`` only. ``elapsed`` is the
        time since the first attempt began (the ``deadline`` counts from there);
        ``previous_delay`` the delay this returned last time (only decorrelated
        jitter reads it). It honours ``retry_on``, ``retry_if_result``,
        ``backoff_by_class``, Retry-After, ``max_delay`` and ``deadline`` exactly
        as the in-process loop does (an enclosing ``Timeout`` and testing mode
        are the loop's alone), calls ``on_retry`` or ``on_give_up``, emits
        ``RetryScheduled`` or ``GaveUp``, and counts in :attr:`statistics`.

        An attempt that neither raised nor returned a result ``retry_if_result``
        rejects is a success: ``retry=False`` and ``reason=None``.
        """
        attempt = self._decide_argument_attempt(attempt)
        seconds = self._decide_argument_seconds("elapsed", elapsed)
        previous = (
            None
            if previous_delay is None
            else self._decide_argument_seconds("previous_delay", previous_delay)
        )
        if exception is not None:
            if not isinstance(exception, BaseException):
                self._refuse_argument("exception", f"must be an exception, got {exception!r}")
            if result is not NO_RESULT:
                self._refuse_argument("result", "an attempt raised or returned, not both")
        else:
            check = self._retry_if_result
            if result is NO_RESULT or check is None or not check(result):
                next(self._fast_successes if attempt == 1 else self._slow_successes)
                return _SUCCESS
        if attempt == 1:
            next(self._slow_calls)
        call = _Call(math.nan, self._attempts, attempt, previous)  # decide reads no clock
        delay = self._judge(call, exception, result, seconds, None)
        if isinstance(delay, str):  # a give-up reason
            return RetryDecision(False, None, call.error_class, delay)
        next(self._retries)  # the caller makes the next attempt: count it now
        return RetryDecision(True, delay, call.error_class, None)

    def _decide_argument_attempt(self, attempt: Any) -> int:
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            self._refuse_argument("attempt", f"must be an integer >= 1, got {attempt!r}")
        return int(attempt)

    def _decide_argument_seconds(self, argument: str, value: Any) -> float:
        if isinstance(value, datetime.timedelta):
            value = value.total_seconds()
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._refuse_argument(argument, f"must be a number of seconds, got {value!r}")
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
        if not (0.0 <= seconds < math.inf):  # NaN too
            self._refuse_argument(argument, f"must be finite and >= 0 seconds, got {value!r}")
        return seconds

    def _refuse_argument(self, argument: str, message: str) -> None:
        raise ConfigurationError(f"Retry {self.name!r} decide()", [(argument, message)])

    # -- the drivers: resilience._async.retry, and resilience._sync.retry generated from it

    def wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        return _sync_driver.wrap_sync(self, fn)

    def wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        return _async_driver.wrap_async(self, fn)

    def _wrap_sync(self, fn: Callable[P, R], observer: CallObserver) -> Callable[P, R]:
        return _sync_driver.wrap_sync(self, fn, observer)

    def _wrap_async(
        self, fn: Callable[P, Awaitable[R]], observer: CallObserver
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        return _async_driver.wrap_async(self, fn, observer)

    call = _sync_driver.call
    acall = _async_driver.acall
    __iter__ = _sync_driver.attempts
    __aiter__ = _async_driver.attempts

    def __repr__(self) -> str:
        o = self.options
        return (
            f"Retry(name={o.name!r}, attempts={o.attempts}, backoff={o.backoff!r}, "
            f"deadline={o.deadline!r})"
        )


RetryOptions = options_model(Retry.__init__, "RetryOptions", RetryRulesModel)


class Attempt:
    """One attempt of the block form; use it as a (sync or async) context manager.

    An exception raised in the block is caught and handed to the retry loop,
    which either retries or re-raises it unchanged. ``set_result`` hands a value
    to ``retry_if_result``.
    """

    __slots__ = ("_block", "_entered", "_exception", "_result", "number")

    def __init__(self, number: int) -> None:
        self.number = number
        self._exception: BaseException | None = None
        self._result: Any = NO_RESULT
        # The call's span while an SDK is set (the iterator sets it), and what
        # entering it returned.
        self._block: BlockSpan | None = None
        self._entered: Any = None

    def set_result(self, value: Any) -> None:
        """Record the attempt's result, for ``retry_if_result`` to judge."""
        self._result = value

    def _succeeded(self, check: Callable[[Any], bool] | None) -> bool:
        if self._exception is not None:
            return False
        return check is None or self._result is NO_RESULT or not check(self._result)

    def __enter__(self) -> Attempt:
        block = self._block
        if block is not None:
            self._entered = block.enter_attempt(self.number)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        block = self._block
        if block is not None:
            block.exit_attempt(self._entered, exc_type, exc, tb)
        # Only Exception subclasses are retried: KeyboardInterrupt, SystemExit,
        # GeneratorExit and CancelledError always propagate.
        if isinstance(exc, Exception):
            self._exception = exc
            return True
        return False

    async def __aenter__(self) -> Attempt:
        return self.__enter__()

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
    fn: None = None, /, **options: Unpack[RetryKeywords]
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def with_retry(fn: Callable[P, R] | None = None, /, **options: Any) -> Any:
    """Retry the decorated function: bare (``@with_retry``) uses :meth:`Retry.default`;
    with arguments (``@with_retry(attempts=5, ...)``) they override its options.

    The wrapper's ``.policy`` attribute is the :class:`Retry`, for its statistics.
    """

    unknown = sorted(set(options) - set(RetryOptions.model_fields))
    if unknown:  # at once, not when the decorator is applied
        raise TypeError(f"with_retry() got an unexpected keyword argument {unknown[0]!r}")

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

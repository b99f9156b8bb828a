"""Retry: call again after a failure, with classified errors and jittered backoff.

Three layers, each in its own module:

* the decision, pure: :mod:`resilience._core.retry` (and the backoff arithmetic,
  :mod:`resilience._core.backoff`);
* the drivers, written once in :mod:`resilience._async.retry` and generated into
  :mod:`resilience._sync.retry`: the decorator's closures, the retry loop,
  ``call``/``acall`` and the block form;
* this facade: the public :class:`Retry` (options, statistics, hooks, events),
  the per-call bookkeeping the drivers share, and :meth:`Retry.decide`, the
  decision for callers that run the attempts themselves (job queues); beside
  it, :mod:`resilience._retry_options` (the rules its signature cannot say, and
  its keywords for type checkers), :mod:`resilience._retry_values` (what hooks
  are told, what ``decide`` answers, the statistics) and
  :mod:`resilience._retry_attempt` (the block form's attempt).

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
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar, Unpack, overload

from pydantic import SkipValidation

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
from ._retry_attempt import Attempt
from ._retry_options import RetryKeywords, RetryOn, RetryRulesModel, coerce_backoff
from ._retry_values import SUCCESS, RetryDecision, RetryInfo, RetryStatistics
from ._sync import retry as _sync_driver
from ._testing_mode import TESTING_MODE
from ._validation import (
    MAX_NAME_LENGTH,
    Count,
    PolicyName,
    PositiveDuration,
    options_from,
    options_model,
)
from .backoff import Backoff
from .classify import (
    ClassifierLike,
    ErrorClass,
    error_filter,
    make_classifier,
)
from .clock import Clock
from .errors import ConfigurationError
from .telemetry.channel import Telemetry
from .telemetry.events import AttemptStarted, GaveUp, RetryScheduled
from .telemetry.otel import CallObserver

__all__ = [
    "DEFAULT_RETRY_AFTER_CEILING",
    "Attempt",
    "GiveUpReason",
    "Retry",
    "RetryDecision",
    "RetryInfo",
    "RetryKeywords",
    "RetryOptions",
    "RetryStatistics",
    "with_retry",
]

P = ParamSpec("P")
R = TypeVar("R")


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
        classifier: SkipValidation[ClassifierLike | Sequence[ClassifierLike]] = None,
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
            backoff = coerce_backoff(backoff, "backoff", owner)
        if backoff_by_class is not None and isinstance(backoff_by_class, Mapping):
            backoff_by_class = {
                key: coerce_backoff(value, f"backoff_by_class.{key}", owner)
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
                return SUCCESS
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

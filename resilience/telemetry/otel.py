"""OpenTelemetry: a span per protected call, span events, and metrics.

Nothing here runs unless an OpenTelemetry SDK is configured: every protected
callable is built in two copies from one body, and the public copy starts with
a test of :data:`OTEL` written inline (one attribute read), so with no SDK the
whole cost is that test. With an SDK the call goes through
:meth:`CallObserver.call_sync` / :meth:`CallObserver.call_async`, which open the
span, time the call and count its outcome around the unobserved copy; with-blocks
(``with breaker:``) get the same through :meth:`CallObserver.span`, and a
retry's block form (``for attempt in retry:``) through :meth:`CallObserver.block`.
Events reach this adapter as a subscriber of the hub (span events on the
current span, and metrics), wanted only while an SDK is set.

Names (spans, attributes, metrics) are documented in ``docs/telemetry.md``;
attributes live in one ``resilience.*`` namespace, plus the OpenTelemetry
conventions' ``error.type``.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics_api
from opentelemetry import trace as otel_trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .._version import VERSION
from ..errors import ResilienceError
from ._hub import HUB
from .events import (
    AttemptStarted,
    BulkheadRejected,
    CallRejected,
    CircuitStateChanged,
    Event,
    FallbackUsed,
    GaveUp,
    JobEnqueued,
    JobSettled,
    RateLimitRejected,
    RateLimitWaited,
    RetryScheduled,
    StoreOutage,
    StoreRecovered,
    TimeoutExpired,
    TimeoutThreadAbandoned,
    error_type_name,
)
from .redaction import get_redactor, key_label

__all__ = [
    "EVENT_METRICS",
    "OTEL",
    "BlockSpan",
    "CallObserver",
    "configure",
    "observe_async",
    "observe_sync",
    "otel_configured",
    "otel_trace",
    "refresh",
]

P = ParamSpec("P")
R = TypeVar("R")

_SCOPE = "resilience"


def _is_default(provider: object, defaults: tuple[type, ...]) -> bool:
    # The API package holds only the no-op and proxy providers: a provider from
    # any other module (the SDK's, a vendor's) is a real one.
    return isinstance(provider, defaults) or type(provider).__module__.startswith(
        ("opentelemetry.trace", "opentelemetry.metrics")
    )


class _Switch:
    """Whether an OpenTelemetry SDK is set, as one attribute a protected call reads.

    OpenTelemetry's public API tells whether a provider is set only through
    ``get_tracer_provider()``/``get_meter_provider()``, which cost about 0.6 µs
    each (they look the environment up), and it offers no notification when
    one is set. So ``on`` is a cached answer, refreshed when a policy decorates
    a function, when :func:`configure` or :func:`refresh` is called, and, while
    no SDK is set, by a daemon thread that looks again at growing intervals
    (50 ms up to 1 s). A provider can be set only once per process, so once
    both are set the thread stops.
    """

    __slots__ = ("_lock", "_poller", "metrics", "on", "tracing")

    FIRST_POLL = 0.05
    LAST_POLL = 1.0

    def __init__(self) -> None:
        self.on = self.tracing = self.metrics = False
        self._lock = threading.Lock()
        self._poller: threading.Thread | None = None

    def refresh(self) -> bool:
        """Look the providers up again; returns the new ``on``."""
        self.tracing = not _is_default(
            otel_trace.get_tracer_provider(),
            (otel_trace.ProxyTracerProvider, otel_trace.NoOpTracerProvider),
        )
        self.metrics = not _is_default(
            otel_metrics_api.get_meter_provider(), (otel_metrics_api.NoOpMeterProvider,)
        )
        self.on = _SETTINGS.enabled and (self.tracing or self.metrics)
        return self.on

    def watch(self) -> None:
        """Refresh now, and keep looking in the background until a provider is set."""
        if self.refresh() or (self._poller is not None and self._poller.is_alive()):
            return
        with self._lock:
            if self._poller is None or not self._poller.is_alive():
                self._poller = threading.Thread(
                    target=self._poll, name="resilience-otel-watch", daemon=True
                )
                self._poller.start()

    def _poll(self) -> None:
        interval = self.FIRST_POLL
        while not (self.tracing and self.metrics):
            time.sleep(interval)
            self.refresh()
            interval = min(interval * 2, self.LAST_POLL)

    def _forked(self) -> None:
        watching = self._poller is not None
        self._lock = threading.Lock()
        self._poller = None
        # A pre-fork server (gunicorn, Celery's prefork pool) sets its SDK up in each
        # worker, after the fork: the parent's watcher did not survive it, so the
        # child starts its own.
        if watching and not (self.tracing and self.metrics):
            self.watch()


def otel_configured() -> bool:
    """Whether an OpenTelemetry SDK (tracer or meter provider) is set, looked up now."""
    return OTEL.refresh()


def refresh() -> bool:
    """Notice a tracer or meter provider set just now.

    Without this call a provider set after your policies decorated their
    functions is noticed within a second.
    """
    return OTEL.refresh()


class _Settings:
    __slots__ = ("call_metrics", "enabled", "key_attributes")

    def __init__(self) -> None:
        self.enabled = True
        self.key_attributes = False
        self.call_metrics = True


_SETTINGS = _Settings()
OTEL = _Switch()
OTEL.refresh()
os.register_at_fork(after_in_child=OTEL._forked)


def configure(
    *,
    enabled: bool | None = None,
    key_attributes: bool | None = None,
    call_metrics: bool | None = None,
) -> None:
    """Adjust the OpenTelemetry adapter.

    ``enabled=False`` turns it off even with an SDK configured;
    ``key_attributes=True`` adds rate-limiter keys to metric attributes, as their
    labels unless keys are shown (mind the cardinality); ``call_metrics=False``
    stops recording ``resilience.call.duration`` per call (the SDK's histogram
    costs about as much as a span: drop it if you derive call metrics from
    spans, e.g. with the Collector's spanmetrics connector). Other metrics, from
    failure paths, stay.
    """
    if enabled is not None:
        _SETTINGS.enabled = enabled
    if key_attributes is not None:
        _SETTINGS.key_attributes = key_attributes
    if call_metrics is not None:
        _SETTINGS.call_metrics = call_metrics
    OTEL.refresh()


# -- instruments, rebuilt whenever the global providers change ---------------------------


def _observe_breaker_states(options: Any) -> Iterator[Any]:
    from opentelemetry.metrics import Observation

    from .channel import tracked_states

    for telemetry, state in tracked_states():
        yield Observation(
            1, {"resilience.policy.name": telemetry.name, "resilience.circuit_breaker.state": state}
        )


# OpenTelemetry's semantic conventions advise these for durations in seconds;
# the SDK's default buckets are meant for milliseconds.
_SECONDS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
# Store outages last from a blip to an incident.
_OUTAGE_BUCKETS = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0]


def _observe_queue_depths(options: Any) -> Iterator[Any]:
    from opentelemetry.metrics import Observation

    from .channel import tracked_queues

    for name, stats in tracked_queues():
        for state in ("pending", "running", "done", "dead"):
            yield Observation(
                getattr(stats, state),
                {"resilience.policy.name": name, "resilience.job.state": state},
            )


def _observe_queue_lags(options: Any) -> Iterator[Any]:
    from opentelemetry.metrics import Observation

    from .channel import tracked_queues

    for name, stats in tracked_queues():
        yield Observation(stats.lag, {"resilience.policy.name": name})


class _Instruments:
    """Every instrument the library records, from one meter."""

    def __init__(self, meter: Any) -> None:
        # One histogram is both the call count (its data points' count, by
        # outcome) and the latency: one measurement per call, as OpenTelemetry's
        # own HTTP conventions do with http.server.request.duration.
        self.duration = meter.create_histogram(
            "resilience.call.duration",
            unit="s",
            description="Protected calls: duration (all attempts and waits), count by outcome.",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self.retries = meter.create_counter(
            "resilience.retry.retries", unit="{retry}", description="Retries scheduled."
        )
        self.give_ups = meter.create_counter(
            "resilience.retry.give_ups",
            unit="{call}",
            description="Calls a retry gave up on.",
        )
        self.transitions = meter.create_counter(
            "resilience.circuit_breaker.transitions",
            unit="{transition}",
            description="Circuit state changes, by new state.",
        )
        self.breaker_rejections = meter.create_counter(
            "resilience.circuit_breaker.rejections",
            unit="{call}",
            description="Calls rejected by an open circuit.",
        )
        meter.create_observable_gauge(
            "resilience.circuit_breaker.state",
            callbacks=[_observe_breaker_states],
            unit="{state}",
            description="1 for each breaker's current state.",
        )
        self.acquisitions = meter.create_counter(
            "resilience.rate_limiter.acquisitions",
            unit="{acquisition}",
            description="Rate-limiter acquisitions, by outcome (acquired, waited, rejected).",
        )
        self.wait = meter.create_histogram(
            "resilience.rate_limiter.wait.duration",
            unit="s",
            description="Time callers waited for rate-limiter tokens.",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self.bulkhead_rejections = meter.create_counter(
            "resilience.bulkhead.rejections",
            unit="{call}",
            description="Calls rejected by a full bulkhead.",
        )
        self.timeouts = meter.create_counter(
            "resilience.timeout.expirations",
            unit="{call}",
            description="Calls that ran past their timeout.",
        )
        self.fallbacks = meter.create_counter(
            "resilience.fallback.uses",
            unit="{call}",
            description="Calls answered by a fallback.",
        )
        self.abandoned_threads = meter.create_counter(
            "resilience.timeout.abandoned_threads",
            unit="{thread}",
            description="Threads a thread-mode timeout stopped waiting for (still running).",
        )
        self.store_outages = meter.create_counter(
            "resilience.store.outages",
            unit="{outage}",
            description="Outages of a policy's shared store, counted when they begin.",
        )
        self.store_outage_duration = meter.create_histogram(
            "resilience.store.outage.duration",
            unit="s",
            description="How long a store outage lasted, recorded when it ends.",
            explicit_bucket_boundaries_advisory=_OUTAGE_BUCKETS,
        )
        self.jobs_enqueued = meter.create_counter(
            "resilience.job.enqueued",
            unit="{job}",
            description="Jobs added to a durable queue (idempotent repeats not counted).",
        )
        self.job_attempts = meter.create_counter(
            "resilience.job.attempts",
            unit="{attempt}",
            description="Job attempts ended, by outcome (done, retry, dead, deferred, lost).",
        )
        self.dead_letters = meter.create_counter(
            "resilience.job.dead_letters",
            unit="{job}",
            description="Jobs dead-lettered, by reason.",
        )
        meter.create_observable_gauge(
            "resilience.job.depth",
            callbacks=[_observe_queue_depths],
            unit="{job}",
            description="Jobs in each durable queue, by state.",
        )
        meter.create_observable_gauge(
            "resilience.job.lag",
            callbacks=[_observe_queue_lags],
            unit="s",
            description="How long the oldest due job of each queue has waited past its due time.",
        )


class _Providers:
    """The tracer and instruments of the current global providers, cached."""

    __slots__ = ("_instruments", "_lock", "_meter_provider", "_tracer", "_tracer_provider")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tracer_provider: Any = None
        self._tracer: Any = None
        self._meter_provider: Any = None
        self._instruments: _Instruments | None = None

    def tracer(self) -> Any:
        provider = otel_trace.get_tracer_provider()
        if provider is not self._tracer_provider:
            with self._lock:
                self._tracer = provider.get_tracer(_SCOPE, VERSION)
                self._tracer_provider = provider
        return self._tracer

    def instruments(self) -> _Instruments:
        provider = otel_metrics_api.get_meter_provider()
        instruments = self._instruments
        if provider is not self._meter_provider or instruments is None:
            with self._lock:
                instruments = _Instruments(provider.get_meter(_SCOPE, VERSION))
                self._instruments = instruments
                self._meter_provider = provider
        return instruments


_PROVIDERS = _Providers()


# -- the per-call observer --------------------------------------------------------------


def _outcome(error: BaseException) -> str:
    if isinstance(error, ResilienceError) and hasattr(error, "retry_after"):
        return "rejected"  # refused by a breaker, limiter or bulkhead: it never ran
    if not isinstance(error, Exception):
        return "cancelled"
    return "failure"


def _record_error(span: Any, error: BaseException) -> str:
    error_type = error_type_name(error) or "unknown"
    redactor = get_redactor()
    message = redactor.redact_text(str(error))
    span.set_attribute("error.type", error_type)
    span.add_event(
        "exception",
        {
            "exception.type": error_type,
            "exception.message": message,
            # Tracebacks quote source lines and messages: redacted like the rest.
            "exception.stacktrace": redactor.redact_text(
                "".join(traceback.format_exception(error))
            ),
        },
    )
    span.set_status(Status(StatusCode.ERROR, f"{error_type}: {message}"[:256]))
    return error_type


class CallObserver:
    """Spans and metrics around one protected callable; built once, at decoration."""

    __slots__ = ("_attributes", "_failure_attributes", "_span_name", "_success_attributes")

    def __init__(self, kind: str, name: str) -> None:
        OTEL.watch()
        self._span_name = f"{kind} {name}"
        self._attributes = {"resilience.policy.kind": kind, "resilience.policy.name": name}
        # Attribute sets are built once and reused: the SDK hashes them per measurement.
        self._success_attributes = self._attributes | {"resilience.outcome": "success"}
        self._failure_attributes: dict[tuple[str, str], dict[str, str]] = {}

    def _start(self) -> AbstractContextManager[Any]:
        return _PROVIDERS.tracer().start_as_current_span(  # type: ignore[no-any-return]
            self._span_name,
            kind=SpanKind.INTERNAL,
            attributes=self._attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

    def _finish(self, started: float, outcome: str, error_type: str | None) -> None:
        if not OTEL.metrics or not _SETTINGS.call_metrics:
            return
        if error_type is None or outcome == "success":
            attributes = self._success_attributes
        else:
            key = (outcome, error_type)
            attributes = self._failure_attributes.get(key) or self._remember(key)
        _PROVIDERS.instruments().duration.record(time.perf_counter() - started, attributes)

    def _remember(self, key: tuple[str, str]) -> dict[str, str]:
        attributes = self._attributes | {"resilience.outcome": key[0], "error.type": key[1]}
        if len(self._failure_attributes) < 64:  # error types are few; bound them anyway
            self._failure_attributes[key] = attributes
        return attributes

    def span(self) -> AbstractContextManager[None]:
        """The span and call metrics around one call, for with-blocks (``with breaker:``):
        the same as :meth:`call_sync` records. Nothing unless an SDK is set."""
        if not OTEL.on:
            return _NO_SPAN
        return _CallSpan(self)

    def block(self) -> BlockSpan:
        """The span and call metrics of a retry's block form, started now (see
        :class:`BlockSpan`)."""
        return BlockSpan(self)

    @contextmanager
    def attempt(self, number: int) -> Iterator[None]:
        """A child span of the current span for retry attempt ``number`` (2 and up)."""
        with _PROVIDERS.tracer().start_as_current_span(
            f"{self._span_name} attempt",
            kind=SpanKind.INTERNAL,
            attributes={
                "resilience.policy.name": self._attributes["resilience.policy.name"],
                "resilience.retry.attempt": number,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except BaseException as error:
                _record_error(span, error)
                raise

    def call_sync(self, raw: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        if not _SETTINGS.enabled:
            return raw(*args, **kwargs)
        started = time.perf_counter()
        outcome, error_type = "success", None
        try:
            with self._start() as span:
                try:
                    return raw(*args, **kwargs)
                except BaseException as error:
                    outcome, error_type = self._failed(span, error)
                    raise
        finally:
            # Measured after the span has ended: inside it, the SDK would offer
            # every measurement as an exemplar, which costs as much as the span.
            self._finish(started, outcome, error_type)

    async def call_async(
        self, raw: Callable[..., Awaitable[R]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        if not _SETTINGS.enabled:
            return await raw(*args, **kwargs)
        started = time.perf_counter()
        outcome, error_type = "success", None
        try:
            with self._start() as span:
                try:
                    return await raw(*args, **kwargs)
                except BaseException as error:
                    outcome, error_type = self._failed(span, error)
                    raise
        finally:
            self._finish(started, outcome, error_type)

    @staticmethod
    def _failed(span: Any, error: BaseException) -> tuple[str, str]:
        outcome = _outcome(error)
        span.set_attribute("resilience.outcome", outcome)
        return outcome, _record_error(span, error)


class _CallSpan:
    """:meth:`CallObserver.call_sync` as a context manager, for one block."""

    __slots__ = ("_observer", "_scope", "_span", "_started")

    def __init__(self, observer: CallObserver) -> None:
        self._observer = observer

    def __enter__(self) -> None:
        self._started = time.perf_counter()
        self._scope = self._observer._start()
        self._span = self._scope.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        outcome, error_type = "success", None
        try:
            if error is not None:
                outcome, error_type = self._observer._failed(self._span, error)
        finally:
            self._scope.__exit__(exc_type, error, traceback)
            # Measured after the span has ended, as call_sync does.
            self._observer._finish(self._started, outcome, error_type)


class BlockSpan:
    """The call span of a retry's block form (``for attempt in retry:``), and its metrics.

    The block form runs in pieces: the iterator's steps (judging a failure,
    sleeping, starting the next attempt) and each attempt's ``with attempt:``
    block, all in the caller's context. The span is started once and never left
    current across a ``yield``: each piece makes it current for its own
    duration (:meth:`attach`/:meth:`detach`, :meth:`enter_attempt`/
    :meth:`exit_attempt`), so an iterator closed early, possibly in another
    context (an async generator is closed by the event loop, in a task of its
    own), only has to :meth:`end` it: there is nothing to detach.
    """

    __slots__ = ("_observer", "_span", "_started", "escaped")

    def __init__(self, observer: CallObserver) -> None:
        self._observer = observer
        self._started = time.perf_counter()
        self._span: Any = _PROVIDERS.tracer().start_span(
            observer._span_name,
            kind=SpanKind.INTERNAL,
            attributes=observer._attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        self.escaped: BaseException | None = None
        """What escaped an attempt's block (``KeyboardInterrupt``, a cancellation)."""

    def attach(self) -> object:
        """Make the span current in this context; returns the token :meth:`detach` takes."""
        return otel_context.attach(otel_trace.set_span_in_context(self._span))

    @staticmethod
    def detach(token: object) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]

    def enter_attempt(self, number: int) -> tuple[object, AbstractContextManager[None] | None]:
        """Around one attempt's block: the span current, and a child span from attempt 2."""
        token = self.attach()
        child = self._observer.attempt(number) if number > 1 and OTEL.tracing else None
        if child is not None:
            child.__enter__()
        return token, child

    def exit_attempt(
        self,
        entered: tuple[object, AbstractContextManager[None] | None],
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        token, child = entered
        try:
            if child is not None:
                child.__exit__(exc_type, error, traceback)
        finally:
            self.detach(token)
        if error is not None and not isinstance(error, Exception):
            self.escaped = error  # the loop will be closed: this is how the call ended

    def end(self, error: BaseException | None) -> None:
        """End the span with the call's outcome: ``error`` if it failed."""
        outcome, error_type = "success", None
        try:
            if error is not None:
                outcome, error_type = self._observer._failed(self._span, error)
        finally:
            self._span.end()
            self._observer._finish(self._started, outcome, error_type)


def observe_sync(unobserved: Callable[P, R], observer: CallObserver) -> Callable[P, R]:
    """``unobserved`` reporting each call through ``observer`` while an SDK is set.

    One extra frame per call: fine for policies whose own cost dwarfs it. The
    hottest policies (retry, breaker, rate limiter) inline the test instead.
    """

    def observed(*args: P.args, **kwargs: P.kwargs) -> R:
        if OTEL.on:
            return observer.call_sync(unobserved, args, kwargs)
        return unobserved(*args, **kwargs)

    return observed


def observe_async(
    unobserved: Callable[P, Coroutine[Any, Any, R]], observer: CallObserver
) -> Callable[P, Coroutine[Any, Any, R]]:
    """:func:`observe_sync` for coroutine functions."""

    async def observed(*args: P.args, **kwargs: P.kwargs) -> R:
        if OTEL.on:
            return await observer.call_async(unobserved, args, kwargs)
        return await unobserved(*args, **kwargs)

    return observed


_NO_SPAN = nullcontext()


# -- durable jobs: a producer span at enqueue, a consumer span per attempt linked to it ----

_TRACE_CONTEXT = TraceContextTextMapPropagator()


@contextmanager
def job_enqueue_span(queue: str, handler: str) -> Iterator[str | None]:
    """Around an enqueue: a producer span, and its ``traceparent`` to store with the job
    (``None`` when tracing is off)."""
    if not (OTEL.on and OTEL.tracing):
        yield None
        return
    with _PROVIDERS.tracer().start_as_current_span(
        f"enqueue {queue}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "resilience",
            "messaging.operation.type": "send",
            "messaging.destination.name": queue,
            "resilience.policy.kind": "job_queue",
            "resilience.policy.name": queue,
            "resilience.job.handler": handler,
        },
    ):
        carrier: dict[str, str] = {}
        _TRACE_CONTEXT.inject(carrier)
        yield carrier.get("traceparent")


@contextmanager
def job_attempt_span(
    queue: str, handler: str, job_id: int, attempt: int, trace: str | None
) -> Iterator[Any]:
    """Around one attempt of a job: a consumer span linked to the span that enqueued
    it (a new trace: an attempt may run hours later, in another process). Yields the
    span, or ``None`` when tracing is off."""
    if not (OTEL.on and OTEL.tracing):
        yield None
        return
    links = []
    if trace:
        enqueued = otel_trace.get_current_span(
            _TRACE_CONTEXT.extract({"traceparent": trace})
        ).get_span_context()
        if enqueued.is_valid:
            links.append(otel_trace.Link(enqueued))
    with _PROVIDERS.tracer().start_as_current_span(
        f"process {queue}",
        context=otel_context.Context(),
        kind=SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": "resilience",
            "messaging.operation.type": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": str(job_id),
            "resilience.policy.kind": "job_queue",
            "resilience.policy.name": queue,
            "resilience.job.handler": handler,
            "resilience.job.attempt": attempt,
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def record_job_error(span: Any, error: BaseException) -> None:
    """Mark a job attempt's span as failed, with the redacted error."""
    if span is not None:
        _record_error(span, error)


# -- events: span events on the current span, and metrics --------------------------------


def _span_attributes(event: Event) -> dict[str, Any]:
    from .logs import event_fields

    attributes: dict[str, Any] = {}
    for key, value in event_fields(event).items():
        if key == "event":
            continue
        if key.startswith("error."):
            attributes[key] = value
        elif isinstance(value, str | bool | int | float):
            attributes[f"resilience.{key}"] = value
    return attributes


# What each event records besides its span event; None: the span event only.
_EventMetrics = Callable[[Any, _Instruments, dict[str, Any]], None]


def _retry_scheduled(event: RetryScheduled, i: _Instruments, base: dict[str, Any]) -> None:
    i.retries.add(1, base | {"error.type": event.error_type or "result"})


def _gave_up(event: GaveUp, i: _Instruments, base: dict[str, Any]) -> None:
    i.give_ups.add(1, base | {"resilience.retry.reason": event.reason})


def _state_changed(event: CircuitStateChanged, i: _Instruments, base: dict[str, Any]) -> None:
    i.transitions.add(1, base | {"resilience.circuit_breaker.state": event.new_state})


def _breaker_rejected(event: CallRejected, i: _Instruments, base: dict[str, Any]) -> None:
    i.breaker_rejections.add(1, base)


def _keyed(event: RateLimitWaited | RateLimitRejected, base: dict[str, Any]) -> dict[str, Any]:
    if _SETTINGS.key_attributes and event.key is not None:
        return base | {"resilience.rate_limiter.key": key_label(event.key)}
    return base


def _limiter_waited(event: RateLimitWaited, i: _Instruments, base: dict[str, Any]) -> None:
    attributes = _keyed(event, base)
    i.acquisitions.add(1, attributes | {"resilience.outcome": "waited"})
    i.wait.record(event.wait, attributes)


def _limiter_rejected(event: RateLimitRejected, i: _Instruments, base: dict[str, Any]) -> None:
    i.acquisitions.add(1, _keyed(event, base) | {"resilience.outcome": "rejected"})


def _bulkhead_rejected(event: BulkheadRejected, i: _Instruments, base: dict[str, Any]) -> None:
    i.bulkhead_rejections.add(1, base | {"resilience.bulkhead.reason": event.reason})


def _timed_out(event: TimeoutExpired, i: _Instruments, base: dict[str, Any]) -> None:
    i.timeouts.add(1, base)


def _thread_abandoned(event: TimeoutThreadAbandoned, i: _Instruments, base: dict[str, Any]) -> None:
    i.abandoned_threads.add(1, base)


def _fallback_used(event: FallbackUsed, i: _Instruments, base: dict[str, Any]) -> None:
    i.fallbacks.add(1, base | {"resilience.fallback.stale": event.stale})


def _store_down(event: StoreOutage, i: _Instruments, base: dict[str, Any]) -> None:
    store = get_redactor().redact_text(event.store)
    i.store_outages.add(
        1, base | {"resilience.store.name": store, "resilience.store.mode": event.mode}
    )


def _store_back(event: StoreRecovered, i: _Instruments, base: dict[str, Any]) -> None:
    store = get_redactor().redact_text(event.store)
    i.store_outage_duration.record(event.downtime, base | {"resilience.store.name": store})


def _job_enqueued(event: JobEnqueued, i: _Instruments, base: dict[str, Any]) -> None:
    if event.created:
        i.jobs_enqueued.add(1, base | {"resilience.job.handler": event.handler})


def _job_settled(event: JobSettled, i: _Instruments, base: dict[str, Any]) -> None:
    attributes = base | {"resilience.job.handler": event.handler}
    i.job_attempts.add(1, attributes | {"resilience.outcome": event.outcome})
    if event.outcome == "dead":
        i.dead_letters.add(1, attributes | {"resilience.job.reason": event.reason or "unknown"})


EVENT_METRICS: dict[type[Event], _EventMetrics | None] = {
    AttemptStarted: None,  # attempts are calls + retries
    RetryScheduled: _retry_scheduled,
    GaveUp: _gave_up,
    CircuitStateChanged: _state_changed,
    CallRejected: _breaker_rejected,
    RateLimitWaited: _limiter_waited,
    RateLimitRejected: _limiter_rejected,
    BulkheadRejected: _bulkhead_rejected,
    TimeoutExpired: _timed_out,
    TimeoutThreadAbandoned: _thread_abandoned,
    FallbackUsed: _fallback_used,
    StoreOutage: _store_down,
    StoreRecovered: _store_back,
    JobEnqueued: _job_enqueued,
    JobSettled: _job_settled,
}
"""Every event type, and the metrics it records (see docs/telemetry.md)."""


def _record_event_metrics(event: Event, instruments: _Instruments) -> None:
    record = EVENT_METRICS.get(type(event))
    if record is not None:
        record(event, instruments, {"resilience.policy.name": event.policy})


def _wants(event_type: type[Event]) -> bool:
    return OTEL.on


def _on_event(event: Event) -> None:
    if not OTEL.on:
        return
    span = otel_trace.get_current_span()
    if span.is_recording():
        span.add_event(event.name, _span_attributes(event))
    if OTEL.metrics:
        _record_event_metrics(event, _PROVIDERS.instruments())


_unsubscribe_otel = HUB.subscribe(_on_event, interested=_wants)

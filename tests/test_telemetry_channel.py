"""One telemetry channel per policy: who wants events, and what reaches them.

Store outages, recoveries and abandoned timeout threads are events like any
other: a subscriber, the logs and OpenTelemetry all see them. Policies build an
event only while somebody wants it, and every event type has a log format and
an OpenTelemetry mapping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry.trace import StatusCode

import resilience as rs
from resilience import telemetry
from resilience.storage._guard import STORE_RETRY_INTERVAL
from resilience.telemetry import events
from resilience.telemetry import otel as rs_otel
from resilience.telemetry._hub import HUB
from resilience.telemetry.logs import LOGGER, JsonFormatter
from resilience.testing import FakeClock

from .backends import require_postgres
from .conftest import OTel

DOCS = Path(__file__).resolve().parent.parent / "docs" / "telemetry.md"


@pytest.fixture
def received() -> Iterator[list[events.Event]]:
    seen: list[events.Event] = []
    unsubscribe = telemetry.subscribe(seen.append)
    yield seen
    unsubscribe()


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """The ``resilience`` loggers silenced: no logging adapter interest at any level."""
    previous = LOGGER.level
    LOGGER.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        LOGGER.setLevel(previous)


def _values(event_type: type[events.Event]) -> dict[str, Any]:
    """A plausible value for every field of ``event_type``."""
    by_type: dict[str, Any] = {
        "str": "x",
        "str | None": "x",
        "int": 2,
        "float": 1.5,
        "float | None": 1.5,
        "bool": True,
        "BaseException | None": ConnectionError("refused"),
    }
    named = {
        "mode": "local",
        "new_state": "open",
        "old_state": "closed",
        "state": "open",
        "owner": "",  # messages name the policy by its name
    }
    return {
        field.name: named.get(field.name, by_type[str(field.type)])
        for field in dataclasses.fields(event_type)
        if field.name != "policy"
    }


def sample(event_type: type[events.Event], policy: str = "p") -> events.Event:
    return event_type(policy, **_values(event_type))


# -- the channel ----------------------------------------------------------------------------


def test_each_policy_has_one_channel() -> None:
    retry = rs.Retry(name="api")
    channel = retry.telemetry
    assert isinstance(channel, telemetry.Telemetry)
    assert (channel.kind, channel.name) == ("retry", "api")
    assert retry.telemetry is channel
    assert channel.observer is channel.observer
    assert retry._call_observer() is channel.observer  # what the decorator hands the driver
    breaker = rs.CircuitBreaker("cb")
    assert (breaker.telemetry.kind, breaker.telemetry.name) == ("circuit_breaker", "cb")


def test_without_an_sdk_spans_are_a_shared_no_op() -> None:
    assert not rs_otel.OTEL.on
    channel = telemetry.Telemetry("retry", "x")
    assert channel.span() is channel.span()
    assert channel.attempt(2) is channel.attempt(3)
    with channel.span(), channel.attempt(2):
        pass


def test_nothing_interested_means_nothing_wanted(quiet_logs: None) -> None:
    assert not rs_otel.OTEL.on
    channel = telemetry.Telemetry("retry", "x")
    assert not channel.listening
    assert not HUB.active
    assert not any(channel.wants(event_type) for event_type in events.event_types())


def test_a_subscriber_is_listening_until_it_unsubscribes(quiet_logs: None) -> None:
    channel = telemetry.Telemetry("retry", "x")
    unsubscribe = telemetry.subscribe(lambda event: None)
    assert channel.listening
    assert all(channel.wants(event_type) for event_type in events.event_types())
    unsubscribe()
    unsubscribe()  # idempotent
    assert not channel.listening


def test_a_subscriber_can_say_what_it_is_interested_in(quiet_logs: None) -> None:
    seen: list[events.Event] = []
    wanted = (events.Event, events.GaveUp)  # Event: "any event at all"
    unsubscribe = telemetry.subscribe(seen.append, interested=lambda t: t in wanted)
    try:
        channel = telemetry.Telemetry("retry", "x")
        assert channel.listening
        assert channel.wants(events.GaveUp)
        assert not channel.wants(events.RetryScheduled)
    finally:
        unsubscribe()
    assert not telemetry.Telemetry("retry", "x").listening
    with pytest.raises(TypeError):
        telemetry.subscribe(seen.append, interested="GaveUp")  # type: ignore[arg-type]


def test_policies_build_no_event_nobody_wants(quiet_logs: None) -> None:
    seen: list[events.Event] = []
    asked: list[type[events.Event]] = []

    def interested(event_type: type[events.Event]) -> bool:
        asked.append(event_type)
        return False

    unsubscribe = telemetry.subscribe(seen.append, interested=interested)
    try:
        retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(0), name="quiet")
        with pytest.raises(ConnectionError):
            retry.call(_fails)
    finally:
        unsubscribe()
    assert asked  # the policy asked before building each event...
    assert seen == []  # ...and, since nobody wanted one, built and sent none


def test_an_enabled_logger_with_a_handler_is_listening(quiet_logs: None) -> None:
    channel = telemetry.Telemetry("retry", "x")
    handler = logging.Handler()
    LOGGER.propagate = False  # only the handlers we add here count
    try:
        LOGGER.setLevel(logging.INFO)
        assert not channel.wants(events.RetryScheduled)  # enabled, but only a NullHandler
        LOGGER.addHandler(handler)
        assert channel.wants(events.RetryScheduled)  # INFO
        assert channel.wants(events.GaveUp)  # WARNING
        assert not channel.wants(events.AttemptStarted)  # DEBUG: below the logger's level
        assert channel.listening
        handler.setLevel(logging.WARNING)
        assert not channel.wants(events.RetryScheduled)  # the handler would drop it
        assert channel.wants(events.GaveUp)
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.propagate = True
        LOGGER.setLevel(logging.CRITICAL)
    assert not channel.listening


def test_an_event_is_wanted_on_its_own_logger(quiet_logs: None) -> None:
    storage = logging.getLogger("resilience.storage")
    channel = telemetry.Telemetry("rate_limiter", "x")
    storage.setLevel(logging.INFO)
    try:
        assert channel.wants(events.StoreRecovered)  # INFO on resilience.storage
        assert channel.wants(events.StoreOutage)
        assert not channel.wants(events.RetryScheduled)  # resilience itself is quiet
        assert not channel.wants(events.TimeoutThreadAbandoned)  # resilience.timeout too
        assert channel.listening
    finally:
        storage.setLevel(logging.NOTSET)
    assert not channel.listening


def test_an_sdk_wants_every_event(otel: OTel, quiet_logs: None) -> None:
    channel = telemetry.Telemetry("retry", "x")
    assert channel.listening
    assert all(channel.wants(event_type) for event_type in events.event_types())


# -- every form: the same span and metrics ----------------------------------------------------


def _fails() -> None:
    raise ConnectionError("password=hunter2 refused")


def _call_counts(otel: OTel, name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for point in otel.points("resilience.call.duration"):
        attributes = point.attributes  # type: ignore[attr-defined]
        if attributes["resilience.policy.name"] == name:
            outcome = attributes["resilience.outcome"]
            counts[outcome] = counts.get(outcome, 0) + point.count  # type: ignore[attr-defined]
    return counts


def test_a_span_block_records_what_a_decorated_call_does(otel: OTel) -> None:
    channel = rs.Retry(name="block").telemetry
    with channel.span():
        pass
    with pytest.raises(ConnectionError), channel.span():
        _fails()
    decorated = rs.Retry(attempts=1, name="decorated")(_fails)
    with pytest.raises(ConnectionError):
        decorated()
    spans = {span.name: span for span in otel.spans.get_finished_spans()}
    block, reference = spans["retry block"], spans["retry decorated"]
    assert dict(block.attributes or {}) == dict(reference.attributes or {}) | {
        "resilience.policy.name": "block"
    }
    assert block.status.status_code is StatusCode.ERROR
    assert [e.name for e in block.events] == ["exception"]
    assert "exception" in [e.name for e in reference.events]
    assert "hunter2" not in str(dict(block.events[0].attributes or {}))
    assert _call_counts(otel, "block") == {"success": 1, "failure": 1}


def test_attempt_spans_nest_under_the_call_span(otel: OTel) -> None:
    channel = telemetry.Telemetry("retry", "blocky")
    with channel.span(), channel.attempt(2):
        pass
    spans = {span.name: span for span in otel.spans.get_finished_spans()}
    attempt, call = spans["retry blocky attempt"], spans["retry blocky"]
    assert attempt.attributes["resilience.retry.attempt"] == 2  # type: ignore[index]
    assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id


async def test_call_and_acall_make_the_decorators_span(otel: OTel) -> None:
    breaker = rs.CircuitBreaker("calls", failure_threshold=10)
    assert breaker.call(lambda: 1) == 1

    async def one() -> int:
        await asyncio.sleep(0)
        return 1

    assert await breaker.acall(one) == 1
    bulkhead = rs.Bulkhead(2, name="calls-bh")
    assert bulkhead.call(lambda: 2) == 2
    names = [span.name for span in otel.spans.get_finished_spans()]
    assert names == ["circuit_breaker calls", "circuit_breaker calls", "bulkhead calls-bh"]
    assert _call_counts(otel, "calls") == {"success": 2}


def test_the_state_gauge_reads_the_breakers_tracked_through_their_channel(otel: OTel) -> None:
    def states() -> list[str]:
        return [
            point.attributes["resilience.circuit_breaker.state"]  # type: ignore[attr-defined]
            for point in otel.points("resilience.circuit_breaker.state")
            if point.attributes["resilience.policy.name"] == "gauged"  # type: ignore[attr-defined]
        ]

    breaker = rs.CircuitBreaker("gauged", failure_threshold=1)
    breaker.telemetry.track_state(breaker)  # idempotent: a breaker tracks itself already
    with pytest.raises(ConnectionError):
        breaker.call(_fails)
    assert states() == ["open"]
    del breaker
    gc.collect()
    assert states() == []  # held weakly: a dropped breaker leaves the gauge


# -- store outages, recoveries, abandoned threads ---------------------------------------------


def _terminate_backends(dsn: str, pids: list[int]) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _with_password(dsn: str) -> str:
    # The test server trusts local connections: the password is ignored, but the
    # store is given it, and it must show nowhere.
    return dsn.replace("postgresql://postgres@", "postgresql://postgres:hunter2@", 1)


def _everything(otel: OTel, records: list[logging.LogRecord]) -> str:
    parts: list[str] = []
    for span in otel.spans.get_finished_spans():
        parts += [span.name, repr(dict(span.attributes or {}))]
        parts += [f"{e.name} {dict(e.attributes or {})!r}" for e in span.events]
    for name in ("resilience.store.outages", "resilience.store.outage.duration"):
        parts += [repr(dict(p.attributes or {})) for p in otel.points(name)]  # type: ignore[attr-defined]
    formatter = JsonFormatter()
    parts += [formatter.format(record) for record in records]
    return "\n".join(parts)


@pytest.mark.backend
def test_a_store_outage_and_recovery_reach_subscribers_logs_and_otel(
    otel: OTel, received: list[events.Event], caplog: pytest.LogCaptureFixture
) -> None:
    from resilience.storage.postgres import PostgresStore

    dsn = require_postgres()
    caplog.set_level(logging.INFO, logger="resilience.storage")
    store = PostgresStore(_with_password(dsn), table="resilience_test")
    clock = FakeClock()
    name = f"outage-{uuid.uuid4().hex}"
    limiter = rs.RateLimiter(
        name, rate=1, per=3600.0, burst=5, store=store, clock=clock, on_store_failure="local"
    )
    send = limiter(lambda: "sent")
    try:
        assert send() == "sent"
        _terminate_backends(dsn, store.backend_pids())
        assert send() == "sent"  # the connection is dead: served locally, the outage begins
        clock.advance(STORE_RETRY_INTERVAL)
        assert send() == "sent"  # reconnected: the outage ends
    finally:
        store.close()

    outages = [e for e in received if isinstance(e, events.StoreOutage)]
    recoveries = [e for e in received if isinstance(e, events.StoreRecovered)]
    assert len(outages) == len(recoveries) == 1
    (outage,), (recovery,) = outages, recoveries
    owner = f"RateLimiter {name!r}"
    assert outage.policy == name  # the limiter's own channel: its guard reports through it
    assert (outage.owner, outage.mode) == (owner, "local")
    assert outage.store.startswith("postgresql://") and outage.reason
    assert (recovery.policy, recovery.owner, recovery.store, recovery.downtime) == (
        outage.policy,
        owner,
        outage.store,
        STORE_RETRY_INTERVAL,
    )

    # The logs: the same logger, levels and messages as before they were events.
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "resilience.storage"]
    assert logged == [
        (
            logging.WARNING,
            f"{owner}: store {outage.store} unavailable ({outage.reason}); "
            "falling back to in-process state until it recovers",
        ),
        (logging.INFO, f"{owner}: store {outage.store} available again after 1.000s"),
    ]

    # OpenTelemetry: span events on the calls they happened in, and metrics.
    spans = [s for s in otel.spans.get_finished_spans() if s.name == f"rate_limiter {name}"]
    assert [[e.name for e in span.events] for span in spans] == [
        [],
        ["store.unavailable"],
        ["store.recovered"],
    ]
    assert spans[1].events[0].attributes["resilience.mode"] == "local"  # type: ignore[index]
    (down,) = otel.points("resilience.store.outages")
    assert down.value == 1  # type: ignore[attr-defined]
    assert down.attributes == {  # type: ignore[attr-defined]
        "resilience.policy.name": outage.policy,
        "resilience.store.name": outage.store,
        "resilience.store.mode": "local",
    }
    (lasted,) = otel.points("resilience.store.outage.duration")
    assert (lasted.count, lasted.sum) == (1, STORE_RETRY_INTERVAL)  # type: ignore[attr-defined]
    assert "hunter2" not in _everything(otel, caplog.records)


def test_an_abandoned_timeout_thread_reaches_subscribers_logs_and_otel(
    otel: OTel, received: list[events.Event], caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    timeout = rs.Timeout(0.02, mode="thread", name="stuck")
    stuck = timeout(lambda: release.wait(10))
    try:
        with (
            caplog.at_level(logging.WARNING, logger="resilience.timeout"),
            pytest.raises(rs.TimeoutExceeded),
        ):
            stuck()
    finally:
        release.set()
    (abandoned,) = [e for e in received if isinstance(e, events.TimeoutThreadAbandoned)]
    assert (abandoned.policy, abandoned.seconds) == ("stuck", 0.02)
    assert abandoned.thread.startswith("resilience-timeout")
    (record,) = [r for r in caplog.records if r.name == "resilience.timeout"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == abandoned.message()
    assert "keeps running" in record.getMessage()
    (span,) = [s for s in otel.spans.get_finished_spans() if s.name == "timeout stuck"]
    assert "timeout.thread_abandoned" in [e.name for e in span.events]
    (point,) = otel.points("resilience.timeout.abandoned_threads")
    assert point.value == 1  # type: ignore[attr-defined]


# -- every event: a log format, an OpenTelemetry mapping, a documented name ----------------


@pytest.mark.parametrize("event_type", events.event_types(), ids=lambda t: t.__name__)
def test_every_event_has_a_log_format_and_an_otel_mapping(
    event_type: type[events.Event],
) -> None:
    event = sample(event_type, policy="orders")
    assert event_type.message is not events.Event.message, "write its one-line summary"
    assert "orders" in event.message()
    assert event_type in rs_otel.EVENT_METRICS, "map it to metrics (or None: span event only)"
    assert event_type.logger.split(".")[0] == "resilience"
    assert event_type.quietest_level <= event.level <= events.LOUDEST_LEVEL
    documented = DOCS.read_text()
    assert f"`{event_type.__name__}`" in documented and f"`{event_type.name}`" in documented


def test_every_mapped_event_records_its_metrics(otel: OTel) -> None:
    def recorded() -> int:
        data = otel.metrics.get_metrics_data()
        if data is None:
            return 0
        return sum(
            len(metric.data.data_points)
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        )

    tracer = rs_otel.otel_trace.get_tracer("test")
    for event_type in events.event_types():
        with tracer.start_as_current_span(f"around {event_type.__name__}") as span:
            before = recorded()
            HUB.emit(sample(event_type, policy=f"p-{event_type.__name__}"))
            if rs_otel.EVENT_METRICS[event_type] is not None:
                assert recorded() > before, event_type
        finished = otel.spans.get_finished_spans()[-1]
        assert finished.context.span_id == span.get_span_context().span_id
        assert [e.name for e in finished.events] == [event_type.name]


# -- nobody listening: no event object is built ------------------------------------------


def test_with_no_subscriber_and_no_sdk_no_event_is_built(
    quiet_logs: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import resilience._breaker_replica as replica_module
    import resilience.bulkhead as bulkhead_module
    import resilience.fallback as fallback_module
    import resilience.ratelimit as ratelimit_module
    import resilience.retry as retry_module
    import resilience.timeout as timeout_module

    built: list[str] = []
    users = {
        retry_module: ("AttemptStarted", "GaveUp", "RetryScheduled"),
        replica_module: ("CallRejected", "CircuitStateChanged"),
        ratelimit_module: ("RateLimitRejected", "RateLimitWaited"),
        bulkhead_module: ("BulkheadRejected",),
        timeout_module: ("TimeoutExpired",),
        fallback_module: ("FallbackUsed",),
    }

    def counting(original: type[events.Event]) -> type[events.Event]:
        """A subclass that counts its instances, in place of the one a policy builds."""

        class Counting(original):  # type: ignore[valid-type,misc]
            __slots__ = ()

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                built.append(original.__name__)
                original.__init__(self, *args, **kwargs)

        Counting.__name__ = Counting.__qualname__ = original.__name__
        return Counting

    for module, names in users.items():
        for name in names:
            monkeypatch.setattr(module, name, counting(getattr(events, name)))

    def every_failure_path() -> None:
        clock = FakeClock()
        retry = rs.Retry(attempts=2, backoff=rs.Backoff.constant(1), clock=clock, name="q")
        with pytest.raises(ConnectionError):
            retry.call(_fails)
        breaker = rs.CircuitBreaker("q", failure_threshold=1, clock=clock)
        with pytest.raises(ConnectionError):
            breaker.call(_fails)
        with pytest.raises(rs.CircuitOpenError):
            breaker.call(_fails)
        limiter = rs.RateLimiter("q", rate=1, per=1.0, burst=1, max_wait=5, clock=clock)
        limiter.acquire()
        limiter.acquire()  # waits
        assert not limiter.try_acquire()
        bulkhead = rs.Bulkhead(1, name="q")
        with bulkhead, pytest.raises(rs.BulkheadFull):
            bulkhead.acquire()
        timeout = rs.Timeout(1.0, clock=clock, name="q")
        with pytest.raises(rs.TimeoutExceeded):
            timeout.call(lambda: clock.advance(2.0))
        assert rs.Fallback("x", name="q").call(_fails) == "x"

    assert not rs_otel.OTEL.on
    channel = telemetry.Telemetry("retry", "q")
    assert not any(channel.wants(event_type) for event_type in events.event_types())
    every_failure_path()
    assert built == []
    # The same paths with a subscriber build every one of them: the count is real.
    with_subscriber: list[events.Event] = []
    unsubscribe = telemetry.subscribe(with_subscriber.append)
    try:
        every_failure_path()
    finally:
        unsubscribe()
    expected = {name for names in users.values() for name in names}
    assert set(built) == expected
    assert {type(event).__name__ for event in with_subscriber} == expected

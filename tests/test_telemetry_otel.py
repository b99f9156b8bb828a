"""OpenTelemetry spans, span events and metrics, with the real SDK (in-memory)."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

import resilience as rs
from resilience.telemetry import otel as rs_otel
from resilience.testing import FakeClock

from .conftest import OTel


def failing_then(value: Any, failures: int, error: type[Exception] = ConnectionError) -> Any:
    state = {"n": 0}

    def op() -> Any:
        state["n"] += 1
        if state["n"] <= failures:
            raise error("password=hunter2 at db")
        return value

    return op


def test_a_call_makes_one_span_with_policy_attributes(otel: OTel) -> None:
    fetch = rs.Retry(attempts=3, name="fetch")(lambda: 42)
    assert fetch() == 42
    (span,) = otel.spans.get_finished_spans()
    assert span.name == "retry fetch"
    assert span.attributes is not None
    assert span.attributes["resilience.policy.kind"] == "retry"
    assert span.attributes["resilience.policy.name"] == "fetch"
    assert (
        "resilience.outcome" not in span.attributes
    )  # success: status UNSET, as the conventions have it
    assert span.status.status_code is StatusCode.UNSET


def test_retries_make_child_spans_and_span_events(otel: OTel) -> None:
    clock = FakeClock()
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(1), clock=clock, name="db")
    assert retry(failing_then("ok", 2))() == "ok"
    spans = otel.spans.get_finished_spans()
    parent = next(s for s in spans if s.name == "retry db")
    children = [s for s in spans if s.name == "retry db attempt"]
    assert [c.attributes["resilience.retry.attempt"] for c in children] == [2, 3]  # type: ignore[index]
    assert all(
        c.parent is not None and c.parent.span_id == parent.context.span_id for c in children
    )
    assert children[0].status.status_code is StatusCode.ERROR
    scheduled = [e for e in parent.events if e.name == "retry.scheduled"]
    assert len(scheduled) == 2
    assert scheduled[0].attributes["resilience.delay"] == 1  # type: ignore[index]
    assert scheduled[0].attributes["error.type"] == "ConnectionError"  # type: ignore[index]


def test_a_failed_call_records_the_exception_by_the_conventions(otel: OTel) -> None:
    retry = rs.Retry(attempts=2, backoff=rs.Backoff.constant(0), name="pay")
    with pytest.raises(ConnectionError):
        retry(failing_then("never", 5))()
    parent = next(s for s in otel.spans.get_finished_spans() if s.name == "retry pay")
    assert parent.status.status_code is StatusCode.ERROR
    assert parent.attributes["error.type"] == "ConnectionError"  # type: ignore[index]
    assert parent.attributes["resilience.outcome"] == "failure"  # type: ignore[index]
    (exception,) = [e for e in parent.events if e.name == "exception"]
    assert exception.attributes["exception.type"] == "ConnectionError"  # type: ignore[index]
    assert "hunter2" not in str(exception.attributes)
    assert "hunter2" not in (parent.status.description or "")
    assert any(e.name == "retry.gave_up" for e in parent.events)


def test_metrics_count_calls_attempts_retries_and_give_ups(otel: OTel) -> None:
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(0), name="m")
    ok = retry(lambda: 1)
    flaky = retry(failing_then(1, 1))
    broken = retry(failing_then(1, 10))
    ok()
    ok()
    flaky()
    with pytest.raises(ConnectionError):
        broken()

    def points(name: str, **match: Any) -> list[Any]:
        return [
            p
            for p in otel.points(name)
            if all(p.attributes.get(k) == v for k, v in match.items())  # type: ignore[attr-defined]
        ]

    def calls(outcome: str) -> int:
        # The duration histogram is also the call count, by outcome.
        return sum(
            p.count for p in points("resilience.call.duration", **{"resilience.outcome": outcome})
        )

    assert calls("success") == 3
    assert calls("failure") == 1
    (failure,) = points("resilience.call.duration", **{"resilience.outcome": "failure"})
    assert failure.attributes["error.type"] == "ConnectionError"
    assert sum(p.value for p in points("resilience.retry.retries")) == 1 + 2
    give_ups = points("resilience.retry.give_ups", **{"resilience.retry.reason": "attempts"})
    assert sum(p.value for p in give_ups) == 1


async def test_async_calls_make_spans_too(otel: OTel) -> None:
    clock = FakeClock()
    op = failing_then("ok", 1, TimeoutError)

    @rs.Retry(attempts=2, backoff=rs.Backoff.constant(0.5), clock=clock, name="afetch")
    async def fetch() -> str:
        return op()  # type: ignore[no-any-return]

    assert await fetch() == "ok"
    names = sorted(s.name for s in otel.spans.get_finished_spans())
    assert names == ["retry afetch", "retry afetch attempt"]


def test_spans_nest_under_the_callers_span(otel: OTel) -> None:
    tracer = trace.get_tracer("app")
    fetch = rs.Retry(name="inner")(lambda: 1)
    with tracer.start_as_current_span("request") as outer:
        fetch()
    inner = next(s for s in otel.spans.get_finished_spans() if s.name == "retry inner")
    assert inner.parent is not None
    assert inner.parent.span_id == outer.get_span_context().span_id


def test_adapter_can_be_turned_off(otel: OTel) -> None:
    rs_otel.configure(enabled=False)
    try:
        rs.Retry(name="quiet")(lambda: 1)()
    finally:
        rs_otel.configure(enabled=True)
    assert otel.spans.get_finished_spans() == ()


def test_without_an_sdk_nothing_is_recorded() -> None:
    code = (
        "import resilience as rs\n"
        "from resilience.telemetry.otel import otel_configured\n"
        "assert not otel_configured()\n"
        "f = rs.Retry(attempts=2, backoff=rs.Backoff.constant(0))(lambda: 7)\n"
        "assert f() == 7\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_breaker_spans_rejections_transitions_and_state_gauge(otel: OTel) -> None:
    clock = FakeClock()
    breaker = rs.CircuitBreaker("payments", failure_threshold=2, break_duration=10, clock=clock)
    charge = breaker(failing_then("paid", 10))
    for _ in range(2):
        with pytest.raises(ConnectionError):
            charge()
    assert breaker.state is rs.CircuitState.OPEN
    with pytest.raises(rs.CircuitOpenError):
        charge()
    spans = [s for s in otel.spans.get_finished_spans() if s.name == "circuit_breaker payments"]
    assert len(spans) == 3
    rejected = spans[-1]
    assert rejected.attributes["resilience.outcome"] == "rejected"  # type: ignore[index]
    assert any(e.name == "circuit_breaker.rejected" for e in rejected.events)
    opened = [e for e in spans[1].events if e.name == "circuit_breaker.state_changed"]
    assert opened[0].attributes["resilience.new_state"] == "open"  # type: ignore[index]

    transitions = otel.points("resilience.circuit_breaker.transitions")
    assert sum(p.value for p in transitions) == 1  # type: ignore[attr-defined]
    states = [
        p.attributes  # type: ignore[attr-defined]
        for p in otel.points("resilience.circuit_breaker.state")
        if p.attributes["resilience.policy.name"] == "payments"  # type: ignore[attr-defined]
    ]
    assert states == [
        {"resilience.policy.name": "payments", "resilience.circuit_breaker.state": "open"}
    ]
    assert sum(p.value for p in otel.points("resilience.circuit_breaker.rejections")) == 1  # type: ignore[attr-defined]


def test_a_pipeline_is_one_span_with_attempt_children(otel: OTel) -> None:
    clock = FakeClock()
    pipeline = rs.Pipeline(
        rs.Timeout(30, clock=clock),
        rs.Retry(attempts=3, backoff=rs.Backoff.constant(1), clock=clock, name="inner"),
        rs.CircuitBreaker("cb", failure_threshold=10, clock=clock),
        name="http",
    )
    assert pipeline(failing_then("ok", 1))() == "ok"
    spans = otel.spans.get_finished_spans()
    names = sorted(span.name for span in spans)
    assert names == ["pipeline http", "retry inner attempt"]
    root = next(span for span in spans if span.name == "pipeline http")
    child = next(span for span in spans if span.name == "retry inner attempt")
    assert child.parent is not None
    assert child.parent.span_id == root.context.span_id
    assert root.attributes["resilience.policy.kind"] == "pipeline"  # type: ignore[index]
    assert any(event.name == "retry.scheduled" for event in root.events)


async def test_timeout_bulkhead_and_fallback_report_too(otel: OTel) -> None:
    clock = FakeClock()
    fallback = rs.Fallback("cached", name="fb")
    assert fallback(failing_then("fresh", 1))() == "cached"
    bulkhead = rs.Bulkhead(1, name="bh")

    async def hold() -> str:
        return "done"

    async with bulkhead:
        with pytest.raises(rs.BulkheadFull):
            await bulkhead(hold)()
    timeout = rs.Timeout(1.0, clock=clock, name="slow")

    def slow() -> str:
        clock.advance(2.0)
        return "late"

    with pytest.raises(rs.TimeoutExceeded):
        timeout(slow)()

    spans = {span.name: span for span in otel.spans.get_finished_spans()}
    assert set(spans) >= {"fallback fb", "bulkhead bh", "timeout slow"}
    # The rejected call ends first, inside the with-block that holds the slot.
    rejected, held = [s for s in otel.spans.get_finished_spans() if s.name == "bulkhead bh"]
    assert rejected.attributes["resilience.outcome"] == "rejected"  # type: ignore[index]
    assert held.attributes is not None and "resilience.outcome" not in held.attributes
    assert spans["timeout slow"].attributes["error.type"] == "resilience.errors.TimeoutExceeded"  # type: ignore[index]

    def total(name: str) -> float:
        return sum(point.value for point in otel.points(name))  # type: ignore[attr-defined]

    assert total("resilience.fallback.uses") == 1
    assert total("resilience.bulkhead.rejections") == 1
    assert total("resilience.timeout.expirations") == 1


def test_call_metrics_can_be_left_to_the_spans(otel: OTel) -> None:
    rs_otel.configure(call_metrics=False)
    try:
        rs.Retry(name="spans-only")(lambda: 1)()
    finally:
        rs_otel.configure(call_metrics=True)
    assert [s.name for s in otel.spans.get_finished_spans()] == ["retry spans-only"]
    assert otel.points("resilience.call.duration") == []


# -- issue 11, defect 13: no key or secret in any span, event, metric or log record ----

SECRET = "QZXVs3cr3t-Pa55w0rdVXZQ"
API_KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
EMAIL = "alice@example.com"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _everything_recorded(otel: OTel, records: list[Any]) -> str:
    """Every span (name, attributes, status, events, links), metric point and log
    record (message, fields, formatted as JSON) as one text to search."""
    from resilience.telemetry import JsonFormatter

    parts: list[str] = []
    for span in otel.spans.get_finished_spans():
        parts += [span.name, repr(dict(span.attributes or {})), span.status.description or ""]
        for event in span.events:
            parts += [event.name, repr(dict(event.attributes or {}))]
        parts += [repr(dict(link.attributes or {})) for link in span.links]
    data = otel.metrics.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                parts += [repr(dict(p.attributes or {})) for p in metric.data.data_points]
    formatter = JsonFormatter()
    for record in records:
        parts += [record.getMessage(), repr(getattr(record, "resilience", None))]
        parts.append(formatter.format(record))
    return "\n".join(parts)


def test_no_key_or_secret_reaches_spans_metrics_or_logs(
    otel: OTel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="resilience")
    rs_otel.configure(key_attributes=True)
    try:
        clock = FakeClock()
        # 1. A limiter rejection, keyed by the caller's API key, and one by e-mail.
        limiter = rs.RateLimiter("api", rate=1, per=60.0, burst=1, clock=clock)

        @limiter.limit(lambda request: request["api_key"], timeout=0)
        def handle(request: dict[str, str]) -> str:
            return "ok"

        assert handle({"api_key": API_KEY}) == "ok"
        with pytest.raises(rs.RateLimitExceeded) as caught:
            handle({"api_key": API_KEY})
        assert caught.value.key == API_KEY
        waiting = rs.RateLimiter("mail", rate=1, per=1.0, burst=1, max_wait=5, clock=clock)
        by_email = waiting.limit(EMAIL)(lambda: "sent")
        assert by_email() == by_email() == "sent"  # the second one waits
        with pytest.raises(rs.RateLimitExceeded):
            waiting.limit(EMAIL, timeout=0)(lambda: "sent")()

        # 2. A store outage: Redis with a password in its URL, nothing listening.
        from resilience.storage.redis import RedisStore

        store = RedisStore.from_url(f"redis://:{SECRET}@127.0.0.1:{_free_port()}/0", timeout=0.2)
        try:
            shared = rs.RateLimiter("shared", rate=5, store=store)
            with pytest.raises(rs.StoreUnavailable) as outage:
                shared.limit(API_KEY)(lambda: "x")()
            assert SECRET not in str(outage.value)
            breaker_on_store = rs.CircuitBreaker("shared-cb", store=store)
            with pytest.raises(rs.StoreUnavailable):
                breaker_on_store(lambda: "x")()
        finally:
            store.close()

        # 3. A breaker rejection, opened by errors whose messages quote secrets.
        breaker = rs.CircuitBreaker("payments", failure_threshold=2, clock=clock)

        @breaker
        def charge() -> None:
            headers = [("Authorization", f"Negotiate {SECRET}"), ("Accept", "*/*")]
            raise ConnectionError(
                f"POST https://svc:{SECRET}@pay.internal/v1 failed; headers={headers!r}\n"
                f"Proxy-Authorization: ApiKey {SECRET}\n{{'key': '{API_KEY}'}}"
            )

        for _ in range(2):
            with pytest.raises(ConnectionError):
                charge()
        with pytest.raises(rs.CircuitOpenError):
            charge()
    finally:
        rs_otel.configure(key_attributes=False)

    recorded = _everything_recorded(otel, caplog.records)
    for secret in (SECRET, API_KEY, EMAIL):
        assert secret not in recorded
    # What an operator still gets: the outcome, the error types, and labels that
    # follow one key across events and metrics.
    spans = otel.spans.get_finished_spans()
    assert {"rate_limiter api", "circuit_breaker payments", "rate_limiter shared"} <= {
        span.name for span in spans
    }
    label = rs.telemetry.key_label(API_KEY)
    rejections = [
        event for span in spans for event in span.events if event.name == "rate_limiter.rejected"
    ]
    assert rejections[0].attributes["resilience.key"] == label  # type: ignore[index]
    assert label in recorded and rs.telemetry.key_label(EMAIL) in recorded
    keyed = {
        p.attributes.get("resilience.rate_limiter.key")  # type: ignore[attr-defined]
        for p in otel.points("resilience.rate_limiter.acquisitions")
    }
    assert keyed == {label, rs.telemetry.key_label(EMAIL)}
    assert "StoreUnavailable" in recorded and "CircuitOpenError" in recorded


# -- the async block form: closed by the event loop, in another context -------------------


def _detach_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    # OpenTelemetry logs (does not raise) a token detached in a context it was not made in.
    return [r.getMessage() for r in caplog.records if "detach" in r.getMessage().lower()]


async def test_an_async_block_form_left_early_ends_its_span_in_the_loops_own_task(
    otel: OTel, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    retry = rs.Retry(attempts=5, backoff=rs.Backoff.constant(1), clock=FakeClock(), name="early")
    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("request") as request:
        async for attempt in retry:
            async with attempt:
                pass
            break  # a success ends the loop anyway; break leaves it before the iterator knows
        assert trace.get_current_span() is request
        for _ in range(3):
            await asyncio.sleep(0)  # the event loop closes the generator in a task of its own
        assert trace.get_current_span() is request
    (call,) = [s for s in otel.spans.get_finished_spans() if s.name == "retry early"]
    assert call.parent is not None and call.parent.span_id == request.get_span_context().span_id
    assert call.status.status_code is StatusCode.UNSET
    assert _detach_errors(caplog) == []


async def test_a_cancelled_async_block_form_ends_its_span_as_cancelled(
    otel: OTel, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(30), name="cancelled")  # real sleep
    failed = asyncio.Event()

    async def attempts() -> None:
        async for attempt in retry:
            async with attempt:
                failed.set()
                raise ConnectionError("down")

    task = asyncio.create_task(attempts())
    await failed.wait()
    await asyncio.sleep(0)  # the iterator now sleeps out the 30 s backoff
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (call,) = [s for s in otel.spans.get_finished_spans() if s.name == "retry cancelled"]
    assert call.attributes["resilience.outcome"] == "cancelled"  # type: ignore[index]
    assert "CancelledError" in call.attributes["error.type"]  # type: ignore[index,operator]
    (point,) = [
        p
        for p in otel.points("resilience.call.duration")
        if p.attributes["resilience.policy.name"] == "cancelled"  # type: ignore[attr-defined]
    ]
    assert point.attributes["resilience.outcome"] == "cancelled"  # type: ignore[attr-defined]
    assert _detach_errors(caplog) == []


async def test_async_with_blocks_in_concurrent_tasks_keep_their_own_spans(otel: OTel) -> None:
    import asyncio

    limiter = rs.RateLimiter("tasks", rate=1000, clock=FakeClock())
    tracer = trace.get_tracer("app")

    async def one(label: str) -> None:
        with tracer.start_as_current_span(label) as mine:
            async with limiter:
                await asyncio.sleep(0)  # the other task enters its block meanwhile
            assert trace.get_current_span() is mine

    await asyncio.gather(one("a"), one("b"))
    spans = {s.name: s for s in otel.spans.get_finished_spans() if s.name in ("a", "b")}
    blocks = [s for s in otel.spans.get_finished_spans() if s.name == "rate_limiter tasks"]
    assert sorted(s.parent.span_id for s in blocks) == sorted(  # type: ignore[union-attr]
        s.context.span_id for s in spans.values()
    )


def test_a_with_block_entered_before_the_sdk_was_on_records_nothing(otel: OTel) -> None:
    breaker = rs.CircuitBreaker("late-sdk", failure_threshold=10)
    outer = rs.Bulkhead(2, name="late-outer")
    with outer:  # entered with the adapter on: its span is open
        rs_otel.configure(enabled=False)
        try:
            with breaker:  # entered with it off: no span
                rs_otel.configure(enabled=True)
        finally:
            rs_otel.configure(enabled=True)
        # The breaker's exit, with the adapter on again, left the bulkhead's span alone.
        assert trace.get_current_span().is_recording()
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert [s.name for s in otel.spans.get_finished_spans()] == ["bulkhead late-outer"]

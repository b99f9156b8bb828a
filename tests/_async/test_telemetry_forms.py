"""Every form of every policy records the decorator's span and metrics.

For each policy kind and scenario (success, failure, rejection…), the call is
made once decorated and once in every other form the policy offers (``acall``,
``async with``, the retry's block form); both must leave the same spans (names,
attributes, status, span events, attempt children) and the same metric points,
the policy's name aside. The real OpenTelemetry SDK records them (the ``otel``
fixture: in-memory exporter and reader).

Written once, async; scripts/unasync.py generates the sync twin in tests/_sync.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

import resilience as rs
from resilience.testing import FakeClock

from ..conftest import OTel

Body = Callable[[], Any]  # a coroutine function, or (sync twin) a plain function


class Stop(BaseException):
    """Not an ``Exception``: a retry never retries it (like a cancellation)."""


def flaky(failures: int, error: BaseException | None = None) -> Body:
    """A body that fails ``failures`` times (ConnectionError), then returns "ok"."""
    state = {"calls": 0}

    async def body() -> str:
        state["calls"] += 1
        if state["calls"] <= failures:
            raise error if error is not None else ConnectionError("password=hunter2 refused")
        return "ok"

    return body


def build(kind: str, scenario: str, name: str, clock: FakeClock) -> tuple[rs.Policy, Body]:
    """A fresh policy of ``kind`` named ``name``, and the body of ``scenario``."""
    if kind == "retry":
        retry = rs.Retry(attempts=2, backoff=rs.Backoff.constant(1), clock=clock, name=name)
        failures = {"success": 0, "recovered": 1, "failure": 5, "stopped": 0}[scenario]
        return retry, flaky(failures) if scenario != "stopped" else flaky(1, Stop())
    if kind == "circuit_breaker":
        breaker = rs.CircuitBreaker(name, failure_threshold=10, clock=clock)
        return breaker, flaky(0 if scenario != "failure" else 1)
    if kind == "rate_limiter":
        limiter = rs.RateLimiter(name, rate=1, per=3600.0, burst=1, max_wait=0, clock=clock)
        return limiter, flaky(0 if scenario != "failure" else 1)
    if kind == "bulkhead":
        return rs.Bulkhead(1, name=name), flaky(0 if scenario != "failure" else 1)
    if kind == "timeout":
        timeout = rs.Timeout(1.0, clock=clock, name=name)

        async def late() -> str:
            clock.advance(2.0)
            return "late"

        return timeout, late if scenario == "failure" else flaky(0)
    if kind == "fallback":
        fallback = rs.Fallback("cached", on=[ConnectionError], name=name)
        body = {"success": flaky(0), "handled": flaky(1), "failure": flaky(1, ValueError("no"))}
        return fallback, body[scenario]
    assert kind == "pipeline"
    pipeline = rs.Pipeline(
        rs.Retry(attempts=2, backoff=rs.Backoff.constant(1), clock=clock, name=f"{name}-retry"),
        rs.CircuitBreaker(f"{name}-breaker", failure_threshold=10, clock=clock),
        name=name,
    )
    return pipeline, flaky({"success": 0, "recovered": 1, "failure": 5}[scenario])


async def reject_next_call(kind: str, policy: Any) -> Any:
    """Make the policy refuse the next call; returns what to undo afterwards, if anything."""
    if kind == "circuit_breaker":
        await policy.aisolate()
    elif kind == "rate_limiter":
        assert policy.try_acquire()  # the only token
    else:
        assert kind == "bulkhead"
        await policy.aacquire()  # the only slot
        return policy.release
    return None


async def run(form: str, policy: Any, body: Body) -> Any:
    """Call ``body`` through ``policy`` in ``form``; the outcome, or the exception raised."""
    try:
        if form == "decorator":
            return await policy(body)()
        if form == "call":
            return await policy.acall(body)
        if form == "with":
            async with policy:
                return await body()
        assert form == "block"
        result = None
        async for attempt in policy:
            async with attempt:
                result = await body()
        return result
    except BaseException as error:
        return error


def recorded(otel: OTel, name: str) -> dict[str, Any]:
    """What the SDK holds about the policy ``name``: its spans and its metric points,
    with the name itself written ``N`` so that two policies compare."""

    def plain(value: Any) -> Any:
        return value.replace(name, "N") if isinstance(value, str) else value

    def attributes(mapping: Any) -> dict[str, Any]:
        return {key: plain(value) for key, value in dict(mapping or {}).items()}

    spans = [
        span
        for span in otel.spans.get_finished_spans()
        if (span.attributes or {}).get("resilience.policy.name", "").startswith(name)
    ]
    points: dict[tuple[str, str], Any] = {}
    data = otel.metrics.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    labels = attributes(point.attributes)
                    if not labels.get("resilience.policy.name", "").startswith("N"):
                        continue
                    key = (metric.name, repr(sorted(labels.items())))
                    points[key] = getattr(point, "count", None) or point.value  # type: ignore[attr-defined]
    return {
        "spans": [
            (
                plain(span.name),
                attributes(span.attributes),
                span.status.status_code,
                [(event.name, sorted(attributes(event.attributes))) for event in span.events],
                None if span.parent is None else plain(by_id(spans, span.parent.span_id)),
            )
            for span in spans
        ],
        "points": points,
    }


def by_id(spans: list[Any], span_id: int) -> str:
    return next((span.name for span in spans if span.context.span_id == span_id), "outside")


FORMS = {
    "retry": ["call", "block"],
    "circuit_breaker": ["call", "with"],
    "rate_limiter": ["call", "with"],
    "bulkhead": ["call", "with"],
    "timeout": ["call"],
    "fallback": ["call"],
    "pipeline": ["call"],
}
SCENARIOS = {
    "retry": ["success", "recovered", "failure", "stopped"],
    "circuit_breaker": ["success", "failure", "rejected"],
    "rate_limiter": ["success", "rejected"],
    "bulkhead": ["success", "failure", "rejected"],
    "timeout": ["success", "failure"],
    "fallback": ["success", "handled", "failure"],
    "pipeline": ["success", "recovered", "failure"],
}
CASES = [
    pytest.param(kind, scenario, form, id=f"{kind}-{scenario}-{form}")
    for kind, forms in FORMS.items()
    for scenario in SCENARIOS[kind]
    for form in forms
]


@pytest.mark.parametrize(("kind", "scenario", "form"), CASES)
async def test_every_form_records_what_the_decorator_records(
    otel: OTel, kind: str, scenario: str, form: str
) -> None:
    # Names of this case alone: breakers of earlier cases may linger in the state gauge.
    names = {how: f"{kind}-{scenario}-{form}-{how}" for how in ("decorator", form)}
    outcomes, alive = {}, []  # alive: a breaker's state gauge lasts as long as the breaker
    for how, name in names.items():
        clock = FakeClock()
        policy, body = build(kind, scenario, name, clock)
        alive.append(policy)
        undo = await reject_next_call(kind, policy) if scenario == "rejected" else None
        outcomes[how] = await run(how, policy, body)
        await settle()  # a block form left by an exception is closed in its own time
        if undo is not None:
            undo()
    reference = recorded(otel, names["decorator"])
    assert recorded(otel, names[form]) == reference
    named = {how: repr(outcome).replace(names[how], "N") for how, outcome in outcomes.items()}
    assert named[form] == named["decorator"]

    # What the decorator records, in any form: one call span named "<kind> <name>"...
    (call,) = [span for span in reference["spans"] if span[0] == f"{kind} N"]
    name, attributes, status, _, parent = call
    assert parent is None
    assert attributes["resilience.policy.kind"] == kind
    assert attributes["resilience.policy.name"] == "N"
    outcome = attributes.get("resilience.outcome", "success")
    expected = {
        "failure": "failure",
        "rejected": "rejected",
        "stopped": "cancelled",
    }.get(scenario, "success")
    assert outcome == expected
    assert (status is StatusCode.ERROR) == (expected != "success")
    # ...and one resilience.call.duration point with the same outcome.
    (duration,) = [key for key in reference["points"] if key[0] == "resilience.call.duration"]
    assert f"('resilience.outcome', '{expected}')" in duration[1]
    assert reference["points"][duration] == 1


async def test_the_block_form_nests_attempt_spans_and_leaves_nothing_current(otel: OTel) -> None:
    clock = FakeClock()
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(1), clock=clock, name="blocks")
    body = flaky(2)
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        async for attempt in retry:
            async with attempt:
                inside = trace.get_current_span()
                await body()
            assert trace.get_current_span() is request  # between attempts: the caller's
        assert trace.get_current_span() is request
    spans = {span.name: span for span in otel.spans.get_finished_spans()}
    call = spans["retry blocks"]
    assert call.parent is not None and call.parent.span_id == request.get_span_context().span_id
    attempts = [s for s in otel.spans.get_finished_spans() if s.name == "retry blocks attempt"]
    assert [a.attributes["resilience.retry.attempt"] for a in attempts] == [2, 3]  # type: ignore[index]
    assert all(a.parent is not None and a.parent.span_id == call.context.span_id for a in attempts)
    assert inside.get_span_context().span_id == attempts[-1].context.span_id
    assert [e.name for e in call.events].count("retry.scheduled") == 2


async def settle() -> None:
    """Let an iterator left early be closed: CPython closes a generator as soon as
    the loop drops it; the event loop closes an async one in a task of its own."""
    import asyncio  # unasync: async only

    for _ in range(3):  # unasync: async only
        await asyncio.sleep(0)  # unasync: async only
    # unasync: sync return None


async def test_leaving_the_block_form_early_ends_its_span(otel: OTel) -> None:
    clock = FakeClock()
    retry = rs.Retry(attempts=5, backoff=rs.Backoff.constant(1), clock=clock, name="left")
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        async for attempt in retry:
            async with attempt:
                raise ConnectionError("down")
            break  # after a failed attempt: the call ends as that attempt did
        assert trace.get_current_span() is request
        await settle()
        assert trace.get_current_span() is request
    (call,) = [s for s in otel.spans.get_finished_spans() if s.name == "retry left"]
    assert call.attributes["resilience.outcome"] == "failure"  # type: ignore[index]
    assert call.attributes["error.type"] == "ConnectionError"  # type: ignore[index]
    (point,) = otel.points("resilience.call.duration")
    assert point.attributes["resilience.outcome"] == "failure"  # type: ignore[attr-defined]


async def test_an_exception_escaping_an_attempt_ends_the_span_with_it(otel: OTel) -> None:
    retry = rs.Retry(attempts=5, backoff=rs.Backoff.constant(1), clock=FakeClock(), name="stop")
    with pytest.raises(Stop):
        async for attempt in retry:
            async with attempt:
                raise Stop
    await settle()
    assert trace.get_current_span() is trace.INVALID_SPAN
    (call,) = [s for s in otel.spans.get_finished_spans() if s.name == "retry stop"]
    assert call.attributes["resilience.outcome"] == "cancelled"  # type: ignore[index]
    assert call.attributes["error.type"].endswith("Stop")  # type: ignore[index,union-attr]


async def test_with_blocks_nest_and_end_their_own_spans(otel: OTel) -> None:
    breaker = rs.CircuitBreaker("outer-cb", failure_threshold=10)
    bulkhead = rs.Bulkhead(2, name="inner-bh")
    async with breaker:
        async with bulkhead, bulkhead:
            pass
        assert trace.get_current_span().get_span_context().span_id == (
            otel.spans.get_finished_spans()[-1].parent.span_id  # type: ignore[union-attr]
        )
    assert trace.get_current_span() is trace.INVALID_SPAN
    names = [span.name for span in otel.spans.get_finished_spans()]
    assert names == ["bulkhead inner-bh", "bulkhead inner-bh", "circuit_breaker outer-cb"]
    inner, middle, outer = otel.spans.get_finished_spans()
    assert inner.parent is not None and inner.parent.span_id == middle.context.span_id
    assert middle.parent is not None and middle.parent.span_id == outer.context.span_id

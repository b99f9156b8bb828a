"""Durable jobs in OpenTelemetry: an enqueue span, attempt spans linked to it, metrics.

Against the real SDK with in-memory exporter and reader (the ``otel`` fixture).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

import resilience as rs
from resilience.jobs import JobQueue
from resilience.storage import MemoryStore
from resilience.storage.jobs import MemoryJobStore
from resilience.testing import FakeClock

from .conftest import OTel

T0 = 1_700_000_000.25


def queue_on(clock: FakeClock) -> JobQueue:
    return JobQueue("mail", store=MemoryStore(clock), retry=rs.Retry(attempts=2))


def test_attempt_spans_link_to_the_enqueue_span(otel: OTel) -> None:
    clock = FakeClock(T0)
    queue = queue_on(clock)

    @queue.handler(name="send")
    def send(to: str) -> None:
        if to == "bad":
            raise ConnectionError("smtp down for token=hunter2")

    job_id = queue.enqueue(send, to="a")
    bad_id = queue.enqueue(send, to="bad")
    assert queue.job(job_id).trace is not None  # type: ignore[union-attr]
    queue.run_once()
    spans = otel.spans.get_finished_spans()
    enqueues = [span for span in spans if span.name == "enqueue mail"]
    attempts = [span for span in spans if span.name == "process mail"]
    assert len(enqueues) == 2 and len(attempts) == 2
    assert all(span.kind is SpanKind.PRODUCER for span in enqueues)
    for attempt, enqueue in zip(attempts, enqueues, strict=True):
        assert attempt.kind is SpanKind.CONSUMER
        assert attempt.parent is None  # a trace of its own
        assert [link.context.span_id for link in attempt.links] == [enqueue.context.span_id]
        assert attempt.attributes["messaging.destination.name"] == "mail"
        assert attempt.attributes["resilience.job.attempt"] == 1
    failed = next(
        span for span in attempts if span.attributes["messaging.message.id"] == str(bad_id)
    )
    assert failed.status.status_code is StatusCode.ERROR
    assert "hunter2" not in str(failed.events[0].attributes)  # redacted like every error


def test_job_metrics(otel: OTel) -> None:
    clock = FakeClock(T0)
    queue = queue_on(clock)

    @queue.handler(name="send")
    def send(to: str) -> None:
        if to == "bad":
            raise ConnectionError("down")

    queue.enqueue(send, to="a")
    queue.enqueue(send, to="bad")
    queue.enqueue(send, to="a", key="k")
    queue.enqueue(send, to="a", key="k")  # held key: not counted
    queue.enqueue(send, to="later", delay=60.0)
    queue.run_once()
    clock.advance(61.0)
    queue.run_once()  # the retry and the delayed job
    enqueued = otel.points("resilience.job.enqueued")
    assert sum(point.value for point in enqueued) == 4  # type: ignore[attr-defined]
    outcomes = {
        point.attributes["resilience.outcome"]: point.value  # type: ignore[attr-defined]
        for point in otel.points("resilience.job.attempts")
    }
    assert outcomes == {"done": 3, "retry": 1, "dead": 1}
    [dead] = otel.points("resilience.job.dead_letters")
    assert dead.attributes["resilience.job.reason"] == "attempts"  # type: ignore[attr-defined]
    depth = {
        point.attributes["resilience.job.state"]: point.value  # type: ignore[attr-defined]
        for point in otel.points("resilience.job.depth")
    }
    assert depth == {"pending": 0, "running": 0, "done": 3, "dead": 1}
    [lag] = otel.points("resilience.job.lag")
    assert lag.value == 0.0  # type: ignore[attr-defined]
    del queue


def test_async_jobs_are_traced_the_same(otel: OTel) -> None:
    clock = FakeClock(T0)
    queue = queue_on(clock)

    @queue.handler(name="ping")
    async def ping() -> None:
        pass

    async def main() -> None:
        await queue.aenqueue(ping)
        await queue.arun_once()

    asyncio.run(main())
    names = [span.name for span in otel.spans.get_finished_spans()]
    assert names == ["enqueue mail", "process mail"]


def test_dead_letters_are_logged_as_warnings(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(T0)
    queue = queue_on(clock)

    @queue.handler(name="send")
    def send(**kwargs: Any) -> None:
        raise LookupError("no such mailbox")

    caplog.set_level(logging.DEBUG, logger="resilience")
    queue.enqueue(send, to="x")
    queue.run_once()
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "dead-lettered" in r.message
    ]
    assert len(warnings) == 1 and "queue 'mail'" in warnings[0].message


def test_the_depth_and_lag_gauges_share_one_stats_read(otel: OTel) -> None:
    clock = FakeClock(T0)

    class CountingStore(MemoryJobStore):
        reads = 0

        def job_stats(self, queue: str) -> Any:
            CountingStore.reads += 1
            return super().job_stats(queue)

    queue = JobQueue("counted", store=CountingStore(clock))

    @queue.handler(name="noop")
    def noop() -> None:
        pass

    queue.enqueue(noop)  # the first job event sets up the instruments
    otel.points("resilience.job.depth")  # one collection: both gauges
    assert CountingStore.reads == 1
    lags = [
        point.value  # type: ignore[attr-defined]
        for point in otel.points("resilience.job.lag")
        if point.attributes["resilience.policy.name"] == "counted"  # type: ignore[attr-defined]
    ]
    assert lags == [0.0] and CountingStore.reads == 1  # within half a second: not read again
    del queue

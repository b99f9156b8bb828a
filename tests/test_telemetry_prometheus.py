"""The shipped Prometheus alerting rules parse and name only metrics we export.

The metrics are produced for real: policies run against an OpenTelemetry
MeterProvider read by the OpenTelemetry Prometheus exporter, and the exposition
text is what a Prometheus server would scrape.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest

import resilience as rs
from resilience.testing import FakeClock

from .conftest import _reset_otel_globals

RULES = Path(__file__).resolve().parent.parent / "docs" / "prometheus-alerts.yml"
SERIES = re.compile(r"\b(resilience_[a-z0-9_]+)")


@pytest.fixture
def exposition() -> Iterator[str]:
    registry = CollectorRegistry()
    reader = PrometheusMetricReader()
    registry.register(reader._collector)  # the reader's collector, on a private registry
    provider = MeterProvider(metric_readers=[reader])
    _reset_otel_globals()
    metrics_internal.set_meter_provider(provider)
    try:
        queue = exercise_every_policy()  # kept alive: its gauges read it at collection
        yield generate_latest(registry).decode()
        del queue
    finally:
        provider.shutdown()
        _reset_otel_globals()


def exercise_every_policy() -> object:
    clock = FakeClock()
    retry = rs.Retry(attempts=2, backoff=rs.Backoff.constant(0), name="alerts-retry")

    def fails() -> None:
        raise ConnectionError("down")

    retry(lambda: 1)()
    with pytest.raises(ConnectionError):
        retry(fails)()
    breaker = rs.CircuitBreaker("alerts-breaker", failure_threshold=1, clock=clock)
    with pytest.raises(ConnectionError):
        breaker(fails)()
    with pytest.raises(rs.CircuitOpenError):
        breaker(fails)()
    limiter = rs.RateLimiter("alerts-limiter", rate=1, per=1.0, clock=clock)
    limiter.acquire()
    limiter.acquire(timeout=5.0)  # waits one second for a token
    with pytest.raises(rs.RateLimitExceeded):
        limiter.acquire(timeout=0.0)
    return exercise_a_job_queue()


def exercise_a_job_queue() -> object:
    from resilience.jobs import JobQueue
    from resilience.storage import MemoryStore

    clock = FakeClock(1_700_000_000.0)
    queue = JobQueue("alerts-queue", store=MemoryStore(clock), retry=rs.Retry(attempts=1))

    @queue.handler
    def fails() -> None:
        raise ConnectionError("down")

    queue.enqueue(fails)
    queue.enqueue(fails, delay=60.0)
    queue.run_once()
    clock.advance(120.0)  # the second job is due and waiting: lag
    return queue


def test_rules_parse_and_have_the_expected_shape() -> None:
    document = yaml.safe_load(RULES.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} >= {
        "CircuitBreakerOpen",
        "RetryGiveUpRatioHigh",
        "RateLimiterRejectingSteadily",
        "JobDeadLettersGrowing",
        "JobQueueLagHigh",
    }
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}
        assert rule["expr"].count("(") == rule["expr"].count(")")


def test_rules_name_only_metrics_the_library_exports(exposition: str) -> None:
    lines = [line for line in exposition.splitlines() if line and not line.startswith("#")]
    metrics = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in lines}
    labels = set(re.findall(r"[{,]([a-z_]+)=", exposition))
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            names = set(SERIES.findall(rule["expr"]))
            assert names <= metrics | labels, (rule["alert"], sorted(names - metrics - labels))
            assert names & metrics, f"{rule['alert']} names no exported metric"

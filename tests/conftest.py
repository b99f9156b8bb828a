"""Shared fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry import trace
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from resilience.telemetry.otel import refresh as otel_switch_refresh


@dataclass
class OTel:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def points(self, name: str) -> list[object]:
        """Every data point of metric ``name`` collected so far."""
        data = self.metrics.get_metrics_data()
        found: list[object] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


def _reset_otel_globals() -> None:
    # OpenTelemetry lets a process set its providers once; its own test suite
    # resets these globals the same way between tests.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    metrics_internal._METER_PROVIDER_SET_ONCE = Once()
    metrics_internal._METER_PROVIDER = None
    otel_switch_refresh()


@pytest.fixture
def otel() -> Iterator[OTel]:
    """A real OpenTelemetry SDK with in-memory exporter and reader, for one test."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    _reset_otel_globals()
    trace.set_tracer_provider(tracer_provider)
    metrics_internal.set_meter_provider(meter_provider)
    otel_switch_refresh()
    try:
        yield OTel(spans, reader)
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
        _reset_otel_globals()


@pytest.fixture
def outages(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """Warnings on the ``resilience.storage`` logger (an outage is announced there)."""
    caplog.set_level(logging.WARNING, logger="resilience.storage")
    records: list[logging.LogRecord] = []
    yield records
    records.extend(r for r in caplog.records if r.name == "resilience.storage")

"""What telemetry costs per call.

1. No OpenTelemetry SDK configured: a decorated retry (which carries its
   telemetry observer) against the same retry built without one. Target: at
   most +0.05 µs per call.
2. SDK configured (spans exported to a discarding exporter through a
   SimpleSpanProcessor, metrics into an in-memory reader): a decorated retry
   against one bare span around the same call. Target: at most 1.2 x.

Part 2 runs in a child process so that the SDK it installs cannot leak into
other benchmarks run in the same process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _harness import Case, compare

import resilience as rs


def target() -> int:
    return 1


def without_sdk() -> None:
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(0), name="bench")
    compare(
        "telemetry, no SDK configured: decorated retry vs the same retry without observer",
        [
            Case("retry without observer", retry.wrap_sync(target)),
            Case("retry, decorated (observer)", retry(target)),
        ],
        baseline="retry without observer",
        number=300_000,
    )


def with_sdk() -> None:
    from collections.abc import Sequence

    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Discard()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    tracer = trace.get_tracer("bench")

    def bare_span() -> int:
        with tracer.start_as_current_span("bare"):
            return target()

    attributes = {"resilience.policy.kind": "retry", "resilience.policy.name": "bench"}

    def span_with_attributes() -> int:
        with tracer.start_as_current_span("bare", attributes=attributes):
            return target()

    from resilience.telemetry import otel

    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(0), name="bench")
    decorated = retry(target)

    def span_only() -> int:
        otel.configure(call_metrics=False)
        try:
            return decorated()
        finally:
            otel.configure(call_metrics=True)

    compare(
        "telemetry, SDK configured: decorated retry vs one bare span",
        [
            Case("one bare span", bare_span),
            Case("one span with the 2 policy attributes", span_with_attributes),
            Case("retry, decorated: span + call metrics", decorated),
            Case("retry, decorated: span only (call_metrics=False)", span_only),
        ],
        baseline="one bare span",
        number=20_000,
    )


def failure_paths_unobserved() -> None:
    """Failure paths with no SDK and logging left unconfigured: no subscriber
    wants their events, so none should be built."""
    from resilience.testing import FakeClock

    clock = FakeClock()
    limiter = rs.RateLimiter("bench-limiter", rate=1, per=3600.0, burst=1, clock=clock)
    limiter.try_acquire()  # empty: every later try is refused
    retry = rs.Retry(attempts=2, backoff=rs.Backoff.constant(0), clock=clock, name="bench")
    calls = iter(range(10**9))

    def fails_every_other_call() -> int:
        if next(calls) % 2 == 0:
            raise ConnectionError("reset")
        return 1

    compare(
        "telemetry, failure paths, nobody interested (no SDK, logging unconfigured)",
        [
            Case("limiter try_acquire() refused", limiter.try_acquire),
            Case("retry: one failure, then success", retry(fails_every_other_call)),
        ],
        baseline="limiter try_acquire() refused",
        number=50_000,
    )


def main() -> None:
    without_sdk()
    failure_paths_unobserved()
    here = Path(__file__).resolve().parent
    code = (
        f"import sys; sys.path.insert(0, {str(here)!r}); import bench_telemetry as b; b.with_sdk()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


if __name__ == "__main__":
    main()

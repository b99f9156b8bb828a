"""A provider set in a forked worker (gunicorn, Celery prefork) is noticed there.

The policies were built and decorated in the parent, before the fork, with no
SDK; the worker sets its SDK up afterwards. The parent's watcher thread does
not survive a fork, so the child must start its own.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

import pytest

SCRIPT = """
import os, sys, time
import resilience as rs
from resilience.telemetry.otel import OTEL

@rs.with_retry
def work() -> int:
    return 1

assert not OTEL.on, "no SDK yet"
pid = os.fork()
if pid == 0:  # the worker
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(provider)
    for _ in range(100):  # the watcher looks at most every second
        if OTEL.on:
            break
        time.sleep(0.1)
    work()
    names = [span.name for span in spans.get_finished_spans()]
    os._exit(0 if names == ["retry work"] else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_worker_forked_before_its_sdk_is_set_up_traces_its_calls() -> None:
    import subprocess

    assert multiprocessing  # the scenario a pre-fork server runs
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()

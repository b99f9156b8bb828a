"""The event hook: what retry emits, subscription, structured logs, JSON, structlog."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

import resilience as rs
from resilience import telemetry
from resilience.telemetry import events
from resilience.testing import FakeClock


@pytest.fixture
def received() -> Iterator[list[events.Event]]:
    seen: list[events.Event] = []
    unsubscribe = telemetry.subscribe(seen.append)
    yield seen
    unsubscribe()


def flaky(failures: int, error: type[Exception] = ConnectionError) -> Any:
    state = {"n": 0}

    def op() -> str:
        state["n"] += 1
        if state["n"] <= failures:
            raise error("token=s3cr3t-value")
        return "ok"

    return op


def test_retry_emits_attempts_retries_and_give_up(received: list[events.Event]) -> None:
    clock = FakeClock()
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.schedule([1, 2]), clock=clock, name="api")
    with pytest.raises(ConnectionError):
        retry.call(flaky(5))
    kinds = [type(event).__name__ for event in received]
    assert kinds == [
        "RetryScheduled",
        "AttemptStarted",
        "RetryScheduled",
        "AttemptStarted",
        "GaveUp",
    ]
    scheduled = received[0]
    assert isinstance(scheduled, events.RetryScheduled)
    assert (scheduled.policy, scheduled.attempt, scheduled.delay) == ("api", 1, 1)
    assert scheduled.error_class == "network"
    assert scheduled.error_type == "ConnectionError"
    gave_up = received[-1]
    assert isinstance(gave_up, events.GaveUp)
    assert (gave_up.attempts, gave_up.elapsed, gave_up.reason) == (3, 3.0, "attempts")


def test_success_path_emits_nothing(received: list[events.Event]) -> None:
    rs.Retry(attempts=3)(lambda: 1)()
    assert received == []


def test_events_are_frozen() -> None:
    event = events.TimeoutExpired("t", 1.0)
    with pytest.raises(AttributeError):
        event.seconds = 2.0  # type: ignore[misc]


def test_a_failing_subscriber_never_breaks_the_call(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: events.Event) -> None:
        raise RuntimeError("observer bug")

    unsubscribe = telemetry.subscribe(broken)
    try:
        retry = rs.Retry(attempts=2, backoff=rs.Backoff.constant(0))
        with caplog.at_level(logging.ERROR, logger="resilience.telemetry"):
            assert retry.call(flaky(1)) == "ok"
        assert "subscriber" in caplog.text
    finally:
        unsubscribe()


def test_unsubscribe_stops_delivery() -> None:
    seen: list[events.Event] = []
    unsubscribe = telemetry.subscribe(seen.append)
    unsubscribe()
    unsubscribe()  # idempotent
    rs.Retry(attempts=2, backoff=rs.Backoff.constant(0)).call(flaky(1))
    assert seen == []


def test_log_records_are_structured_levelled_and_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    retry = rs.Retry(attempts=2, backoff=rs.Backoff.constant(0.5), clock=clock, name="pay")
    with caplog.at_level(logging.DEBUG, logger="resilience"), pytest.raises(ConnectionError):
        retry.call(flaky(5))
    by_event = {r.resilience["event"]: r for r in caplog.records if hasattr(r, "resilience")}
    assert by_event["retry.scheduled"].levelno == logging.INFO
    assert by_event["retry.attempt_started"].levelno == logging.DEBUG
    assert by_event["retry.gave_up"].levelno == logging.WARNING
    fields = by_event["retry.gave_up"].resilience
    assert fields["policy"] == "pay"
    assert fields["attempts"] == 2
    assert fields["error.type"] == "ConnectionError"
    assert "s3cr3t" not in fields["error.message"]
    assert "s3cr3t" not in caplog.text


def test_healthy_service_is_quiet_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(0))
    with caplog.at_level(logging.WARNING, logger="resilience"):
        retry.call(flaky(2))  # recovered: retries are INFO, nothing at WARNING
    assert caplog.records == []


def test_json_formatter() -> None:
    record = logging.LogRecord(
        "resilience", logging.WARNING, __file__, 1, "password=hunter2 failed", None, None
    )
    record.resilience = {"event": "retry.gave_up", "policy": "db", "attempts": 3}
    line = json.loads(telemetry.JsonFormatter().format(record))
    assert line["level"] == "WARNING"
    assert line["event"] == "retry.gave_up"
    assert line["attempts"] == 3
    assert "hunter2" not in line["message"]


def test_structlog_path() -> None:
    structlog = pytest.importorskip("structlog")
    captured: list[dict[str, Any]] = []

    class Capture:
        def __getattr__(self, level: str) -> Any:
            def log(event: str, **fields: Any) -> None:
                captured.append({"level": level, "event": event, **fields})

            return log

    assert structlog is not None
    stop = telemetry.use_structlog(Capture())
    try:
        rs.Retry(attempts=2, backoff=rs.Backoff.constant(0), name="sl").call(flaky(1))
    finally:
        stop()
    assert captured[0]["event"] == "retry.scheduled"
    assert captured[0]["level"] == "info"
    assert captured[0]["policy"] == "sl"
    assert "s3cr3t" not in json.dumps(captured, default=str)


def test_a_circuit_opening_is_a_warning_and_closing_is_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    breaker = rs.CircuitBreaker("logs", failure_threshold=1, break_duration=5, clock=clock)
    with caplog.at_level(logging.INFO, logger="resilience"):
        with pytest.raises(ConnectionError):
            breaker.call(flaky(1))
        clock.advance(5)
        assert breaker.call(lambda: "ok") == "ok"
    changes = [
        (r.resilience["new_state"], r.levelno)
        for r in caplog.records
        if getattr(r, "resilience", {}).get("event") == "circuit_breaker.state_changed"
    ]
    assert ("open", logging.WARNING) in changes
    assert ("closed", logging.INFO) in changes

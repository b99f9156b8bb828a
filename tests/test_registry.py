"""Registry: shared policies by name, loading documents all-or-nothing, snapshots."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

import resilience as rs
from resilience.breaker import CircuitBreaker
from resilience.bulkhead import Bulkhead
from resilience.pipeline import Pipeline
from resilience.registry import Registry, RegistrySnapshot
from resilience.testing import FakeClock
from resilience.timeout import Timeout


def test_register_and_look_up() -> None:
    registry = Registry()
    retry = registry.register("email", rs.Retry())
    assert registry["email"] is retry
    assert registry.get("missing") is None
    assert "email" in registry
    assert len(registry) == 1
    assert list(registry) == ["email"]
    with pytest.raises(rs.ConfigurationError) as caught:
        registry.register("email", rs.Retry())
    assert caught.value.fields == ("email",)
    other = registry.register("email", rs.Retry(), replace=True)
    assert registry["email"] is other
    with pytest.raises(KeyError, match="registered: email"):
        registry["nope"]
    assert registry.remove("email") is other
    with pytest.raises(TypeError):
        registry.register("x", object())  # type: ignore[type-var]


def test_one_breaker_per_name_everywhere() -> None:
    registry = Registry(clock=FakeClock())
    first = registry.breaker("payments", failure_threshold=3)
    assert registry.breaker("payments") is first
    assert registry.breaker("payments", failure_threshold=3) is first
    with pytest.raises(rs.ConfigurationError, match="different options"):
        registry.breaker("payments", failure_threshold=4)
    with pytest.raises(rs.ConfigurationError, match="not a retry"):
        registry.retry("payments")
    assert isinstance(first, CircuitBreaker)
    assert first.options.clock is registry.clock


def test_get_or_create_builds_once_under_threads() -> None:
    registry = Registry()
    built: list[int] = []

    def factory() -> Bulkhead:
        built.append(1)
        return Bulkhead(2)

    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(registry.get_or_create("b", factory)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1
    assert all(result is results[0] for result in results)


def test_typed_helpers() -> None:
    registry = Registry()
    assert isinstance(registry.retry("r", attempts=2), rs.Retry)
    assert isinstance(registry.timeout("t", seconds=1.0), Timeout)
    assert isinstance(registry.bulkhead("b", max_concurrent=1), Bulkhead)
    with pytest.raises(TypeError, match="not a Pipeline"):
        registry.pipeline("r")


DOCUMENT = {
    "policies": {"payments-db": {"kind": "breaker", "failure_threshold": 2}},
    "operations": {
        "charge": {"timeout": 10, "retry": {"attempts": 3}, "breaker": "payments-db"},
        "refund": {"retry": {"attempts": 2}, "breaker": "payments-db"},
    },
}


def test_operations_share_named_policies() -> None:
    registry = Registry.from_dict(DOCUMENT, env={}, clock=FakeClock())
    shared = registry["payments-db"]
    assert registry.pipeline("charge")[2] is shared
    assert registry.pipeline("refund")[1] is shared
    assert sorted(registry) == [
        "charge",
        "charge.retry",
        "charge.timeout",
        "payments-db",
        "refund",
        "refund.retry",
    ]


def test_env_overrides_reach_named_policies() -> None:
    env = {"RESILIENCE__PAYMENTS_DB__BREAKER__FAILURE_THRESHOLD": "7"}
    breaker = Registry.from_dict(DOCUMENT, env=env)["payments-db"]
    assert isinstance(breaker, CircuitBreaker)
    assert breaker.options.failure_threshold == 7


def test_references_must_exist_and_be_of_the_kind() -> None:
    document = {
        "policies": {"r": {"kind": "retry"}},
        "operations": {"op": {"breaker": "r", "retry": "missing"}},
    }
    with pytest.raises(rs.ConfigurationError) as caught:
        Registry.from_dict(document, env={})
    assert caught.value.fields == ("operations.op.breaker", "operations.op.retry")


def test_loading_is_all_or_nothing() -> None:
    registry = Registry()
    registry.load({"operations": {"a": {"retry": {}}}}, env={})
    with pytest.raises(rs.ConfigurationError):
        registry.load({"operations": {"b": {"retry": {}}, "c": {"retry": {"attempts": 0}}}}, env={})
    assert sorted(registry) == ["a", "a.retry"]
    with pytest.raises(rs.ConfigurationError) as caught:
        registry.load({"operations": {"a": {"timeout": 1}}}, env={})
    assert caught.value.fields == ("operations.a",)


def test_a_loaded_pipeline_works() -> None:
    clock = FakeClock()
    registry = Registry.from_dict(
        {"operations": {"op": {"retry": {"backoff": {"kind": "constant", "delay": 1}}}}},
        env={},
        clock=clock,
    )
    calls: list[int] = []

    @registry.pipeline("op")
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError
        return "ok"

    assert flaky() == "ok"
    assert clock.sleeps == [1.0, 1.0]


def test_snapshot_is_json_with_statistics_and_state() -> None:
    clock = FakeClock()
    registry = Registry.from_dict(DOCUMENT, env={}, clock=clock)
    registry.register("standalone", Pipeline(Bulkhead(2, name="pool"), name="standalone"))

    def fail() -> None:
        raise ConnectionError

    charge = registry.pipeline("charge")
    # attempts 1 and 2 fail and open the breaker (inside the retry); attempt 3 is
    # rejected, and waiting out the 30 s break would pass the 10 s timeout.
    with pytest.raises(rs.CircuitOpenError):
        charge.call(fail)
    snapshot = registry.snapshot()
    assert isinstance(snapshot, RegistrySnapshot)
    data = json.loads(snapshot.model_dump_json())
    breaker = data["policies"]["payments-db"]
    assert breaker["type"] == "CircuitBreaker"
    assert breaker["state"] == "open"
    assert breaker["statistics"]["failures"] == 2
    retry = data["policies"]["charge.retry"]["statistics"]
    assert (retry["calls"], retry["attempts"], retry["give_ups"]) == (1, 3, 1)
    assert data["policies"]["charge"]["policies"] == [
        "charge.timeout",
        "charge.retry",
        "payments-db",
    ]
    assert data["policies"]["standalone"]["policies"] == ["pool"]
    assert data["policies"]["charge.timeout"]["statistics"]["seconds"] == 10.0
    assert "taken_at" in data


def test_job_queues_appear_in_the_snapshot() -> None:
    from resilience.jobs import JobQueue
    from resilience.storage import MemoryStore
    from resilience.testing import FakeClock

    clock = FakeClock(1_700_000_000.0)
    registry = Registry()
    emails = registry.queue("emails", store=MemoryStore(clock))
    assert registry.queue("emails") is emails

    @emails.handler
    def send(to: str) -> None:
        pass

    emails.enqueue(send, to="a")
    emails.enqueue(send, to="b", delay=10.0)
    broken = JobQueue("broken", store=BrokenJobs())
    registry.register_queue(broken)
    with pytest.raises(rs.ConfigurationError):
        registry.register_queue(JobQueue("broken", store=MemoryStore(clock)))
    snapshot = registry.snapshot()
    assert snapshot.queues["emails"].stats == {
        "pending": 2,
        "running": 0,
        "done": 0,
        "dead": 0,
        "due": 1,
        "lag": 0.0,
    }
    assert snapshot.queues["broken"].stats == {}
    assert "unavailable" in (snapshot.queues["broken"].error or "")
    assert "emails" in snapshot.model_dump_json()
    assert registry.queues() == ["broken", "emails"]


class BrokenJobs:
    """A job store whose server is down (every call fails as a real one would)."""

    def __getattr__(self, name: str) -> Any:
        if not name.startswith(("job_", "ajob_")):
            raise AttributeError(name)

        def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise rs.StoreUnavailable("broken://", "connection refused")

        return unavailable

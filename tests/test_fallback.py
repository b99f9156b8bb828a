"""Fallback: fixed value, handler, error selection, and the cached-last-good mode."""

from __future__ import annotations

from typing import Any

import pytest

import resilience as rs
from resilience.fallback import Cached, CachedFallback, Fallback
from resilience.testing import FakeClock


def fails(error: BaseException) -> Any:
    def raiser(*args: Any, **kwargs: Any) -> Any:
        raise error

    return raiser


def afails(error: BaseException) -> Any:
    async def raiser(*args: Any, **kwargs: Any) -> Any:
        raise error

    return raiser


def test_returns_the_value_on_a_handled_error() -> None:
    fallback = Fallback([])
    assert fallback.call(fails(ConnectionError())) == []
    assert fallback.call(lambda: [1]) == [1]
    stats = fallback.statistics
    assert (stats.calls, stats.failures, stats.fallbacks) == (2, 1, 1)


def test_handler_gets_the_exception() -> None:
    fallback = Fallback(handler=lambda exc: f"degraded: {exc}")
    assert fallback.call(fails(ConnectionError("reset"))) == "degraded: reset"


def test_permanent_errors_propagate_by_default() -> None:
    fallback = Fallback("x")
    with pytest.raises(TypeError):
        fallback.call(fails(TypeError("bug")))
    assert fallback.statistics.fallbacks == 0


@pytest.mark.parametrize(
    ("on", "error", "handled"),
    [
        ([rs.ErrorClass.TIMEOUT], TimeoutError(), True),
        ([rs.ErrorClass.TIMEOUT], ConnectionError(), False),
        (["network"], ConnectionError(), True),
        (KeyError, KeyError("k"), True),
        ([KeyError, "timeout"], TimeoutError(), True),
        (Exception, TypeError(), True),
        (lambda exc: "retry" in str(exc), RuntimeError("please retry"), True),
        (lambda exc: "retry" in str(exc), RuntimeError("no"), False),
    ],
)
def test_on_chooses_the_errors(on: Any, error: Exception, handled: bool) -> None:
    fallback = Fallback("fallback", on=on)
    if handled:
        assert fallback.call(fails(error)) == "fallback"
    else:
        with pytest.raises(type(error)):
            fallback.call(fails(error))


def test_rejections_of_other_policies_are_handled() -> None:
    fallback = Fallback("busy")
    assert fallback.call(fails(rs.BulkheadFull("db"))) == "busy"
    assert fallback.call(fails(rs.TimeoutExceeded("op", 1.0))) == "busy"


def test_base_exceptions_are_never_handled() -> None:
    with pytest.raises(KeyboardInterrupt):
        Fallback("x", on=BaseException).call(fails(KeyboardInterrupt()))


def test_options_are_validated() -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        Fallback("x", handler=lambda exc: "y")
    assert caught.value.fields == ("handler",)
    with pytest.raises(rs.ConfigurationError) as caught:
        Fallback("x", on=["sometimes"])
    assert caught.value.fields == ("on",)


async def test_async_value_sync_handler_and_async_handler() -> None:
    assert await Fallback(0).acall(afails(ConnectionError())) == 0
    assert await Fallback(handler=lambda exc: 1).acall(afails(ConnectionError())) == 1

    async def ahandler(exc: BaseException) -> int:
        return 2

    assert await Fallback(handler=ahandler).acall(afails(ConnectionError())) == 2
    with pytest.raises(ValueError):
        await Fallback(0).acall(afails(ValueError()))


# -- cached last-good --------------------------------------------------------------------------


class Backend:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.down = False
        self.version = 0

    def fetch(self, key: str = "main") -> str:
        if self.down:
            raise ConnectionError("backend down")
        self.version += 1
        return f"{key}-v{self.version}"

    async def afetch(self, key: str = "main") -> str:
        return self.fetch(key)


def test_cached_serves_the_last_good_result_marked_stale() -> None:
    clock = FakeClock()
    backend = Backend(clock)
    fetch = Fallback.cached(max_age=60.0, clock=clock)(backend.fetch)
    assert fetch() == Cached("main-v1")
    assert fetch().value == "main-v2"
    backend.down = True
    clock.advance(10.0)
    stale = fetch()
    assert stale.value == "main-v2"
    assert stale.stale is True
    assert stale.age == 10.0
    assert isinstance(stale.error, ConnectionError)
    backend.down = False
    fresh = fetch()
    assert (fresh.value, fresh.stale, fresh.age, fresh.error) == ("main-v3", False, 0.0, None)


def test_cached_respects_max_age_then_raises() -> None:
    clock = FakeClock()
    backend = Backend(clock)
    fallback = Fallback.cached(max_age=30.0, clock=clock)
    fetch = fallback(backend.fetch)
    fetch()
    backend.down = True
    clock.advance(30.0)
    assert fetch().stale  # exactly max_age old is still served
    clock.advance(0.5)
    with pytest.raises(ConnectionError):
        fetch()
    stats = fallback.statistics
    assert (stats.calls, stats.failures, stats.fallbacks) == (3, 2, 1)


def test_cached_without_a_previous_success_raises() -> None:
    fetch = Fallback.cached(max_age=30.0)(fails(ConnectionError("down")))
    with pytest.raises(ConnectionError):
        fetch()


def test_cached_keeps_one_entry_per_arguments() -> None:
    clock = FakeClock()
    backend = Backend(clock)
    fetch = Fallback.cached(max_age=60.0, clock=clock)(backend.fetch)
    fetch("a")
    fetch(key="b")
    backend.down = True
    assert fetch("a").value == "a-v1"
    assert fetch(key="b").value == "b-v2"
    with pytest.raises(ConnectionError):
        fetch("c")


def test_cached_with_a_key_function_and_unhashable_arguments() -> None:
    clock = FakeClock()
    state = {"down": False}

    def query(filters: dict[str, int]) -> int:
        if state["down"]:
            raise ConnectionError
        return sum(filters.values())

    by_key = CachedFallback(60.0, key=lambda filters: tuple(sorted(filters.items())), clock=clock)
    unkeyed = CachedFallback(60.0, clock=clock)
    keyed_query, plain_query = by_key(query), unkeyed(query)
    assert keyed_query({"a": 1}).value == 1
    assert plain_query({"a": 1}).value == 1
    state["down"] = True
    assert keyed_query({"a": 1}).stale
    with pytest.raises(ConnectionError):
        plain_query({"a": 1})  # a dict is not hashable: nothing was cached


def test_cached_evicts_beyond_max_entries() -> None:
    clock = FakeClock()
    backend = Backend(clock)
    fetch = CachedFallback(60.0, max_entries=2, clock=clock)(backend.fetch)
    for key in "abc":
        fetch(key)
    backend.down = True
    with pytest.raises(ConnectionError):
        fetch("a")
    assert fetch("c").stale


def test_cached_does_not_hide_permanent_errors() -> None:
    clock = FakeClock()
    state = {"error": None}

    def op() -> str:
        if state["error"] is not None:
            raise state["error"]
        return "ok"

    fetch = CachedFallback(60.0, clock=clock)(op)
    fetch()
    state["error"] = TypeError("bug")  # type: ignore[assignment]
    with pytest.raises(TypeError):
        fetch()


def test_cached_clear_forgets() -> None:
    clock = FakeClock()
    backend = Backend(clock)
    fallback = CachedFallback(60.0, clock=clock)
    fetch = fallback(backend.fetch)
    fetch()
    fallback.clear()
    backend.down = True
    with pytest.raises(ConnectionError):
        fetch()


def test_cached_options_are_validated() -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        Fallback.cached(max_age=0, max_entries=0)
    assert set(caught.value.fields) == {"max_age", "max_entries"}


async def test_async_cached_serves_stale() -> None:
    clock = FakeClock()
    backend = Backend(clock)
    fetch = Fallback.cached(max_age=60.0, clock=clock)(backend.afetch)
    assert (await fetch()).value == "main-v1"
    backend.down = True
    clock.advance(5.0)
    stale = await fetch()
    assert (stale.value, stale.stale, stale.age) == ("main-v1", True, 5.0)
    clock.advance(60.0)
    with pytest.raises(ConnectionError):
        await fetch()


def test_fallbacks_are_reported_as_events() -> None:
    from resilience.telemetry import events, subscribe

    clock = FakeClock()
    seen: list[events.Event] = []
    unsubscribe = subscribe(seen.append)
    try:
        Fallback(0, name="plain").call(fails(ConnectionError()))
        cached = Fallback.cached(60.0, clock=clock, name="cache")
        state = {"fail": False}

        def op() -> int:
            if state["fail"]:
                raise TimeoutError
            return 1

        cached.call(op)
        state["fail"] = True
        cached.call(op)
    finally:
        unsubscribe()
    used = [event for event in seen if isinstance(event, events.FallbackUsed)]
    assert [(event.policy, event.error_class, event.stale) for event in used] == [
        ("plain", "network", False),
        ("cache", "timeout", True),
    ]

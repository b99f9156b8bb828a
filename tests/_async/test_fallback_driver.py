"""The fallbacks' drivers in every form: ``acall`` and the decorator.

Written once, async; scripts/unasync.py generates the sync twin in tests/_sync.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from resilience.fallback import Cached, Fallback
from resilience.telemetry import events, subscribe
from resilience.testing import FakeClock

FORMS = ["call", "decorator"]


async def run(form: str, policy: Any, fn: Callable[..., Any], *args: Any) -> Any:
    if form == "call":
        return await policy.acall(fn, *args)
    return await policy(fn)(*args)


def failing(error: BaseException) -> Callable[..., Any]:
    async def fn(*args: Any) -> Any:
        raise error

    return fn


async def echo(*args: Any) -> Any:
    return args


@pytest.fixture
def used() -> Iterator[list[events.FallbackUsed]]:
    seen: list[events.FallbackUsed] = []
    unsubscribe = subscribe(
        lambda event: seen.append(event) if isinstance(event, events.FallbackUsed) else None
    )
    yield seen
    unsubscribe()


@pytest.mark.parametrize("form", FORMS)
async def test_a_handled_error_gets_the_value_and_is_counted(
    form: str, used: list[events.FallbackUsed]
) -> None:
    fallback = Fallback("cached page", on=[ConnectionError], name="drv-value")
    assert await run(form, fallback, echo, 1) == (1,)
    assert await run(form, fallback, failing(ConnectionError("down"))) == "cached page"
    stats = fallback.statistics
    assert (stats.calls, stats.failures, stats.fallbacks) == (2, 1, 1)
    assert [(event.stale, type(event.exception)) for event in used] == [(False, ConnectionError)]


@pytest.mark.parametrize("form", FORMS)
async def test_a_handler_answers_from_the_error(form: str) -> None:
    fallback = Fallback(handler=lambda exc: f"because {exc}", name="drv-handler")
    assert await run(form, fallback, failing(ConnectionError("down"))) == "because down"


@pytest.mark.parametrize("form", FORMS)
async def test_an_error_it_does_not_handle_propagates(form: str) -> None:
    fallback = Fallback(0, on=[ConnectionError], name="drv-unhandled")
    with pytest.raises(KeyError):
        await run(form, fallback, failing(KeyError("bug")))
    stats = fallback.statistics
    assert (stats.calls, stats.failures, stats.fallbacks) == (1, 0, 0)


@pytest.mark.parametrize("form", FORMS)
async def test_a_cached_fallback_serves_the_last_good_result_while_young(
    form: str, used: list[events.FallbackUsed]
) -> None:
    clock = FakeClock(1000.0)
    cached = Fallback.cached(10.0, on=[ConnectionError], clock=clock, name="drv-cached")
    answers: list[Any] = ["fresh"]

    async def fetch(key: str) -> str:
        answer = answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return f"{answer} {key}"

    assert await run(form, cached, fetch, "a") == Cached("fresh a")
    answers[0] = error = ConnectionError("down")
    clock.advance(4.0)
    stale = await run(form, cached, fetch, "a")
    assert (stale.value, stale.stale, stale.age, stale.error) == ("fresh a", True, 4.0, error)
    with pytest.raises(ConnectionError):
        await run(form, cached, fetch, "b")  # nothing remembered for these arguments
    clock.advance(7.0)
    with pytest.raises(ConnectionError):
        await run(form, cached, fetch, "a")  # too old now
    stats = cached.statistics
    assert (stats.calls, stats.failures, stats.fallbacks) == (4, 3, 1)
    assert [event.stale for event in used] == [True]


@pytest.mark.parametrize("form", FORMS)
async def test_unhashable_arguments_are_served_fresh_and_never_remembered(form: str) -> None:
    cached = Fallback.cached(10.0, on=[ConnectionError], clock=FakeClock(), name="drv-unhash")
    assert await run(form, cached, echo, [1]) == Cached(([1],))
    with pytest.raises(ConnectionError):
        await run(form, cached, failing(ConnectionError("down")), [1])

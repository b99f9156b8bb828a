"""The pipeline's drivers in every form: ``acall`` and the decorator.

Written once, async; scripts/unasync.py generates the sync twin in tests/_sync.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import resilience as rs
from resilience.pipeline import Pipeline

FORMS = ["call", "decorator"]
NO_WAIT = rs.Backoff.constant(0)


async def run(form: str, policy: Any, fn: Callable[..., Any], *args: Any) -> Any:
    if form == "call":
        return await policy.acall(fn, *args)
    return await policy(fn)(*args)


class Flaky:
    """Fails with ConnectionError the first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self, *args: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"attempt {self.calls}")
        return ("ok", *args)


@pytest.mark.parametrize("form", FORMS)
async def test_the_first_policy_is_outermost(form: str) -> None:
    # Fallback outside Retry: the retry gives up first, then the fallback answers.
    fallback = rs.Fallback("fallback", on=[ConnectionError])
    outside = Pipeline(fallback, rs.Retry(attempts=2, backoff=NO_WAIT))
    flaky = Flaky(5)
    assert await run(form, outside, flaky) == "fallback"
    assert flaky.calls == 2
    assert fallback.statistics.fallbacks == 1
    # Retry outside Fallback: the fallback answers the first attempt; nothing to retry.
    inside = Pipeline(rs.Retry(attempts=2, backoff=NO_WAIT), rs.Fallback("fallback"))
    flaky = Flaky(5)
    assert await run(form, inside, flaky) == "fallback"
    assert flaky.calls == 1


@pytest.mark.parametrize("form", FORMS)
async def test_an_empty_pipeline_passes_calls_through(form: str) -> None:
    assert await run(form, Pipeline(), Flaky(0), 1) == ("ok", 1)
    with pytest.raises(ConnectionError):
        await run(form, Pipeline(), Flaky(1))


async def test_acall_builds_the_chain_once_per_function() -> None:
    retry = rs.Retry(attempts=3, backoff=NO_WAIT)
    pipeline = Pipeline(retry)
    flaky = Flaky(1)
    assert await pipeline.acall(flaky, "a") == ("ok", "a")
    assert await pipeline.acall(flaky, "b") == ("ok", "b")
    assert len(pipeline._async_chains) == 1  # reused for the same callable


class Unhashable(Flaky):
    __hash__ = None  # type: ignore[assignment]


async def test_acall_wraps_an_unhashable_callable_for_one_call() -> None:
    pipeline = Pipeline(rs.Retry(attempts=2, backoff=NO_WAIT))
    assert await pipeline.acall(Unhashable(1)) == ("ok",)
    assert len(pipeline._async_chains) == 0

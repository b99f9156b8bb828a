"""The bulkhead's drivers in every form: acquire/release, decorator, context manager.

Written once, async; scripts/unasync.py generates the sync twin in tests/_sync.
(Hand-offs between concurrent callers, which need threads or tasks, are in
tests/test_bulkhead_handoff.py.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import resilience as rs
from resilience.bulkhead import Bulkhead
from resilience.telemetry import events, subscribe
from resilience.testing import FakeClock

FORMS = ["acquire", "decorator", "with"]


async def run(form: str, bulkhead: Bulkhead, body: object = None) -> object:
    """Run a body (returns the bulkhead's statistics inside it, or raises ``body``)."""

    async def inside() -> object:
        if isinstance(body, BaseException):
            raise body
        return bulkhead.statistics

    if form == "acquire":
        await bulkhead.aacquire()
        try:
            return await inside()
        finally:
            bulkhead.release()
    if form == "decorator":
        return await bulkhead(inside)()
    async with bulkhead:
        return await inside()


@pytest.fixture
def rejections() -> Iterator[list[str]]:
    reasons: list[str] = []
    unsubscribe = subscribe(
        lambda event: (
            reasons.append(event.reason) if isinstance(event, events.BulkheadRejected) else None
        )
    )
    yield reasons
    unsubscribe()


@pytest.mark.parametrize("form", FORMS)
async def test_each_form_holds_a_slot_while_the_call_runs(form: str) -> None:
    bulkhead = Bulkhead(2, name="drv-hold")
    inside = await run(form, bulkhead)
    assert inside.active == 1  # type: ignore[attr-defined]
    stats = bulkhead.statistics
    assert (stats.active, stats.queued, stats.calls, stats.rejections) == (0, 0, 1, 0)


@pytest.mark.parametrize("form", FORMS)
async def test_each_form_gives_the_slot_back_when_the_call_fails(form: str) -> None:
    bulkhead = Bulkhead(1, name="drv-fail")
    with pytest.raises(ConnectionError):
        await run(form, bulkhead, ConnectionError("down"))
    assert bulkhead.statistics.active == 0
    await run(form, bulkhead)


@pytest.mark.parametrize("form", FORMS)
async def test_a_full_bulkhead_without_a_queue_rejects_at_once(
    form: str, rejections: list[str]
) -> None:
    bulkhead = Bulkhead(1, name="drv-full")
    await bulkhead.aacquire()
    with pytest.raises(rs.BulkheadFull):
        await run(form, bulkhead)
    bulkhead.release()
    assert rejections == ["queue_full"]
    stats = bulkhead.statistics
    assert (stats.active, stats.calls, stats.rejections) == (0, 1, 1)


@pytest.mark.parametrize("form", FORMS)
async def test_a_queued_caller_leaves_when_its_wait_expires(
    form: str, rejections: list[str]
) -> None:
    bulkhead = Bulkhead(1, max_queued=1, max_wait=0.01, name="drv-expire")
    await bulkhead.aacquire()
    with pytest.raises(rs.BulkheadFull):
        await run(form, bulkhead)
    assert rejections == ["wait_expired"]
    assert bulkhead.statistics.queued == 0  # it left the queue
    bulkhead.release()
    assert bulkhead.statistics.active == 0
    await run(form, bulkhead)


@pytest.mark.parametrize("form", FORMS)
async def test_no_time_left_in_an_enclosing_timeout_means_no_queueing(form: str) -> None:
    clock = FakeClock()
    bulkhead = Bulkhead(1, max_queued=1, name="drv-deadline")
    await bulkhead.aacquire()

    @rs.Timeout(1.0, clock=clock)
    async def late() -> object:
        clock.advance(2.0)  # the deadline has passed: no budget to wait in the queue
        return await run(form, bulkhead)

    with pytest.raises(rs.TimeoutExceeded) as caught:
        await late()
    assert isinstance(caught.value.__cause__, rs.BulkheadFull)
    assert bulkhead.statistics.queued == 0
    bulkhead.release()

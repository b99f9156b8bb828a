"""The pure token-bucket core: properties over any sequence of requests and times."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from resilience._core.bucket import (
    FULL,
    SLACK,
    BucketSpec,
    exact_delay,
    penalize,
    refund,
    take,
    take_all,
    take_now,
    tokens,
)

# Bucket shapes: rate tokens per `per` seconds, burst capacity.
specs = st.builds(
    BucketSpec.of,
    rate=st.sampled_from([1, 3, 10, 100, 0.5, 7.25]),
    per=st.sampled_from([1.0, 0.1, 60.0, 2.5]),
    burst=st.integers(1, 20),
)
# One request: time passes, then someone asks for tokens, maybe willing to wait.
steps = st.lists(
    st.tuples(
        st.floats(0, 5, allow_nan=False),  # seconds since the previous request
        st.integers(1, 20),  # cost, clipped to the burst
        st.sampled_from([0.0, 0.0, 0.5, 3.0, math.inf]),  # max_wait
    ),
    max_size=60,
)
TOLERANCE = 10 * SLACK  # tokens: the rounding slack the core forgives


def run(spec: BucketSpec, start: float, plan: list[tuple[float, int, float]]):
    """Replay ``plan``; yield (grant time, cost) and check each decision on the way."""
    tat, now, grants = FULL, start, []
    for gap, cost, max_wait in plan:
        now += gap * spec.interval
        cost = min(cost, spec.burst)
        new, decision = take(tat, now, cost, spec, max_wait)
        assert 0.0 <= decision.tokens <= spec.burst
        if decision.granted:
            assert 0.0 <= decision.wait <= max_wait
            assert new > tat
            grants.append((now + decision.wait, cost))
        else:
            assert new == tat
            assert decision.retry_after > max_wait
        tat = new
    return grants


@settings(max_examples=300, deadline=None)
@given(spec=specs, start=st.sampled_from([0.0, 12345.678, 1e6]), plan=steps)
def test_tokens_granted_in_any_interval_stay_within_the_bound(spec, start, plan) -> None:
    grants = sorted(run(spec, start, plan))
    rate = 1 / spec.interval
    for i, (t0, _) in enumerate(grants):
        taken = 0
        for t1, cost in grants[i:]:
            taken += cost
            assert taken <= spec.burst + rate * (t1 - t0) + TOLERANCE, (t0, t1, taken)


@settings(max_examples=300, deadline=None)
@given(spec=specs, plan=steps, cost=st.integers(1, 20))
def test_retry_after_is_exact(spec, plan, cost) -> None:
    """Refused at now: granted at now + retry_after, and not noticeably sooner."""
    tat, now = FULL, 100.0
    for gap, step_cost, max_wait in plan:
        now += gap * spec.interval
        tat, _ = take(tat, now, min(step_cost, spec.burst), spec, max_wait)
    cost = min(cost, spec.burst)
    _, decision = take(tat, now, cost, spec)
    if decision.granted:
        return
    ra = decision.retry_after
    assert take(tat, now + ra, cost, spec)[1].granted
    assert take_now(tat, now + ra, cost * spec.interval, spec.headroom_for(cost)) is not None
    too_soon = now + ra - 1e-3 * spec.interval
    if too_soon > now:
        assert not take(tat, too_soon, cost, spec)[1].granted


@settings(max_examples=300, deadline=None)
@given(
    spec=specs,
    tat_offset=st.floats(-100, 100, allow_nan=False),
    cost=st.integers(1, 20),
    now=st.sampled_from([0.0, 3.3, 1e6]),
)
def test_fast_path_agrees_with_take(spec, tat_offset, cost, now) -> None:
    cost = min(cost, spec.burst)
    tat = now + tat_offset * spec.interval
    new, decision = take(tat, now, cost, spec)
    fast = take_now(tat, now, cost * spec.interval, spec.headroom_for(cost))
    if decision.granted:
        assert decision.wait == 0.0
        assert fast == new
    else:
        assert fast is None


@settings(max_examples=300, deadline=None)
@given(
    shapes=st.lists(
        st.tuples(specs, st.floats(-50, 50), st.integers(1, 20)), min_size=1, max_size=4
    ),
    max_wait=st.sampled_from([0.0, 1.0, 10.0]),
)
def test_composite_takes_from_all_or_none(shapes, max_wait) -> None:
    now = 1000.0
    specs_ = [spec for spec, _, _ in shapes]
    tats = [now + offset * spec.interval for spec, offset, _ in shapes]
    costs = [min(cost, spec.burst) for spec, _, cost in shapes]
    new, decision = take_all(tats, now, costs, specs_, max_wait)
    if not decision.granted:
        assert list(new) == tats
        # ...and the whole set goes through once retry_after has passed.
        assert take_all(tats, now + decision.retry_after, costs, specs_)[1].granted
    else:
        start = now + decision.wait
        for old, tat, cost, spec in zip(tats, new, costs, specs_, strict=True):
            assert tat == max(old, start) + cost * spec.interval
            # Every bucket really had the tokens at the common start time.
            assert tokens(old, start, spec) >= cost - TOLERANCE


def test_a_full_burst_at_one_instant_then_one_per_interval() -> None:
    spec = BucketSpec.of(rate=100, per=60.0, burst=100)
    tat, now = FULL, 1e6 + 0.1
    for _ in range(100):
        tat, decision = take(tat, now, 1, spec)
        assert decision.granted
    tat, decision = take(tat, now, 1, spec)
    assert not decision.granted
    # Float time near 1e6 s carries ~1e-10 s of rounding per step.
    assert math.isclose(decision.retry_after, 0.6, abs_tol=1e-6)


def test_burst_one_is_smooth() -> None:
    spec = BucketSpec.of(rate=10, per=1.0, burst=1)
    tat, decision = take(FULL, 0.0, 1, spec)
    assert decision.granted
    _, decision = take(tat, 0.05, 1, spec)
    assert not decision.granted
    assert math.isclose(decision.retry_after, 0.05)


def test_waiters_queue_behind_each_other() -> None:
    spec = BucketSpec.of(rate=1, per=1.0, burst=1)
    tat, first = take(FULL, 0.0, 1, spec, max_wait=10)
    tat, second = take(tat, 0.0, 1, spec, max_wait=10)
    tat, third = take(tat, 0.0, 1, spec, max_wait=10)
    assert (first.wait, second.wait, third.wait) == (0.0, 1.0, 2.0)
    _, refused = take(tat, 0.0, 1, spec, max_wait=2.5)
    assert not refused.granted and refused.retry_after == 3.0


def test_penalty_pauses_then_refills_from_one_token() -> None:
    spec = BucketSpec.of(rate=10, per=1.0, burst=10)
    tat = penalize(FULL, 0.0, 30.0, spec)
    _, refused = take(tat, 0.0, 1, spec)
    assert not refused.granted and math.isclose(refused.retry_after, 30.0)
    assert not take(tat, 29.999, 1, spec)[1].granted
    tat, decision = take(tat, 30.0, 1, spec)
    assert decision.granted
    assert not take(tat, 30.0, 1, spec)[1].granted
    # The next token is due at 30.1: a pause ending sooner changes nothing.
    assert penalize(tat, 30.0, 0.05, spec) == tat
    assert penalize(tat, 30.0, 0.5, spec) > tat


def test_tokens_of_a_bucket() -> None:
    spec = BucketSpec.of(rate=2, per=1.0, burst=4)
    assert tokens(FULL, 0.0, spec) == 4.0
    tat, _ = take(FULL, 0.0, 3, spec)
    assert tokens(tat, 0.0, spec) == 1.0
    assert tokens(tat, 0.25, spec) == 1.5
    tat, _ = take(tat, 0.0, 4, spec, max_wait=10)  # reserved ahead: nothing left now
    assert tokens(tat, 0.0, spec) == 0.0


@given(start=st.floats(-1e9, 1e9), now=st.floats(-1e9, 1e9))
def test_exact_delay_reaches_its_start(start, now) -> None:
    delay = exact_delay(start, now)
    assert delay >= 0
    assert now + delay >= start
    assert delay <= max(0.0, start - now) + 4 * math.ulp(max(abs(start), abs(now), 1.0))


def test_refund_undoes_the_last_reservation_only() -> None:
    spec = BucketSpec.of(rate=1, per=1.0, burst=1)
    tat, _ = take(FULL, 0.0, 1, spec)
    reserved, decision = take(tat, 0.0, 1, spec, max_wait=5)
    assert decision.wait == 1.0 and decision.reserved == ((tat, reserved),)
    assert refund(reserved, tat, reserved) == tat  # as if never reserved
    later, _ = take(reserved, 0.0, 1, spec, max_wait=5)  # someone queued behind it
    assert refund(later, tat, reserved) == later  # tokens stay spent
    assert take(FULL, 0.0, 1, spec)[1].reserved == ()  # no wait, nothing to refund

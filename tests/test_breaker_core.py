"""The pure core: windows, break durations, admission and probe rules."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience._core.breaker import (
    FAILURE,
    IGNORED,
    MAX_BREAK,
    SLOW,
    SUCCESS,
    Admission,
    CircuitState,
    ConsecutiveWindow,
    CountWindow,
    TimeWindow,
    TripRule,
    admission,
    break_duration,
    probe_verdict,
)
from resilience._core.circuit import (
    INITIAL,
    NEVER_MOVED,
    Circuit,
    CircuitSnapshot,
    Transition,
    acquire_probe,
    lease_or,
    release_probe,
    seeded,
    snapshot,
    transition,
)

RULE = TripRule(failure_ratio=0.5, minimum_calls=1)


def test_consecutive_window() -> None:
    window = ConsecutiveWindow(3)
    assert window.add(FAILURE, 0) is None
    assert window.add(SLOW, 0) is None  # slow counts like a failure
    assert window.add(SUCCESS, 0) is None
    assert window.streak == 0
    window.add(FAILURE, 0)
    window.add(FAILURE, 0)
    assert window.add(FAILURE, 0) == "3 consecutive failures reached failure_threshold"
    window.clear()
    assert window.totals(0) == (0, 0, 0)


@given(st.lists(st.sampled_from([SUCCESS, FAILURE, SLOW]), max_size=60), st.integers(1, 12))
def test_count_window_totals_match_the_last_n(outcomes: list[int], size: int) -> None:
    window = CountWindow(size, RULE)
    for outcome in outcomes:
        window.add(outcome, 0.0)
    last = outcomes[-size:]
    expected = (len(last), sum(o != SUCCESS for o in last), sum(o == SLOW for o in last))
    assert window.totals(0.0) == expected


@given(
    st.lists(
        st.tuples(st.floats(0, 5, allow_nan=False), st.sampled_from([SUCCESS, FAILURE, SLOW])),
        max_size=60,
    ),
    st.integers(1, 8),
    st.floats(0.5, 20, allow_nan=False),
)
def test_time_window_totals_match_the_recent_slices(
    steps: list[tuple[float, int]], buckets: int, seconds: float
) -> None:
    window = TimeWindow(seconds, buckets, RULE)
    width = seconds / buckets
    now = 0.0
    events: list[tuple[int, int]] = []
    for gap, outcome in steps:
        now += gap
        window.add(outcome, now)
        events.append((math.floor(now / width), outcome))
    current = math.floor(now / width)
    kept = [o for slice_, o in events if slice_ > current - buckets]
    expected = (len(kept), sum(o != SUCCESS for o in kept), sum(o == SLOW for o in kept))
    assert window.totals(now) == expected


def test_time_window_expires_everything_after_a_long_gap() -> None:
    window = TimeWindow(10.0, 5, RULE)
    window.add(SUCCESS, 1.0)
    window.add(FAILURE, 3.0)
    assert window.totals(9.9) == (2, 1, 0)
    assert window.totals(11.0) == (1, 1, 0)  # the slice [0, 2) of t=1 left at t=10
    assert window.totals(100.0) == (0, 0, 0)


def test_time_window_tolerates_a_clock_going_back() -> None:
    window = TimeWindow(10.0, 5, RULE)
    window.add(SUCCESS, 50.0)
    window.add(SUCCESS, 40.0)
    assert window.totals(50.0) == (2, 0, 0)


def test_ratio_verdict() -> None:
    rule = TripRule(failure_ratio=0.3, slow_call_ratio=0.5, minimum_calls=10)
    assert rule.ratio_verdict(9, 9, 0) is None
    assert rule.ratio_verdict(10, 2, 0) is None
    assert rule.ratio_verdict(10, 3, 0) == "failure ratio 3/10 reached 0.3"  # >=, exactly
    assert rule.ratio_verdict(10, 2, 2) is None
    assert rule.ratio_verdict(10, 5, 5) == "failure ratio 5/10 reached 0.3"  # slow is bad too
    assert TripRule(slow_call_ratio=0.5, minimum_calls=2).ratio_verdict(4, 2, 2) == (
        "slow-call ratio 2/4 reached 0.5"
    )


def test_break_duration_grows_and_caps() -> None:
    assert [break_duration(t, 10.0, 2.0, 50.0) for t in range(1, 6)] == [10, 20, 40, 50, 50]
    assert break_duration(3, 10.0, 1.0, math.inf) == 10.0
    assert break_duration(10_000, 1.0, 10.0, 60.0) == 60.0  # no OverflowError


@pytest.mark.parametrize(
    ("state", "now", "expected"),
    [
        (CircuitState.CLOSED, 0.0, Admission.PASS),
        (CircuitState.OPEN, 9.0, Admission.REJECT),
        (CircuitState.OPEN, 10.0, Admission.START_PROBING),
        (CircuitState.HALF_OPEN, 0.0, Admission.PROBE),
        (CircuitState.FORCED_OPEN, 99.0, Admission.REJECT),
        (CircuitState.DISABLED, 0.0, Admission.BYPASS),
    ],
)
def test_admission(state: CircuitState, now: float, expected: Admission) -> None:
    assert admission(state, now, open_until=10.0) is expected


def test_probe_verdict() -> None:
    assert probe_verdict(FAILURE, 0, 1) is CircuitState.OPEN
    assert probe_verdict(SLOW, 5, 1) is CircuitState.OPEN
    assert probe_verdict(IGNORED, 0, 1) is None
    assert probe_verdict(SUCCESS, 1, 2) is None
    assert probe_verdict(SUCCESS, 2, 2) is CircuitState.CLOSED


@given(
    st.lists(st.sampled_from([SUCCESS, FAILURE, SLOW]), max_size=80),
    st.integers(1, 12),
    st.integers(1, 12),
)
def test_count_window_lock_free_successes_keep_their_order(
    outcomes: list[int], size: int, minimum: int
) -> None:
    rule = TripRule(failure_ratio=0.5, minimum_calls=min(minimum, size))
    fast, plain = CountWindow(size, rule), CountWindow(size, rule)
    for outcome in outcomes:
        plain_verdict = plain.add(outcome, 0.0)
        if outcome == SUCCESS and fast.note_success(0.0):
            assert plain_verdict is None  # noted without a verdict: there was none to give
        else:
            assert fast.add(outcome, 0.0) == plain_verdict
        if plain_verdict is not None:  # the circuit opens: the driver clears the window
            fast.clear()
            plain.clear()
    assert fast.totals(0.0) == plain.totals(0.0)


@given(
    st.lists(
        st.tuples(st.integers(0, 12).map(lambda n: n / 4), st.sampled_from([SUCCESS, FAILURE])),
        max_size=80,
    ),
    st.integers(1, 4),
    st.integers(1, 6),
)
def test_time_window_lock_free_successes_stay_in_their_slice(
    steps: list[tuple[float, int]], buckets: int, minimum: int
) -> None:
    rule = TripRule(failure_ratio=0.5, minimum_calls=minimum)
    fast, plain = TimeWindow(4.0, buckets, rule), TimeWindow(4.0, buckets, rule)
    now = 0.0
    for gap, outcome in steps:
        now += gap
        plain_verdict = plain.add(outcome, now)
        if outcome == SUCCESS and fast.note_success(now):
            assert plain_verdict is None  # noted without a verdict: there was none to give
        else:
            assert fast.add(outcome, now) == plain_verdict
        if plain_verdict is not None:  # the circuit opens: the driver clears the window
            fast.clear()
            plain.clear()
    assert fast.totals(now) == plain.totals(now)


def test_clear_forgets_pending_successes() -> None:
    window = CountWindow(4, TripRule(failure_ratio=0.5, minimum_calls=1))
    window.add(FAILURE, 0.0)
    assert window.note_success(0.0)
    window.clear()
    assert window.totals(0.0) == (0, 0, 0)
    assert not window.note_success(0.0)  # not mature any more


# -- the shared circuit's rules (resilience._core.circuit) -------------------------------

FAR = 1_700_000_000.25


def _move(circuit_: Circuit, expected: int, state: CircuitState, duration: float = 0.0) -> Circuit:
    won, moved = transition(circuit_, Transition(expected, state, f"to {state}", 1, duration, FAR))
    assert won
    return moved


def test_a_transition_is_a_compare_and_set() -> None:
    won, opened = transition(NEVER_MOVED, Transition(0, CircuitState.OPEN, "boom", 1, 30.0, FAR))
    assert won and (opened.version, opened.open_until, opened.trips) == (1, FAR + 30.0, 1)
    assert snapshot(opened, FAR + 10.0) == CircuitSnapshot(CircuitState.OPEN, 1, 1, "boom", 20.0)
    assert snapshot(opened, FAR + 40.0).break_remaining == 0.0
    lost, unchanged = transition(opened, Transition(0, CircuitState.CLOSED, "late", 0, 0.0, FAR))
    assert not lost and unchanged is opened
    assert snapshot(NEVER_MOVED, FAR) == INITIAL


@pytest.mark.parametrize("duration", [math.inf, math.nan])
def test_a_break_that_is_not_a_number_holds_the_longest_break(duration: float) -> None:
    opened = _move(NEVER_MOVED, 0, CircuitState.OPEN, duration)
    assert snapshot(opened, FAR).break_remaining == MAX_BREAK
    assert snapshot(Circuit(CircuitState.OPEN, open_until=math.inf), FAR).break_remaining == (
        MAX_BREAK
    )


def test_probe_permits_belong_to_one_half_open_version() -> None:
    assert acquire_probe(NEVER_MOVED, 0, 1, 5.0, FAR) == (False, NEVER_MOVED)  # closed
    half_open = _move(NEVER_MOVED, 0, CircuitState.HALF_OPEN)
    granted, held = acquire_probe(half_open, 1, 1, 5.0, FAR)
    assert granted and (held.probes_out, held.probes_lapse_at) == (1, FAR + 5.0)
    assert not acquire_probe(held, 1, 1, 5.0, FAR + 1.0)[0]  # the only permit is out
    assert not acquire_probe(held, 0, 5, 5.0, FAR)[0]  # a stale version gets nothing
    assert acquire_probe(held, 1, 1, 5.0, FAR + 5.0)[0]  # the lease lapsed
    successes, released = release_probe(held, 1, True)
    assert successes == 1 and (released.probes_out, released.probe_successes) == (0, 1)
    assert release_probe(released, 1, None)[0] == 1  # no verdict: not a success
    assert release_probe(released, 0, True) == (-1, released)  # moved on
    reopened = _move(released, 1, CircuitState.OPEN, 1.0)
    assert (reopened.probes_out, reopened.probe_successes, reopened.probes_lapse_at) == (0, 0, 0)


@pytest.mark.parametrize(
    ("lease", "held"), [(None, 60.0), (0.0, 60.0), (-1.0, 60.0), (math.inf, 60.0), (2.5, 2.5)]
)
def test_a_lease_that_never_ends_is_the_default(lease: float | None, held: float) -> None:
    assert lease_or(lease, 60.0) == held


def test_a_seeded_circuit_takes_over_where_the_snapshot_left_off() -> None:
    seen = CircuitSnapshot(CircuitState.OPEN, 7, 2, "boom", 12.5)
    local = seeded(seen, FAR)
    assert (local.version, local.trips, local.open_until, local.probes_out) == (7, 2, FAR + 12.5, 0)
    assert snapshot(local, FAR + 2.5) == CircuitSnapshot(CircuitState.OPEN, 7, 2, "boom", 10.0)
    assert seeded(CircuitSnapshot(CircuitState.CLOSED, 3), FAR).open_until == 0.0

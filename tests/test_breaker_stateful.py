"""Hypothesis stateful test: the breaker against a small, independent reference model.

The model is written from the documented rules, not from the implementation:
it keeps every outcome with its time and recomputes the window from scratch on
every call. Times and durations are multiples of 1/4 so that float arithmetic is
exact and boundaries (``now == open_until``) are hit on purpose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import resilience as rs
from resilience.breaker import CircuitBreaker, CircuitState
from resilience.testing import FakeClock

QUARTERS = st.integers(0, 40).map(lambda n: n / 4)


@dataclass
class Model:
    """The reference: the breaker's documented rules, computed the slow, obvious way."""

    threshold: int | None
    ratio: float | None
    window_size: int | None
    window: float | None
    buckets: int
    minimum: int
    slow_after: float | None
    slow_ratio: float | None
    base_break: float
    multiplier: float
    max_break: float
    probes_needed: int
    lease: float
    state: str = "closed"
    outcomes: list[tuple[float, str]] = field(default_factory=list)  # (time, good|bad|slow)
    open_until: float = 0.0
    trips: int = 0
    probe_successes: int = 0
    permits_out: int = 0  # half-open probe permits held
    permits_lapse_at: float = 0.0  # they all lapse then (lease after the last one taken)

    def move(self, state: str) -> None:
        self.state = state
        self.outcomes.clear()
        self.probe_successes = 0
        self.permits_out = 0

    def open(self, now: float, trips: int) -> None:
        self.move("open")
        self.trips = trips
        self.open_until = now + min(
            self.base_break * self.multiplier ** (trips - 1), self.max_break
        )

    def admit(self, now: float) -> str:
        """'pass', 'probe', 'bypass' or 'reject'."""
        if self.state == "open" and now >= self.open_until:
            self.move("half_open")
        if self.state == "half_open":
            if now >= self.permits_lapse_at:
                self.permits_out = 0  # permits nobody handed back have lapsed
            if self.permits_out >= self.probes_needed:
                return "reject"
            self.permits_out += 1
            self.permits_lapse_at = now + self.lease
        return {
            "closed": "pass",
            "half_open": "probe",
            "disabled": "bypass",
            "open": "reject",
            "forced_open": "reject",
        }[self.state]

    def in_window(self, now: float) -> list[str]:
        if self.threshold is not None:
            return [kind for _, kind in self.outcomes]
        if self.window_size is not None:
            return [kind for _, kind in self.outcomes[-self.window_size :]]
        assert self.window is not None
        width = self.window / self.buckets
        current = math.floor(now / width)
        return [k for t, k in self.outcomes if math.floor(t / width) > current - self.buckets]

    def should_open(self, now: float) -> bool:
        kinds = self.in_window(now)
        if self.threshold is not None:
            streak = 0
            for kind in kinds:
                streak = 0 if kind == "good" else streak + 1
            return streak >= self.threshold
        calls = len(kinds)
        if calls < self.minimum or calls == 0:
            return False
        bad = sum(kind != "good" for kind in kinds)
        slow = kinds.count("slow")
        assert self.ratio is not None
        if Fraction(bad, calls) >= Fraction(self.ratio):
            return True
        return self.slow_ratio is not None and Fraction(slow, calls) >= Fraction(self.slow_ratio)

    def finish(self, ticket: str, kind: str | None, now: float) -> None:
        """``kind`` is good, bad or slow; ``None`` for an ignored outcome."""
        if ticket == "probe" and self.state == "half_open" and (kind is None or kind == "good"):
            self.permits_out = max(0, self.permits_out - 1)  # handed back
        if kind is None or ticket == "bypass":
            return
        if ticket == "pass":
            self.outcomes.append((now, kind))
            if self.should_open(now):
                self.open(now, 1)
            return
        if kind != "good":
            self.open(now, self.trips + 1)
            return
        self.probe_successes += 1
        if self.probe_successes >= self.probes_needed:
            self.move("closed")
            self.trips = 0


class BreakerMachine(RuleBasedStateMachine):
    model: Model
    breaker: CircuitBreaker
    clock: FakeClock

    @initialize(
        mode=st.sampled_from(["consecutive", "count", "time"]),
        threshold=st.integers(1, 4),
        ratio=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
        window_size=st.integers(1, 6),
        window=st.sampled_from([1.0, 2.0, 4.0, 8.0]),
        buckets=st.sampled_from([1, 2, 4]),
        minimum=st.integers(1, 6),
        slow_after=st.none() | st.sampled_from([0.5, 1.0, 2.0]),
        slow_ratio=st.none() | st.sampled_from([0.5, 1.0]),
        base_break=st.sampled_from([0.25, 1.0, 2.5]),
        multiplier=st.sampled_from([1.0, 2.0]),
        max_extra=st.sampled_from([0.0, 2.0, math.inf]),
        probes_needed=st.integers(1, 3),
        lease=st.sampled_from([0.5, 2.0, 60.0]),
        start=st.sampled_from([0.0, 1_700_000_000.0]),
    )
    def build(
        self,
        mode: str,
        threshold: int,
        ratio: float,
        window_size: int,
        window: float,
        buckets: int,
        minimum: int,
        slow_after: float | None,
        slow_ratio: float | None,
        base_break: float,
        multiplier: float,
        max_extra: float,
        probes_needed: int,
        lease: float,
        start: float,
    ) -> None:
        options: dict[str, Any] = {
            "probe_lease": lease,
            "break_duration": base_break,
            "break_multiplier": multiplier,
            "half_open_calls": probes_needed,
            "slow_call_duration": slow_after,
        }
        if max_extra != math.inf:
            options["max_break_duration"] = base_break + max_extra
        if mode == "consecutive":
            options["failure_threshold"] = threshold
            slow_ratio = None
        else:
            minimum = min(minimum, window_size) if mode == "count" else minimum
            options.update(failure_ratio=ratio, minimum_calls=minimum)
            if mode == "count":
                options["window_size"] = window_size
            else:
                options.update(window=window, window_buckets=buckets)
            if slow_after is None:
                slow_ratio = None
            options["slow_call_ratio"] = slow_ratio
        self.clock = FakeClock(start)
        self.breaker = CircuitBreaker("model", clock=self.clock, **options)
        self.model = Model(
            threshold=threshold if mode == "consecutive" else None,
            ratio=None if mode == "consecutive" else ratio,
            window_size=window_size if mode == "count" else None,
            window=window if mode == "time" else None,
            buckets=buckets,
            minimum=minimum,
            slow_after=slow_after,
            slow_ratio=slow_ratio,
            base_break=base_break,
            multiplier=multiplier,
            max_break=base_break + max_extra,
            probes_needed=probes_needed,
            lease=lease,
        )

    def run(self, duration: float, raise_: BaseException | None, kind: str | None) -> None:
        start = self.clock.now()
        ticket = self.model.admit(start)
        if (
            kind == "good"
            and self.model.slow_after is not None
            and duration >= self.model.slow_after
        ):
            kind = "slow"

        def work() -> str:
            self.clock.advance(duration)
            if raise_ is not None:
                raise raise_
            return "done"

        try:
            result: Any = self.breaker.call(work)
        except rs.CircuitOpenError as rejected:
            assert ticket == "reject", f"rejected, the model says {ticket}"
            if self.model.state == "open":
                assert rejected.retry_after == self.model.open_until - start
            else:
                assert rejected.retry_after is None
            return
        except BaseException as exc:
            assert exc is raise_
        else:
            assert result == "done"
        assert ticket != "reject", "the model says this call must be rejected"
        self.model.finish(ticket, kind, self.clock.now())

    @rule(duration=QUARTERS)
    def success(self, duration: float) -> None:
        self.run(duration, None, "good")

    @rule(duration=QUARTERS)
    def failure(self, duration: float) -> None:
        self.run(duration, ConnectionError("down"), "bad")

    @rule(duration=QUARTERS)
    def permanent_error(self, duration: float) -> None:
        self.run(duration, ValueError("bad input"), "good")  # the dependency answered

    @rule()
    def interrupted(self) -> None:
        self.run(0.0, KeyboardInterrupt(), None)

    @rule()
    def hung_call(self) -> None:
        """A call that is admitted and never returns (its thread hangs, its
        process dies): a half-open probe keeps its permit until the lease lapses."""
        ticket = self.model.admit(self.clock.now())
        try:
            self.breaker.__enter__()
        except rs.CircuitOpenError:
            assert ticket == "reject", f"rejected, the model says {ticket}"
            return
        assert ticket != "reject", "the model says this call must be rejected"

    @rule(seconds=QUARTERS)
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def isolate(self) -> None:
        self.breaker.isolate()
        self.model.move("forced_open")
        self.model.trips = 0

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.model.move("closed")
        self.model.trips = 0

    @rule()
    def disable(self) -> None:
        self.breaker.disable()
        self.model.move("disabled")
        self.model.trips = 0

    @invariant()
    def same_state(self) -> None:
        if hasattr(self, "model"):
            assert self.breaker.state is CircuitState(self.model.state)


BreakerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBreakerAgainstModel = BreakerMachine.TestCase

"""Backoff arithmetic: the delay before retry number ``n``, jittered.

Each rule is a frozen value holding already-validated parameters (the public
:class:`resilience.Backoff` validates them and delegates here). A rule is a pure
function of the retry number (1 for the wait after the first failure) and, for
decorrelated jitter only, the previous delay; the random source is passed in, so
a seeded ``random.Random`` replays the same sequence. Jitter follows Marc
Brooker's "Exponential Backoff and Jitter":

* ``none``: the computed delay ``d``;
* ``full``: uniform in ``[0, d]``;
* ``equal``: ``d/2`` plus uniform in ``[0, d/2]``;
* ``decorrelated`` (exponential only): uniform in ``[base, 3 * previous]``, capped.

No rule returns more than ``MAX_DURATION``: a delay can always be slept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from random import Random
from typing import Protocol

from ..clock import MAX_DURATION

__all__ = [
    "MAX_RETRY_NUMBER",
    "Constant",
    "DelayRule",
    "Exponential",
    "Jitter",
    "Linear",
    "Schedule",
    "jitter_floor",
    "jittered",
]

MAX_RETRY_NUMBER = 1_000_000_000
"""Retry numbers past this one (``MAX_COUNT``, the most attempts a policy allows)
get its delay: a linear step count stays a float-sized integer."""


class Jitter(StrEnum):
    """How a computed delay is randomised."""

    NONE = "none"
    FULL = "full"
    EQUAL = "equal"
    DECORRELATED = "decorrelated"


class DelayRule(Protocol):
    """What a retry asks of a backoff: the delay before retry ``retry`` (1-based)."""

    def delay(self, retry: int, previous: float | None, rng: Random) -> float: ...


def jittered(delay: float, jitter: Jitter, rng: Random) -> float:
    """``delay`` randomised by ``jitter`` (decorrelated jitter is the exponential rule's)."""
    if jitter is Jitter.FULL:
        return rng.uniform(0.0, delay)
    if jitter is Jitter.EQUAL:
        half = delay / 2.0
        return half + rng.uniform(0.0, half)
    return delay


def jitter_floor(ceiling: float, jitter: Jitter) -> float:
    """The least a delay of at most ``ceiling`` can be once ``jitter`` is applied."""
    if jitter is Jitter.FULL:
        return 0.0
    if jitter is Jitter.EQUAL:
        return ceiling / 2.0
    return ceiling


@dataclass(frozen=True, slots=True)
class Constant:
    """``seconds`` before every retry."""

    seconds: float
    jitter: Jitter = Jitter.NONE

    def ceiling(self, retry: int) -> float:
        return self.seconds

    def floor(self, retry: int) -> float:
        return jitter_floor(self.seconds, self.jitter)

    def delay(self, retry: int, previous: float | None, rng: Random) -> float:
        return jittered(self.seconds, self.jitter, rng)

    @property
    def max_delay(self) -> float:
        return self.seconds


@dataclass(frozen=True, slots=True)
class Linear:
    """``base``, then ``base + step``, ``base + 2*step``… up to ``cap``."""

    base: float
    step: float
    cap: float = math.inf
    jitter: Jitter = Jitter.NONE

    def ceiling(self, retry: int) -> float:
        steps = min(max(retry, 1), MAX_RETRY_NUMBER) - 1
        return min(self.cap, self.base + self.step * steps, MAX_DURATION)

    def floor(self, retry: int) -> float:
        return jitter_floor(self.ceiling(retry), self.jitter)

    def delay(self, retry: int, previous: float | None, rng: Random) -> float:
        return jittered(self.ceiling(retry), self.jitter, rng)

    @property
    def max_delay(self) -> float:
        return min(self.cap, MAX_DURATION) if self.step > 0 else self.base


@dataclass(frozen=True, slots=True)
class Exponential:
    """``base * multiplier**(n-1)`` before retry ``n``, up to ``cap``, jittered."""

    base: float = 0.1
    multiplier: float = 2.0
    cap: float = 30.0
    jitter: Jitter = Jitter.FULL

    def ceiling(self, retry: int) -> float:
        cap = min(self.cap, MAX_DURATION)
        if self.jitter is Jitter.DECORRELATED:
            return cap
        try:
            return min(cap, self.base * self.multiplier ** (max(retry, 1) - 1))
        except OverflowError:  # multiplier ** n past float range: far beyond any cap
            return cap

    def floor(self, retry: int) -> float:
        if self.jitter is Jitter.DECORRELATED:
            return self.base
        return jitter_floor(self.ceiling(retry), self.jitter)

    def delay(self, retry: int, previous: float | None, rng: Random) -> float:
        if self.jitter is Jitter.DECORRELATED:
            base = self.base
            upper = max(base, 3.0 * (base if previous is None else previous))
            return min(self.cap, MAX_DURATION, rng.uniform(base, upper))
        return jittered(self.ceiling(retry), self.jitter, rng)

    @property
    def max_delay(self) -> float:
        return min(self.cap, MAX_DURATION)


@dataclass(frozen=True, slots=True)
class Schedule:
    """The ``n``-th of ``delays`` before retry ``n``; past the end, the last one."""

    delays: tuple[float, ...]
    jitter: Jitter = Jitter.NONE

    def ceiling(self, retry: int) -> float:
        delays = self.delays
        return delays[min(max(retry, 1), len(delays)) - 1]

    def floor(self, retry: int) -> float:
        return jitter_floor(self.ceiling(retry), self.jitter)

    def delay(self, retry: int, previous: float | None, rng: Random) -> float:
        return jittered(self.ceiling(retry), self.jitter, rng)

    @property
    def max_delay(self) -> float:
        return max(self.delays)

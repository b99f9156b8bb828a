"""The token bucket as a pure function of time: no I/O, ``now`` is an argument.

Representation: one float per bucket
------------------------------------
A bucket of ``burst`` tokens refilled at one token per ``interval`` seconds is
stored as a single number, its *theoretical arrival time* (``tat``, as in the
Generic Cell Rate Algorithm): the moment at which the bucket will be full
again. The tokens available at ``now`` follow from it::

    tokens(now) = burst - max(0, tat - now) / interval

so a bucket that is full is any ``tat <= now`` (``-inf`` for one never used),
and a store may forget such a bucket without changing any answer. Taking
``cost`` tokens at time ``s`` moves ``tat`` to ``max(tat, s) + cost * interval``
and is allowed once ``tat - s <= capacity - cost * interval``, where
``capacity = burst * interval``: exactly "the bucket holds ``cost`` tokens".
One float per key is cheap to keep in a dict, a Redis string or a SQL column,
and the update is one expression every backend can evaluate atomically.

Waiting is reservation: an acquisition allowed to wait ``max_wait`` seconds is
granted at the *start time* ``s = max(now, earliest)`` if ``s - now <=
max_wait``, and ``tat`` moves as if the tokens were taken at ``s``. The caller
then sleeps until ``s``; nothing is re-checked after the sleep, and later
callers queue behind (first come, first served). A caller that cannot be
served within ``max_wait`` is told so at once and consumes nothing.

A waiter that gives up (its task is cancelled) may hand its reservation back,
if nobody reserved after it: see :func:`refund`.

A composite acquisition over several buckets starts at the latest of their
start times, and takes from every bucket as of that one time, or from none.

Floating point: sums of intervals round, so a bucket emptied by ``burst``
single-token takes at one instant could otherwise refuse its last token. The
allow/refuse check forgives ``SLACK`` (a millionth of a token) of rounding, so
a grant may come at most a millionth of an interval early; start times, waits
and ``retry_after`` are computed without it, so they are never too short.
Beyond that, each take rounds ``tat`` to the float grid of the clock's value:
a take may be off by at most ``ulp(now) / interval`` tokens, a relative error
of about 2**-52 * now / interval (for a monotonic clock at 10^6 s and a
million tokens a second, about one token in ten thousand).

Shapes are bounded (:func:`check_shape`, run once when a limiter is built): the
interval ``per / rate`` lies in ``[MIN_INTERVAL, MAX_CAPACITY]`` and an empty
bucket refills within ``MAX_CAPACITY`` seconds, so every quantity derived from
a shape (interval, capacity, headroom) is finite and positive, and ``tat``
never runs more than ``MAX_CAPACITY`` past the clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "FULL",
    "MAX_CAPACITY",
    "MIN_INTERVAL",
    "SLACK",
    "BucketSpec",
    "Decision",
    "check_shape",
    "exact_delay",
    "is_full",
    "penalize",
    "refund",
    "take",
    "take_all",
    "take_now",
    "tokens",
]

FULL = -math.inf
"""The state of a bucket never used: full (any ``tat <= now`` means full)."""

SLACK = 1e-6
"""Rounding error tolerated by every check, in tokens."""

MIN_INTERVAL = 1e-6
"""The shortest interval between two tokens, in seconds: a million tokens a second.
Shorter ones would fall below the float grid of a clock far from zero (the
spacing of floats near 1.7e9, a wall clock's value, is 2.4e-7 s): ``tat +
interval`` would round back to ``tat`` and a bucket would grant without limit."""

MAX_CAPACITY = 1e9
"""The longest an empty bucket may take to refill (``burst * interval``), in seconds
(about 31 years); so too the longest interval."""


def check_shape(rate: float, per: float, burst: int) -> tuple[tuple[str, ...], str] | None:
    """What is wrong with the bucket shape ``rate`` per ``per`` seconds, ``burst``
    at once, as (the fields involved, a message); ``None`` if nothing is.

    Each field may be fine on its own and their combination not: ``rate=1e-10,
    per=1e300`` puts one token every 1e310 seconds, which overflows to ``inf``.
    """
    interval = per / rate
    if not MIN_INTERVAL <= interval <= MAX_CAPACITY:  # inf and NaN fail too
        return (
            ("rate", "per"),
            f"one token every per/rate = {interval!r} seconds: must be between "
            f"{MIN_INTERVAL:.0e} and {MAX_CAPACITY:.0e} seconds (for more than a "
            "million a second, count in larger units: kilobytes, not bytes)",
        )
    capacity = burst * interval
    if not capacity <= MAX_CAPACITY:
        return (
            ("burst", "rate", "per"),
            f"an empty bucket would take burst * per/rate = {capacity!r} seconds to refill: "
            f"must be at most {MAX_CAPACITY:.0e} seconds",
        )
    spec = BucketSpec.of(rate, per, burst)
    if not (0.0 < spec.headroom <= spec.capacity and spec.interval > 0.0):  # pragma: no cover
        return (("burst", "rate", "per"), f"the bucket's shape does not compute: {spec!r}")
    return None


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """The shape of a bucket: ``burst`` tokens, one more every ``interval`` seconds.

    ``capacity`` (``burst * interval``) is how far ``tat`` may run ahead of now.
    ``headroom`` is how far it may run ahead when a one-token take is allowed,
    rounding slack included.
    """

    interval: float
    burst: int
    capacity: float
    headroom: float

    @classmethod
    def of(cls, rate: float, per: float, burst: int) -> BucketSpec:
        """``rate`` tokens every ``per`` seconds, at most ``burst`` at once."""
        interval = per / rate
        capacity = burst * interval
        return cls(interval, burst, capacity, capacity - interval + SLACK * interval)

    def headroom_for(self, cost: int) -> float:
        """How far ``tat`` may run ahead of ``now`` for a take of ``cost`` to be allowed."""
        if cost == 1:
            return self.headroom
        return self.capacity - cost * self.interval + SLACK * self.interval

    def start_time(self, tat: float, cost: int) -> float:
        """When a take of ``cost`` becomes allowed: the bucket then holds ``cost`` tokens.

        Computed without the slack, so that a caller told to come back then
        finds the tokens there (the slack only forgives rounding on the way).
        """
        return tat - (self.capacity - cost * self.interval)


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one (possibly composite) acquisition.

    * granted, ``wait == 0``: go now.
    * granted, ``wait > 0``: the tokens are reserved; sleep ``wait`` seconds, then go.
    * refused: nothing was taken; ``retry_after`` is the exact number of seconds
      after which the same acquisition would be granted without waiting, if
      nobody else takes tokens meanwhile.

    ``tokens`` is what is left, now, in the emptiest bucket involved.
    ``reserved`` holds, when tokens were reserved ahead (``wait > 0``), each
    bucket's state before and after, for :func:`refund`; it is empty otherwise.
    """

    granted: bool
    wait: float
    retry_after: float
    tokens: float
    reserved: tuple[tuple[float, float], ...] = ()


def take_now(tat: float, now: float, increment: float, headroom: float) -> float | None:
    """The hot path: the new ``tat`` if a take is allowed at ``now`` without waiting.

    ``increment`` is ``cost * interval`` and ``headroom`` is
    ``spec.headroom_for(cost)``. Returns ``None`` when refused. This is the same
    rule as :func:`take` with ``max_wait=0`` (a property test holds them equal),
    in the few operations the in-memory limiter can afford per call.
    """
    if tat - headroom > now:
        return None
    return (tat if tat > now else now) + increment


def exact_delay(start: float, now: float) -> float:
    """The smallest ``d >= 0`` with ``now + d >= start`` in floating point.

    ``start - now`` can round down by an ulp; a caller told to come back after
    ``d`` seconds must then find the bucket ready, not a hair short of it.
    """
    if start <= now:
        return 0.0
    delay = start - now
    while (reached := now + delay) < start:
        # The shortfall is a rounding step of ``now``: add it (at least one ulp).
        delay = max(delay + (start - reached), math.nextafter(delay, math.inf))
    return delay


def tokens(tat: float, now: float, spec: BucketSpec) -> float:
    """Tokens available at ``now``: in ``[0, burst]``, fractional while refilling."""
    if tat <= now:
        return float(spec.burst)
    left = (spec.capacity - (tat - now)) / spec.interval
    return left if left > 0.0 else 0.0


def is_full(tat: float, now: float) -> bool:
    """True when the bucket is full again, so a store may forget it."""
    return tat <= now


def take(
    tat: float, now: float, cost: int, spec: BucketSpec, max_wait: float = 0.0
) -> tuple[float, Decision]:
    """Take ``cost`` tokens at ``now``, waiting at most ``max_wait`` seconds.

    Returns the new state (unchanged when refused) and the decision. ``cost``
    must be between 1 and ``spec.burst`` (checked by the caller, once).
    """
    new_tats, decision = take_all((tat,), now, (cost,), (spec,), max_wait)
    return new_tats[0], decision


def take_all(
    tats: Sequence[float],
    now: float,
    costs: Sequence[int],
    specs: Sequence[BucketSpec],
    max_wait: float = 0.0,
) -> tuple[tuple[float, ...], Decision]:
    """Take ``costs[i]`` from bucket ``i`` for every ``i``, all at one time, or none.

    The buckets must be distinct. The acquisition starts when the slowest
    bucket allows it; if that is more than ``max_wait`` away, nothing is taken.
    """
    start = now
    for tat, cost, spec in zip(tats, costs, specs, strict=True):
        if tat - spec.headroom_for(cost) > now:  # the rule of take_now
            start = max(start, spec.start_time(tat, cost))
    delay = exact_delay(start, now)
    if delay > max_wait:
        left = min(tokens(tat, now, spec) for tat, spec in zip(tats, specs, strict=True))
        return tuple(tats), Decision(False, 0.0, delay, left)
    new_tats = tuple(
        max(tat, start) + cost * spec.interval
        for tat, cost, spec in zip(tats, costs, specs, strict=True)
    )
    left = min(tokens(tat, now, spec) for tat, spec in zip(new_tats, specs, strict=True))
    reserved = tuple(zip(tats, new_tats, strict=True)) if delay > 0 else ()
    return new_tats, Decision(True, delay, 0.0, left, reserved)


def refund(tat: float, before: float, after: float) -> float:
    """Give back a reservation whose holder gave up waiting (it was cancelled).

    ``before`` and ``after`` are the bucket's states around the reservation
    (:attr:`Decision.reserved`). Only if nobody has taken from the bucket since
    (``tat == after``, a compare-and-set on one number) does the bucket go back
    to ``before``: exactly as if the reservation had never been made. Otherwise
    later callers are queued behind it and the tokens stay spent, which errs on
    the safe side.
    """
    return before if tat == after else tat


def penalize(tat: float, now: float, seconds: float, spec: BucketSpec) -> float:
    """Pause the bucket: nothing is granted before ``now + seconds``.

    Meant for a server's ``Retry-After``. The bucket is drained so that at the
    end of the pause it holds one token, and refills at its rate from there: the
    first caller goes at once, the rest follow at the configured pace instead
    of stampeding. A pause never shortens an earlier, longer one.
    """
    paused = now + seconds + (spec.capacity - spec.interval)
    return paused if paused > tat else tat

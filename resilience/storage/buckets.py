"""Where a rate limiter keeps its token buckets, and the in-memory store.

The contract
------------
* **A bucket is one float.** A bucket is identified by the limiter's ``name``
  and a ``key`` (``None`` for the limiter's single, unkeyed bucket) and its
  whole state is one number, the time at which it will be full again (see
  :mod:`resilience._core.bucket`). A store keeps numbers, never pickled objects: a
  Redis string or hash field, a ``DOUBLE PRECISION`` column.
* **One call per acquisition.** :meth:`BucketStore.bucket_take` applies the pure
  rule of :func:`resilience._core.bucket.take_all` to every requested bucket at
  once, atomically: a composite acquisition over several buckets (a global
  limit plus a per-recipient one) consumes from all of them or from none. One
  acquisition is one round trip: one Lua script in Redis, one
  ``INSERT … ON CONFLICT DO UPDATE … RETURNING`` in PostgreSQL, one
  ``BEGIN IMMEDIATE`` transaction in SQLite.
* **The store's clock.** ``now`` is read by the store, inside the atomic step:
  the memory store reads its injected :class:`~resilience.Clock`, a server
  uses its own time (Redis ``TIME``, PostgreSQL ``clock_timestamp()``), so
  processes whose clocks disagree still share one consistent bucket. Answers
  are relative (seconds to wait, seconds until retry), never absolute times.
* **Reservation.** With ``max_wait > 0`` a bucket that is short of tokens may
  grant them ahead of time: the decision says how long the caller must sleep
  before it goes. The store never sleeps and holds nothing while the caller
  does. A caller that gives up waiting hands the reservation back with
  :meth:`BucketStore.bucket_refund`, a compare-and-set on the states the
  decision carried (it takes effect only if nobody reserved since).
* **Forgetting is free.** A bucket whose time is past is full; a store may
  drop it at any moment (a Redis key expires ``capacity`` seconds after its
  last write) and answers stay the same.
* **Same name, same limit.** Limiters that share a store and a name share their
  buckets, across threads, tasks and (with a network store) processes; they
  should be configured alike, since each request carries its own bucket shape.
* **Sync and async.** Every method has an ``a``-prefixed coroutine twin. Method
  names start with ``bucket_`` so that one object can also implement other
  policies' store protocols (:class:`~resilience.storage.MemoryStore` does, by
  composition).
* **Capabilities.** What only some stores can do is an optional protocol of its
  own, which a limiter checks once, when it is built (never by concrete class):
  :class:`FastTake` is the in-process fast path for one token.
* **Keys.** A key is a plain ``str`` or ``None``; :func:`plain_key` turns a
  ``str`` subclass into a plain ``str`` and refuses anything else, before it
  reaches a store.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from .._core.bucket import (
    FULL,
    BucketSpec,
    Decision,
    is_full,
    penalize,
    refund,
    take_all,
    take_now,
    tokens,
)
from ..clock import SYSTEM_CLOCK, Clock

__all__ = ["BucketRequest", "BucketStore", "FastTake", "FastTaker", "MemoryBucketStore"]


def plain_key(key: object) -> str:
    """A bucket key that is not a plain ``str`` or ``None``: a ``str`` subclass
    becomes a plain ``str``; anything else is refused before it reaches a store."""
    if isinstance(key, str):
        return str.__str__(key)
    raise TypeError(f"key: must be a str or None, got {type(key).__name__}")


class BucketRequest(NamedTuple):
    """Take ``cost`` tokens from bucket ``(name, key)``, whose shape is ``spec``."""

    name: str
    key: str | None
    cost: int
    spec: BucketSpec


@runtime_checkable
class BucketStore(Protocol):
    """The narrow interface between a rate limiter and its buckets."""

    def bucket_take(self, requests: Sequence[BucketRequest], max_wait: float = 0.0) -> Decision:
        """Take from every requested bucket as of one moment, or from none.

        The requests name distinct buckets and each ``cost`` is between 1 and
        its ``spec.burst``. Granted with ``wait > 0`` means the tokens are
        reserved and the caller must sleep ``wait`` seconds before going.
        Refused means nothing changed and ``retry_after`` is exact.
        """
        ...

    def bucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        """Hand back a reservation (a granted take with ``wait > 0``) never used.

        ``reserved`` is the decision's (each bucket's state before and after the
        take); a bucket goes back to its state before only if it is still in its
        state after (compare-and-set), else it is left alone.
        """
        ...

    def bucket_penalize(self, name: str, key: str | None, spec: BucketSpec, seconds: float) -> None:
        """Grant nothing from bucket ``(name, key)`` for the next ``seconds``."""
        ...

    def bucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        """Tokens the bucket holds now (fractional, ``0 <= tokens <= burst``)."""
        ...

    async def abucket_take(
        self, requests: Sequence[BucketRequest], max_wait: float = 0.0
    ) -> Decision: ...

    async def abucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None: ...

    async def abucket_penalize(
        self, name: str, key: str | None, spec: BucketSpec, seconds: float
    ) -> None: ...

    async def abucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float: ...


class FastTaker(NamedTuple):
    """What :meth:`FastTake.bucket_fast_take` returns."""

    take: Callable[[str | None], bool]
    """``take(key) -> granted``: one token from bucket ``(name, key)`` now, never
    waiting; the same answer as a one-request ``bucket_take`` with ``max_wait=0``."""
    clock: Clock
    """The clock the store reads: the limiter sleeps on it."""


@runtime_checkable
class FastTake(Protocol):
    """Optional capability of an in-process store: take one token with no round trip.

    A limiter whose store has it (checked once, when the limiter is built) calls
    ``take`` inline on its hot path and sleeps on the store's clock. Only a
    store in this process's memory can offer it, and such a store has no
    outages: the limiter calls it directly, with no failure policy in between.
    """

    def bucket_fast_take(self, name: str, spec: BucketSpec) -> FastTaker:
        """The fast path for limiter ``name``'s buckets, all of shape ``spec``."""
        ...


#: Tables smaller than this are never swept: the sweep is pure overhead there.
SWEEP_FLOOR = 1024
#: Keys examined for idleness per new key inserted, once past the floor.
SWEEP_STEP = 2


class BucketTable:
    """The buckets of one limiter name: ``tats[key]`` is the bucket's state.

    Idle eviction is incremental. Each insertion of a new key, once the table
    holds :data:`SWEEP_FLOOR` keys, looks at :data:`SWEEP_STEP` keys of a
    snapshot of the table and drops those whose bucket is full again. Every key
    is thus examined within ``len / SWEEP_STEP`` insertions, so full buckets
    never outnumber live ones by much: memory stays proportional to the keys
    used in the last refill period, at O(1) amortized cost per insertion and
    with no pause longer than copying the key list.
    """

    __slots__ = ("_sweep_keys", "_sweep_position", "tats")

    def __init__(self) -> None:
        self.tats: dict[str | None, float] = {}
        self._sweep_keys: list[str | None] = []
        self._sweep_position = 0

    def inserted(self, now: float) -> None:
        """Called (under the store's mutex) after a new key was added."""
        tats = self.tats
        if len(tats) < SWEEP_FLOOR:
            return
        position = self._sweep_position
        keys = self._sweep_keys
        if position >= len(keys):
            keys = self._sweep_keys = list(tats)
            position = 0
        for key in keys[position : position + SWEEP_STEP]:
            tat = tats.get(key)
            if tat is not None and is_full(tat, now):
                del tats[key]
        self._sweep_position = position + SWEEP_STEP

    def evict_idle(self, now: float) -> int:
        """Drop every full bucket at once; returns how many were dropped."""
        idle = [key for key, tat in self.tats.items() if is_full(tat, now)]
        for key in idle:
            del self.tats[key]
        self._sweep_keys = []
        self._sweep_position = 0
        return len(idle)


class MemoryBucketStore:
    """Token buckets in this process's memory: the default store of every limiter.

    Each limiter gets a private one unless given a store; pass one instance to
    several limiters to combine them in one all-or-nothing acquisition, or to
    make limiters of the same name share buckets. Time is read from ``clock``
    (the system's monotonic clock by default), and limiters using the store
    sleep on that same clock.

    Safe across threads and asyncio tasks: a mutex is held for a few dict
    operations, never while anyone sleeps. The mutex is a one-slot
    ``queue.SimpleQueue``, whose uncontended take-and-put costs a fraction of a
    ``threading.Lock`` round trip on CPython 3.11 while still blocking properly
    when contended. Offers the :class:`FastTake` capability.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = SYSTEM_CLOCK if clock is None else clock
        self._tables: dict[str, BucketTable] = {}
        mutex: queue.SimpleQueue[None] = queue.SimpleQueue()
        mutex.put(None)
        self._lock = mutex.get
        self._unlock = mutex.put

    @property
    def clock(self) -> Clock:
        """The clock the buckets read (limiters using this store sleep on it)."""
        return self._clock

    def _table(self, name: str) -> BucketTable:
        table = self._tables.get(name)
        if table is None:
            table = self._tables.setdefault(name, BucketTable())
        return table

    def bucket_fast_take(self, name: str, spec: BucketSpec) -> FastTaker:
        """The in-memory fast path for one limiter and a cost of one (:class:`FastTake`).

        ``take`` is a closure over the table, the mutex and the clock: one mutex
        round trip, one clock read, one dict lookup and the core's
        :func:`take_now`, with no allocation.
        """
        table = self._table(name)
        tats, inserted = table.tats, table.inserted
        lock, unlock, clock_now = self._lock, self._unlock, self._clock.now
        increment, headroom = spec.interval, spec.headroom

        def take(key: str | None) -> bool:
            lock()
            try:
                now = clock_now()
                tat = tats.get(key, FULL)
                new = take_now(tat, now, increment, headroom)
                if new is None:
                    return False
                tats[key] = new
                if tat == FULL:
                    inserted(now)
                return True
            finally:
                unlock(None)

        return FastTaker(take, self._clock)

    # -- the protocol --------------------------------------------------------------

    def bucket_take(self, requests: Sequence[BucketRequest], max_wait: float = 0.0) -> Decision:
        tables = [self._table(request.name) for request in requests]
        costs = [request.cost for request in requests]
        specs = [request.spec for request in requests]
        self._lock()
        try:
            now = self._clock.now()
            old = [
                table.tats.get(request.key, FULL)
                for table, request in zip(tables, requests, strict=True)
            ]
            new, decision = take_all(old, now, costs, specs, max_wait)
            if decision.granted:
                for table, request, tat, before in zip(tables, requests, new, old, strict=True):
                    table.tats[request.key] = tat
                    if before == FULL:
                        table.inserted(now)
            return decision
        finally:
            self._unlock(None)

    def bucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        tables = [self._table(request.name) for request in requests]
        self._lock()
        try:
            for table, request, (before, after) in zip(tables, requests, reserved, strict=True):
                tat = table.tats.get(request.key)
                if tat is not None:
                    table.tats[request.key] = refund(tat, before, after)
        finally:
            self._unlock(None)

    def bucket_penalize(self, name: str, key: str | None, spec: BucketSpec, seconds: float) -> None:
        table = self._table(name)
        self._lock()
        try:
            now = self._clock.now()
            before = table.tats.get(key, FULL)
            table.tats[key] = penalize(before, now, seconds, spec)
            if before == FULL:
                table.inserted(now)
        finally:
            self._unlock(None)

    def bucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        table = self._table(name)
        return tokens(table.tats.get(key, FULL), self._clock.now(), spec)

    async def abucket_take(
        self, requests: Sequence[BucketRequest], max_wait: float = 0.0
    ) -> Decision:
        return self.bucket_take(requests, max_wait)

    async def abucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        self.bucket_refund(requests, reserved)

    async def abucket_penalize(
        self, name: str, key: str | None, spec: BucketSpec, seconds: float
    ) -> None:
        self.bucket_penalize(name, key, spec, seconds)

    async def abucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        return self.bucket_tokens(name, key, spec)

    # -- memory-only helpers ---------------------------------------------------------

    def bucket_count(self, name: str | None = None) -> int:
        """Buckets held, for one limiter name or for all (idle ones included)."""
        if name is not None:
            table = self._tables.get(name)
            return 0 if table is None else len(table.tats)
        return sum(len(table.tats) for table in self._tables.values())

    def evict_idle_buckets(self) -> int:
        """Drop every bucket that is full again now; returns how many were dropped.

        Never needed for bounded memory (eviction is incremental); useful before
        measuring, or after a burst of one-off keys.
        """
        self._lock()
        try:
            now = self._clock.now()
            return sum(table.evict_idle(now) for table in self._tables.values())
        finally:
            self._unlock(None)

    def __repr__(self) -> str:
        return f"MemoryBucketStore(buckets={self.bucket_count()}, clock={self._clock!r})"

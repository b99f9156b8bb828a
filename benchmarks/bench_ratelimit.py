"""Rate limiter overhead per acquisition, and memory per key.

Side by side in one run, every limiter in process memory with a limit too high
to ever refuse, so only the cost of deciding is measured: resilience's
``try_acquire`` (and ``acquire``, the decorator's path), limits' fixed window
and moving window, pyrate-limiter and aiolimiter (async only). Then the memory
one idle key costs, and what a million keys cost, with and without time passing
(idle buckets are evicted as new keys arrive).
"""

from __future__ import annotations

import gc
import itertools
import time
import tracemalloc
import warnings

import limits
import limits.storage
import limits.strategies
import pyrate_limiter
from _harness import Case, compare
from aiolimiter import AsyncLimiter

import resilience.ratelimit as rl
from resilience.storage.buckets import MemoryBucketStore
from resilience.testing import FakeClock

HUGE = 10**12  # for the anchors: a limit no benchmark loop can exhaust
# Ours: the fastest rate there is (a million a second) behind a bucket no loop empties.
FAST, DEEP = 10**6, 10**9


def acquire_cases() -> list[Case]:
    ours = rl.RateLimiter("bench", rate=FAST, per=1.0, burst=DEEP)
    ours_keyed = rl.RateLimiter("bench-keyed", rate=FAST, per=1.0, burst=DEEP)
    ours_churn = rl.RateLimiter("bench-churn", rate=FAST, per=1.0, burst=DEEP)
    new_keys = itertools.count()

    storage = limits.storage.MemoryStorage()
    item = limits.RateLimitItemPerSecond(HUGE)
    fixed = limits.strategies.FixedWindowRateLimiter(storage)
    moving = limits.strategies.MovingWindowRateLimiter(limits.storage.MemoryStorage())
    # The moving window keeps one entry per hit: give it a small, never-exceeded limit
    # (its cost grows with the entries kept, so a huge limit would measure the window).
    moving_item = limits.RateLimitItemPerSecond(1_000_000)

    pyrate = pyrate_limiter.Limiter(pyrate_limiter.Rate(HUGE, pyrate_limiter.Duration.SECOND))

    return [
        Case("resilience try_acquire()", ours.try_acquire),
        Case("resilience try_acquire(key)", lambda: ours_keyed.try_acquire("user-42")),
        # A new key every call: the insertion path, with incremental idle eviction.
        Case(
            "resilience try_acquire(new key)",
            lambda: ours_churn.try_acquire(str(next(new_keys))),
        ),
        Case("resilience acquire()", ours.acquire),
        Case("limits fixed window", lambda: fixed.hit(item, "bench")),
        Case("limits moving window", lambda: moving.hit(moving_item, "bench")),
        Case("pyrate-limiter", lambda: pyrate.try_acquire("bench", blocking=False)),
    ]


def async_cases() -> list[Case]:
    ours = rl.RateLimiter("bench-async", rate=FAST, per=1.0, burst=DEEP)
    aio = AsyncLimiter(HUGE, 1.0)

    async def aio_acquire() -> None:
        await aio.acquire()

    async def nothing() -> None:
        return None

    return [
        Case("empty coroutine", afn=nothing),
        Case("resilience aacquire()", afn=ours.aacquire),
        Case("aiolimiter acquire()", afn=aio_acquire),
    ]


def bytes_per_key(count: int, *, advance: float = 0.0) -> tuple[float, int]:
    """Bytes of limiter state per key after ``count`` distinct keys took a token.

    Key strings are made beforehand and not counted (they are the caller's).
    With ``advance``, time moves that much between keys, so older buckets are
    full again and evicted as new keys come. Returns (bytes per key, buckets kept).
    """
    clock = FakeClock()
    store = MemoryBucketStore(clock)
    limiter = rl.RateLimiter("memory", rate=10, per=1.0, store=store)
    keys = [f"user-{i}" for i in range(count)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for key in keys:
        limiter.try_acquire(key)
        if advance:
            clock.advance(advance)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / count, store.bucket_count("memory")


def main() -> None:
    warnings.simplefilter("ignore")
    compare(
        "rate limiter acquire, in memory, sync (never refused)",
        acquire_cases(),
        baseline="limits fixed window",
        number=100_000,
        repeat=5,
    )
    compare(
        "rate limiter acquire, in memory, async (never refused)",
        async_cases(),
        baseline="aiolimiter acquire()",
        number=50_000,
        repeat=5,
    )

    start = time.perf_counter()
    million, kept = bytes_per_key(1_000_000)
    # One new key every 1 ms while a bucket refills in 1 s: about 1,000 are live at a time.
    churn, churn_kept = bytes_per_key(300_000, advance=0.001)
    print(f"\n## rate limiter memory (tracemalloc, {time.perf_counter() - start:.1f} s)\n")
    print("| case | bytes/key | buckets kept | total MiB |")
    print("|---|---:|---:|---:|")
    print(
        f"| 1,000,000 keys, all refilling | {million:.0f} | {kept:,} | {million * 1e6 / 2**20:.1f} |"
    )
    print(
        f"| 300,000 keys over 300 s (full buckets evicted) | {churn:.2f} | "
        f"{churn_kept:,} | {churn * 3e5 / 2**20:.2f} |"
    )


if __name__ == "__main__":
    main()

"""Redis-backed rate limiting and circuit breaking: cost per call, as ratios.

Against the test Redis (``RESILIENCE_TEST_REDIS_URL``, default db 15 on
127.0.0.1:6379); prints one line and returns if it is down. Side by side in one
run:

* a rate-limit acquisition through :class:`RedisStore` (one ``EVALSHA``) as a
  ratio to a plain redis-py ``PING`` (the cost of one round trip: target
  <= 1.2), next to ``limits``' Redis storage (fixed and moving window);
* local token leasing: amortized cost per acquisition, round trips per
  acquisition, and the overshoot measured with 4 leasing stores (stand-ins for
  4 processes) hammering one bucket, against its bound;
* a circuit breaker's closed-state success path with a Redis store, next to
  pybreaker with ``CircuitRedisStorage``.

Every limit is too high to refuse, so only the cost of deciding is measured.
Runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
import uuid
import warnings

import limits
import limits.storage
import limits.strategies
import pybreaker
import redis
from _harness import Case, compare, print_table

from resilience._core.bucket import BucketSpec
from resilience.breaker import CircuitBreaker
from resilience.ratelimit import RateLimiter
from resilience.storage.buckets import BucketRequest
from resilience.storage.leasing import LeasingBucketStore
from resilience.storage.redis import RedisStore

URL = os.environ.get("RESILIENCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
HUGE = 10**12  # for the anchors: a limit no benchmark loop can exhaust
# Ours: the fastest rate there is (a million a second) behind a bucket no loop empties.
FAST, DEEP = 10**6, 10**9
NUMBER = 2_000
REPEAT = 5


def target() -> None:
    return None


def interleaved(cases: list[Case], rounds: int = NUMBER) -> dict[str, float]:
    """Median ns per call, timing each call on its own, the cases taking turns.

    Round trips on a busy machine vary a lot from one moment to the next; taking
    turns call by call exposes every case to the same moments, and the median
    ignores the scheduler's hiccups. Only for calls of several microseconds.
    """
    samples: dict[str, list[int]] = {case.label: [] for case in cases}
    clock = time.perf_counter_ns
    calls = [(case.label, case.fn) for case in cases if case.fn is not None]
    for _, fn in calls:  # warm up: connections, scripts
        fn()
    for _ in range(rounds):
        for label, fn in calls:
            start = clock()
            fn()
            samples[label].append(clock() - start)
    return {label: float(sorted(xs)[len(xs) // 2]) for label, xs in samples.items()}


def cleanup(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


def limiter_cases(store: RedisStore, client: redis.Redis) -> list[Case]:
    ours = RateLimiter("bench", rate=FAST, per=1.0, burst=DEEP, store=store)
    keyed = RateLimiter("bench-keyed", rate=FAST, per=1.0, burst=DEEP, store=store)
    storage = limits.storage.RedisStorage(URL)
    fixed = limits.strategies.FixedWindowRateLimiter(storage)
    moving = limits.strategies.MovingWindowRateLimiter(storage)
    item = limits.RateLimitItemPerSecond(10**9)
    moving_item = limits.RateLimitItemPerSecond(1_000_000)
    tag = uuid.uuid4().hex
    return [
        Case("redis-py PING", client.ping),
        Case("resilience try_acquire()", ours.try_acquire),
        Case("resilience try_acquire(key)", lambda: keyed.try_acquire("user-42")),
        Case("resilience acquire()", ours.acquire),
        Case("limits fixed window", lambda: fixed.hit(item, f"bench-{tag}")),
        Case("limits moving window", lambda: moving.hit(moving_item, f"bench-{tag}")),
    ]


def leasing_cases(store: RedisStore) -> tuple[list[Case], list[LeasingBucketStore]]:
    stores = [LeasingBucketStore(store, lease=lease) for lease in (10, 100)]
    cases = [
        Case(
            f"resilience try_acquire(), lease={leasing.lease}",
            RateLimiter(
                f"bench-lease{leasing.lease}", rate=FAST, burst=DEEP, store=leasing
            ).try_acquire,
        )
        for leasing in stores
    ]
    return cases, stores


async def async_table(url: str, prefix: str) -> None:
    store = RedisStore(url, prefix=prefix)
    client = redis.asyncio.Redis.from_url(url)
    limiter = RateLimiter("bench-async", rate=FAST, per=1.0, burst=DEEP, store=store)
    leased = RateLimiter(
        "bench-async-lease",
        rate=FAST,
        per=1.0,
        burst=DEEP,
        store=LeasingBucketStore(store, lease=10),
    )
    cases = {
        "redis.asyncio PING": client.ping,
        "resilience aacquire()": limiter.aacquire,
        "resilience aacquire(), lease=10": leased.aacquire,
    }
    samples: dict[str, list[int]] = {label: [] for label in cases}
    for fn in cases.values():  # warm up: connections, scripts
        await fn()
    clock = time.perf_counter_ns
    for _ in range(NUMBER):
        for label, fn in cases.items():
            start = clock()
            await fn()
            samples[label].append(clock() - start)
    medians = {label: float(sorted(xs)[len(xs) // 2]) for label, xs in samples.items()}
    print_table(
        "Redis rate limit, asyncio: median time per awaited acquisition (x one PING)",
        medians,
        baseline="redis.asyncio PING",
    )
    await client.aclose()
    await store.aclose()


def leasing_overshoot(store: RedisStore, lease: int, seconds: float = 1.0) -> tuple[int, float]:
    """4 leasing stores (4 "processes") take from one bucket at random for ``seconds``.

    Returns (acquisitions, the largest excess over ``burst + rate * window`` seen
    in any window of time). The bound is ``4 * (lease - 1)``.
    """
    rate, burst = 2000.0, 20
    spec = BucketSpec.of(rate, 1.0, burst)
    name = f"overshoot-{lease}-{uuid.uuid4().hex}"
    stores = [LeasingBucketStore(store, lease=lease) for _ in range(4)]
    request = (BucketRequest(name, None, 1, spec),)
    rng = random.Random(7)
    uses: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        # One store at a time takes a run of acquisitions, as a busy process would.
        leasing = stores[rng.randrange(4)]
        for _ in range(rng.randrange(1, 2 * lease + 1)):
            if leasing.bucket_take(request).granted:
                uses.append(time.monotonic())
    # max over windows [t_a, t_b] of (uses in it) - rate * (t_b - t_a) - burst, in O(n).
    worst, best_start = -math.inf, -math.inf
    for j, t in enumerate(uses):
        best_start = max(best_start, rate * t - j)  # a window starting at use j
        worst = max(worst, (j + 1) + best_start - rate * t - burst)
    return len(uses), worst


def breaker_cases(store: RedisStore, client: redis.Redis, prefix: str) -> list[Case]:
    ours = CircuitBreaker("bench", failure_threshold=5, store=store)(target)
    ours_ratio = CircuitBreaker(
        "bench-ratio", failure_ratio=0.5, minimum_calls=20, window=30.0, store=store
    )(target)
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=prefix)
    pyb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30, state_storage=storage)(target)
    return [
        Case("bare call", target),
        Case("resilience, Redis store", ours),
        Case("resilience ratio mode, Redis store", ours_ratio),
        Case("pybreaker, CircuitRedisStorage", pyb),
    ]


def main() -> None:
    warnings.simplefilter("ignore")
    client = redis.Redis.from_url(URL)
    try:
        client.ping()
    except redis.exceptions.RedisError as error:
        print(f"\n## Redis benchmarks skipped: no Redis at {URL} ({error})")
        return
    prefix = f"bench-{uuid.uuid4().hex}"
    store = RedisStore(URL, prefix=prefix)
    try:
        cases = limiter_cases(store, client)
        lease_cases, leasing_stores = leasing_cases(store)
        medians = interleaved(cases + lease_cases)
        print_table(
            "Redis rate limit: median time per acquisition (x one redis-py PING round trip)",
            medians,
            baseline="redis-py PING",
        )
        for leasing in leasing_stores:
            calls = leasing.round_trips + leasing.local_grants
            print(
                f"lease={leasing.lease}: {leasing.round_trips / calls:.3f} round trips "
                f"per acquisition ({calls} acquisitions)"
            )
        asyncio.run(async_table(URL, prefix))
        print("\n## Leasing overshoot: 4 leasing stores on one bucket (2000/s, burst 20), 1 s\n")
        print("| lease | acquisitions | worst excess over burst + rate*t | bound 4*(lease-1) |")
        print("|------:|-------------:|---------------------------------:|------------------:|")
        for lease in (1, 10, 50):
            count, worst = leasing_overshoot(store, lease)
            print(f"| {lease:5d} | {count:12d} | {max(0.0, worst):32.2f} | {4 * (lease - 1):17d} |")
        print(
            "\n(Uses are stamped with this process's clock after each reply, the bucket runs"
            "\non Redis's: an excess below one token, even at lease=1, is that skew.)"
        )
        compare(
            "Breaker, closed state, success path with a Redis store (x pybreaker)",
            breaker_cases(store, client, prefix),
            baseline="pybreaker, CircuitRedisStorage",
            number=NUMBER,
            repeat=REPEAT,
        )
    finally:
        store.close()
        cleanup(client, prefix)
        cleanup(client, "LIMITS:")
        client.close()


if __name__ == "__main__":
    main()

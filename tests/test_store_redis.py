"""RedisStore against the real test Redis: protocol, scripts, keys, policies on top.

The differential tests hold Redis to the in-memory reference exactly, with no
test-only hook in the scripts: every bucket script answers with the server time
it used (and the states it read), so the memory store is run at that very same
instant (a settable clock) and both must answer identically, down to the last
bit of every float. Time is real (Redis's own), so the sequences see buckets
refill; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import resilience as rs
from resilience._core.bucket import FULL, BucketSpec, Decision
from resilience.breaker import CircuitBreaker, CircuitState
from resilience.ratelimit import RateLimiter
from resilience.storage.breakers import (
    BreakerStore,
    CircuitSnapshot,
    MemoryBreakerStore,
    Transition,
)
from resilience.storage.buckets import BucketRequest, BucketStore, MemoryBucketStore
from resilience.storage.redis import RedisStore

from .backends import STORE_TIMEOUT, require_redis

OPEN, HALF_OPEN, CLOSED = CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED


def drop_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def url() -> str:
    return require_redis()


@pytest.fixture
def store(url: str) -> Iterator[RedisStore]:
    prefix = f"test-{uuid.uuid4().hex}"
    made = RedisStore.from_url(url, prefix=prefix, timeout=STORE_TIMEOUT)
    try:
        yield made
    finally:
        made.close()
        drop_prefix(url, prefix)


class SettableClock:
    """A clock the differential tests set to the Redis server's time before each step."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        raise AssertionError("the reference store never sleeps")

    async def asleep(self, seconds: float) -> None:
        raise AssertionError("the reference store never sleeps")


# -- the protocols, by example ---------------------------------------------------------


def test_implements_both_protocols(store: RedisStore) -> None:
    assert isinstance(store, BucketStore)
    assert isinstance(store, BreakerStore)
    assert store.name == "redis://127.0.0.1:6379/15"
    assert "RedisStore(" in repr(store)
    assert RedisStore(url=require_redis()).prefix == "resilience"


def test_bad_options_name_the_field() -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        RedisStore("redis://127.0.0.1:1/0", prefix="a{b}", timeout=-1)
    assert set(caught.value.fields) == {"prefix", "timeout"}
    with pytest.raises(ValueError, match="url"):
        RedisStore()
    with pytest.raises(ValueError, match="url"):
        RedisStore("http://example.com")


def test_names_with_braces_are_refused(store: RedisStore) -> None:
    spec = BucketSpec.of(1, 1.0, 1)
    with pytest.raises(rs.ConfigurationError, match="braces"):
        store.bucket_take([BucketRequest("a{b", None, 1, spec)])


async def test_take_refund_penalize_tokens(store: RedisStore) -> None:
    # A slow bucket (1 token per 100 s), so real time passing changes nothing visible.
    spec = BucketSpec.of(rate=1, per=100.0, burst=2)
    both = [BucketRequest("a", None, 2, spec), BucketRequest("b", "k", 1, spec)]
    assert store.bucket_take(both).granted
    refused = store.bucket_take(both)
    assert not refused.granted and 199.0 < refused.retry_after <= 200.0
    assert 0.999 < store.bucket_tokens("b", "k", spec) < 1.01  # untouched by the refusal
    reserved = await store.abucket_take(both, max_wait=500.0)
    assert reserved.granted and 199.0 < reserved.wait <= 200.0 and len(reserved.reserved) == 2
    assert store.bucket_tokens("b", "k", spec) < 0.001
    store.bucket_refund(both, reserved.reserved)
    assert 0.999 < store.bucket_tokens("b", "k", spec) < 1.01  # back to where it was
    store.bucket_take(both[1:])
    await store.abucket_refund(both, reserved.reserved)  # taken since: no refund
    assert await store.abucket_tokens("b", "k", spec) < 0.001
    await store.abucket_penalize("a", None, spec, 10.0)
    assert await store.abucket_tokens("a", None, spec) < 0.001
    store.bucket_penalize("fresh", None, spec, 0.0)
    assert 0.999 < store.bucket_tokens("fresh", None, spec) < 1.01  # one token left after a pause
    assert store.bucket_tokens("never", "used", spec) == 2.0


def test_keys_share_a_hash_tag_and_expire(store: RedisStore, url: str) -> None:
    spec = BucketSpec.of(rate=10, per=1.0, burst=5)  # full again 0.5 s after a take of 5
    store.bucket_take([BucketRequest("emails", None, 5, spec)])
    store.bucket_take([BucketRequest("emails", "bob@example.com", 1, spec)])
    store.breaker_transition(
        "emails",
        Transition(
            expected_version=0, state=OPEN, reason="x", trips=1, break_duration=1.0, now=0.0
        ),
    )
    client = redis.Redis.from_url(url)
    try:
        keys = sorted(k.decode() for k in client.scan_iter(match=f"{store.prefix}:*"))
        assert keys == [
            f"{store.prefix}:{{emails}}:b",
            f"{store.prefix}:{{emails}}:c",
            f"{store.prefix}:{{emails}}:k:bob@example.com",
        ]
        bucket_ttl = client.pttl(f"{store.prefix}:{{emails}}:b")
        # Set to the refill time (0.5 s) plus the 1 s margin, counting down in real time.
        assert 0 < bucket_ttl <= 1500
        assert client.pttl(f"{store.prefix}:{{emails}}:c") == -1  # circuits never expire
        assert float(client.get(f"{store.prefix}:{{emails}}:b")) > 1e9  # a plain number
    finally:
        client.close()


def test_a_chosen_hash_tag_puts_composites_in_one_slot(url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    store = RedisStore(
        url,
        prefix=prefix,
        timeout=STORE_TIMEOUT,
        hash_tag={"global": "mail", "per-recipient": "mail"},
    )
    try:
        assert store.bucket_key("global", None) == f"{prefix}:{{mail}}:n6:global:b"
        assert store.bucket_key("per-recipient", "x") == f"{prefix}:{{mail}}:n13:per-recipient:k:x"
        assert store.bucket_key("other", None) == f"{prefix}:{{other}}:b"
        # On a cluster, a composite over different tags is refused before any I/O.
        store._cluster = True
        spec = BucketSpec.of(1, 1.0, 1)
        same = [
            BucketRequest("global", None, 1, spec),
            BucketRequest("per-recipient", "x", 1, spec),
        ]
        assert store.bucket_take(same).granted
        with pytest.raises(rs.ConfigurationError, match="hash tag"):
            store.bucket_take([*same[:1], BucketRequest("other", None, 1, spec)])
    finally:
        store.close()
        drop_prefix(url, prefix)


async def test_circuits(store: RedisStore) -> None:
    assert store.breaker_load("c", 0.0) == CircuitSnapshot(CLOSED, 0, 0, "initial state", 0.0)
    assert store.breaker_release_probe("c", 0, True) == 1  # as the memory store counts it
    won, snapshot = store.breaker_transition(
        "c",
        Transition(
            expected_version=0, state=OPEN, reason="tripped", trips=1, break_duration=10.0, now=0.0
        ),
    )
    assert won and snapshot == CircuitSnapshot(OPEN, 1, 1, "tripped", 10.0)
    lost, current = await store.abreaker_transition(
        "c",
        Transition(
            expected_version=0, state=OPEN, reason="me too", trips=1, break_duration=10.0, now=0.0
        ),
    )
    assert not lost and current.version == 1 and current.reason == "tripped"
    assert 9.0 < current.break_remaining <= 10.0
    assert not store.breaker_acquire_probe("c", 1, 5, None, 0.0)  # not half-open
    store.breaker_transition(
        "c",
        Transition(
            expected_version=1,
            state=HALF_OPEN,
            reason="probing",
            trips=1,
            break_duration=0.0,
            now=0.0,
        ),
    )
    assert [store.breaker_acquire_probe("c", 2, 2, None, 0.0) for _ in range(3)] == [
        True,
        True,
        False,
    ]
    assert not await store.abreaker_acquire_probe("c", 1, 5, None, 0.0)  # an old version
    assert store.breaker_release_probe("c", 2, True) == 1
    assert await store.abreaker_acquire_probe("c", 2, 2, None, 0.0)  # a permit came back
    assert await store.abreaker_release_probe("c", 2, None) == 1
    assert store.breaker_release_probe("c", 1, True) == -1  # moved on
    won, snapshot = store.breaker_transition(
        "c",
        Transition(
            expected_version=2,
            state=OPEN,
            reason="forever",
            trips=2,
            break_duration=math.inf,
            now=0.0,
        ),
    )
    assert won and snapshot.break_remaining == math.inf
    assert (await store.abreaker_load("c", 0.0)).state is OPEN
    assert store.breaker_watch("c", lambda s: None) is None  # polling unless pubsub=True


def test_probe_permits_lapse_after_their_lease(url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    store = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT, probe_lease=0.05)
    try:
        store.breaker_transition(
            "c",
            Transition(
                expected_version=0,
                state=HALF_OPEN,
                reason="probing",
                trips=1,
                break_duration=0.0,
                now=0.0,
            ),
        )
        assert store.breaker_acquire_probe("c", 1, 1, None, 0.0)
        assert not store.breaker_acquire_probe("c", 1, 1, None, 0.0)
        time.sleep(0.1)  # the holder "died": its permit lapses
        assert store.breaker_acquire_probe("c", 1, 1, None, 0.0)
    finally:
        store.close()
        drop_prefix(url, prefix)


# -- policies on a Redis store ---------------------------------------------------------


async def test_rate_limiter_on_redis(store: RedisStore) -> None:
    limiter = RateLimiter("api", rate=1, per=100.0, burst=3, store=store)
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
    with pytest.raises(rs.RateLimitExceeded) as caught:
        await limiter.aacquire(timeout=1.0)
    assert 99.0 < (caught.value.retry_after or 0) <= 100.0
    other = RateLimiter("api", rate=1, per=100.0, burst=3, store=store)  # shares the bucket
    assert not other.try_acquire()
    assert other.try_acquire("someone-else", cost=3)
    per_user = RateLimiter("per-user", rate=1, per=100.0, burst=1, store=store)
    both = RateLimiter.all(
        RateLimiter("global", rate=10, per=1.0, store=store), per_user.limit("u")
    )
    assert both.try_acquire()
    assert not both.try_acquire()  # per-user is empty: global untouched
    assert store.bucket_tokens("global", None, BucketSpec.of(10, 1.0, 10)) > 8.9


async def test_rate_limiter_waits_on_a_fast_bucket(store: RedisStore) -> None:
    limiter = RateLimiter("fast", rate=1000, per=1.0, burst=1, store=store)
    for _ in range(5):
        limiter.acquire(timeout=1.0)
        await limiter.aacquire(timeout=1.0)
    assert limiter.statistics.acquired == 10


async def test_circuit_breaker_on_redis(store: RedisStore) -> None:
    one = CircuitBreaker("svc", failure_threshold=2, break_duration=30.0, store=store)
    two = CircuitBreaker("svc", failure_threshold=2, break_duration=30.0, store=store)

    def boom() -> None:
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            one.call(boom)
    assert one.state is OPEN
    await asyncio.sleep(
        store.breaker_staleness + 0.05
    )  # let the other breaker's cached view go stale
    with pytest.raises(rs.CircuitOpenError):
        two.call(lambda: None)
    assert two.state is OPEN
    await two.areset()
    assert (await store.abreaker_load("svc", 0.0)).state is CLOSED


def test_pubsub_pushes_transitions(url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    store = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT, pubsub=True)
    seen: list[CircuitSnapshot] = []
    try:
        unwatch = store.breaker_watch("svc", seen.append)
        assert unwatch is not None
        deadline = time.monotonic() + 5.0
        # The subscription starts in the background; it resyncs (delivers the
        # current snapshot) once subscribed.
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        store.breaker_transition(
            "svc",
            Transition(
                expected_version=0,
                state=OPEN,
                reason="tripped",
                trips=1,
                break_duration=5.0,
                now=0.0,
            ),
        )
        while not any(s.version == 1 for s in seen) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert any(s.version == 1 and s.state is OPEN for s in seen)
        breaker = CircuitBreaker("svc", failure_threshold=1, store=store)
        assert breaker.state is OPEN
        unwatch()
    finally:
        store.close()
        drop_prefix(url, prefix)


# -- differential tests: Redis against the in-memory reference ---------------------------------

SPECS = {"a": BucketSpec.of(rate=1000, per=1.0, burst=3), "b": BucketSpec.of(200, 1.0, 2)}
BUCKETS = [(name, key) for name in SPECS for key in (None, "k")]


class BucketsMachine(RuleBasedStateMachine):
    """Random operations on both stores at the same instant: identical answers."""

    def __init__(self) -> None:
        super().__init__()
        self.url = require_redis()
        self.prefix = f"test-{uuid.uuid4().hex}"
        self.redis = RedisStore(self.url, prefix=self.prefix, timeout=STORE_TIMEOUT)
        self.clock = SettableClock()
        self.memory = MemoryBucketStore(self.clock)
        self.reservations: list[tuple[list[BucketRequest], Decision]] = []

    def teardown(self) -> None:
        self.redis.close()
        drop_prefix(self.url, self.prefix)

    @rule(
        picks=st.lists(st.sampled_from(BUCKETS), min_size=1, max_size=3, unique=True),
        costs=st.lists(st.integers(1, 3), min_size=3, max_size=3),
        max_wait=st.sampled_from([0.0, 0.002, 0.02, math.inf]),
    )
    def take(self, picks: list[tuple[str, str | None]], costs: list[int], max_wait: float) -> None:
        requests = [
            BucketRequest(name, key, min(cost, SPECS[name].burst), SPECS[name])
            for (name, key), cost in zip(picks, costs, strict=False)
        ]
        decision, now, old = self.redis._bucket_take_raw(requests, max_wait)
        self.clock.t = now
        for (name, key), tat in zip(picks, old, strict=True):
            self.check_state(name, key, tat, now)
        self.same_decision(decision, self.memory.bucket_take(requests, max_wait), now)
        if decision.reserved:
            self.reservations.append((requests, decision))

    # Whether a reservation exists depends on real time: the rule is always
    # enabled and draws the same way every time (Hypothesis replays draws).
    @rule(pick=st.integers(0, 1000))
    def refund(self, pick: int) -> None:
        if not self.reservations:
            return
        requests, decision = self.reservations[pick % len(self.reservations)]
        self.redis.bucket_refund(requests, decision.reserved)
        self.memory.bucket_refund(requests, decision.reserved)

    @rule(bucket=st.sampled_from(BUCKETS), seconds=st.sampled_from([0.0, 0.001, 0.01]))
    def penalize(self, bucket: tuple[str, str | None], seconds: float) -> None:
        name, key = bucket
        now, tat = self.redis._bucket_penalize_raw(name, key, SPECS[name], seconds)
        self.clock.t = now
        self.check_state(name, key, tat, now)
        self.memory.bucket_penalize(name, key, SPECS[name], seconds)

    @rule(seconds=st.sampled_from([0.0005, 0.002, 0.006]))
    def let_time_pass(self, seconds: float) -> None:
        time.sleep(seconds)  # real time, so that Redis's clock moves; nothing is timed

    @invariant()
    def same_state_everywhere(self) -> None:
        for name, key in BUCKETS:
            now, tat = self.redis._bucket_read(name, key)
            self.clock.t = now
            self.check_state(name, key, tat, now)
            assert self.memory.bucket_tokens(name, key, SPECS[name]) == self.redis_tokens(
                name, key, tat, now
            )

    def redis_tokens(self, name: str, key: str | None, tat: float, now: float) -> float:
        from resilience._core.bucket import tokens

        return tokens(tat, now, SPECS[name])

    @staticmethod
    def same_decision(got: Decision, want: Decision, now: float) -> None:
        """Equal, except that a full bucket may be forgotten (-inf) or remembered (a past time)."""
        assert (got.granted, got.wait, got.retry_after, got.tokens) == (
            want.granted,
            want.wait,
            want.retry_after,
            want.tokens,
        )
        assert len(got.reserved) == len(want.reserved)
        for (got_before, got_after), (want_before, want_after) in zip(
            got.reserved, want.reserved, strict=True
        ):
            assert got_after == want_after
            assert got_before == want_before or max(got_before, want_before) <= now

    def check_state(self, name: str, key: str | None, tat: float, now: float) -> None:
        """Redis holds the memory store's exact state, or both buckets are full."""
        table = self.memory._tables.get(name)
        expected = FULL if table is None else table.tats.get(key, FULL)
        if tat > now or expected > now:
            assert tat == expected, (name, key, tat, expected, now)


TestBucketsMatchMemory = BucketsMachine.TestCase
TestBucketsMatchMemory.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class CircuitsMachine(RuleBasedStateMachine):
    """Random circuit operations on both stores: identical answers (break time within 1 s)."""

    def __init__(self) -> None:
        super().__init__()
        self.url = require_redis()
        self.prefix = f"test-{uuid.uuid4().hex}"
        self.redis = RedisStore(self.url, prefix=self.prefix, timeout=STORE_TIMEOUT)
        self.memory = MemoryBreakerStore()

    def teardown(self) -> None:
        self.redis.close()
        drop_prefix(self.url, self.prefix)

    def version(self, name: str) -> int:
        return self.memory.breaker_load(name, time.monotonic()).version

    @rule(
        name=st.sampled_from(["x", "y"]),
        stale=st.booleans(),
        state=st.sampled_from(list(CircuitState)),
        trips=st.integers(0, 5),
        duration=st.sampled_from([0.0, 0.5, 30.0]),
        reason=st.text(max_size=20),
    )
    def transition(
        self, name: str, stale: bool, state: CircuitState, trips: int, duration: float, reason: str
    ) -> None:
        expected = self.version(name) - (1 if stale else 0)
        now = time.monotonic()
        got = self.redis.breaker_transition(
            name,
            Transition(
                expected_version=expected,
                state=state,
                reason=reason,
                trips=trips,
                break_duration=duration,
                now=now,
            ),
        )
        want = self.memory.breaker_transition(
            name,
            Transition(
                expected_version=expected,
                state=state,
                reason=reason,
                trips=trips,
                break_duration=duration,
                now=now,
            ),
        )
        assert got[0] == want[0]
        self.same(got[1], want[1])

    @rule(name=st.sampled_from(["x", "y"]), stale=st.booleans(), limit=st.integers(1, 3))
    def acquire(self, name: str, stale: bool, limit: int) -> None:
        version = self.version(name) - (1 if stale else 0)
        got = self.redis.breaker_acquire_probe(name, version, limit, None, 0.0)
        assert got == self.memory.breaker_acquire_probe(name, version, limit, None, 0.0)

    @rule(
        name=st.sampled_from(["x", "y"]),
        stale=st.booleans(),
        verdict=st.sampled_from([True, False, None]),
    )
    def release(self, name: str, stale: bool, verdict: bool | None) -> None:
        version = self.version(name) - (1 if stale else 0)
        got = self.redis.breaker_release_probe(name, version, verdict)
        assert got == self.memory.breaker_release_probe(name, version, verdict)

    @invariant()
    def same_snapshots(self) -> None:
        for name in ("x", "y"):
            self.same(
                self.redis.breaker_load(name, 0.0), self.memory.breaker_load(name, time.monotonic())
            )

    @staticmethod
    def same(got: CircuitSnapshot, want: CircuitSnapshot) -> None:
        assert (got.state, got.version, got.trips, got.reason) == (
            want.state,
            want.version,
            want.trips,
            want.reason,
        )
        assert abs(got.break_remaining - want.break_remaining) < 1.0


TestCircuitsMatchMemory = CircuitsMachine.TestCase
TestCircuitsMatchMemory.settings = settings(
    max_examples=20,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- invariants under concurrency, in one process ---------------------------------------------


async def test_concurrent_tasks_never_over_grant(url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    store = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT)
    client = redis.Redis.from_url(url)
    try:
        spec = BucketSpec.of(rate=500, per=1.0, burst=10)
        request = [BucketRequest("hot", None, 1, spec)]
        seconds, microseconds = client.time()
        start = seconds + microseconds / 1e6

        async def hammer() -> int:
            granted = 0
            for _ in range(60):
                granted += (await store.abucket_take(request)).granted
            return granted

        total = sum(await asyncio.gather(*(hammer() for _ in range(8))))
        seconds, microseconds = client.time()
        elapsed = seconds + microseconds / 1e6 - start
        assert total <= spec.burst + 500 * elapsed + 1e-6
        assert total >= spec.burst  # it did grant
    finally:
        client.close()
        await store.aclose()
        store.close()
        drop_prefix(url, prefix)


def test_async_methods_without_an_async_client_use_a_thread(url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(url)
    store = RedisStore(client=client, prefix=prefix)
    try:
        spec = BucketSpec.of(1, 100.0, 1)
        decision = asyncio.run(store.abucket_take([BucketRequest("t", None, 1, spec)]))
        assert decision.granted
        assert not store.bucket_take([BucketRequest("t", None, 1, spec)]).granted
    finally:
        client.close()
        drop_prefix(url, prefix)


def test_a_breaker_recovers_when_redis_loses_its_circuit(store: RedisStore, url: str) -> None:
    """Redis restarted without persistence: the circuit is back at version 0. The
    breaker holding a newer version must take the store's word for it, or every
    transition it tries keeps failing and it stays open for good."""
    from resilience.testing import FakeClock

    clock = FakeClock()
    breaker = rs.CircuitBreaker(
        "lost", failure_threshold=1, break_duration=5.0, store=store, clock=clock
    )

    def fail() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        breaker.call(fail)
    assert breaker.state is OPEN
    client = redis.Redis.from_url(url)
    try:
        client.delete(store.circuit_key("lost"))  # the data loss
    finally:
        client.close()
    clock.advance(60.0)  # past the break and the store's staleness
    assert breaker.call(lambda: "served") == "served"
    assert breaker.state is CLOSED

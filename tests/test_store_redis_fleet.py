"""RedisStore under a fleet's conditions: crowds, restarts, dead probes, hostile input.

Regression tests for issue 11 (items 2, 3, 4, 11 and 17, Redis side):

* more callers than the connection pool holds are back-pressure, never an
  outage (150 threads, 500 asyncio tasks, every ``on_store_failure`` mode);
* a ``pubsub=True`` breaker keeps following the fleet after Redis restarts and
  loses its data (two processes, a ``redis-server`` of our own);
* a probe permit held by a process killed with SIGKILL lapses after its lease;
* any ``str`` is a key like any other, and never trips the outage guard;
* bad URLs and options are a ``ConfigurationError`` naming the field, and no
  password shows in any name, error or log line.

Timing is only ever read from the Redis server's clock (bounds of a rate
limit, the lapse of a lease); the waits are bounded polls, never assertions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import redis

import resilience as rs
from resilience.breaker import CircuitBreaker, CircuitState
from resilience.ratelimit import RateLimiter
from resilience.storage import MemoryStore, store_from_url
from resilience.storage.breakers import CircuitSnapshot, Transition
from resilience.storage.redis import DEFAULT_MAX_CONNECTIONS, RedisStore
from resilience.testing import FakeClock

from .backends import STORE_TIMEOUT, require_redis
from .test_store_redis import drop_prefix
from .test_store_redis_faults import HANG_LIMIT, RedisServer, free_port

MODES = ["fail_closed", "fail_open", "local"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def url() -> str:
    return require_redis()


@pytest.fixture
def prefix(url: str) -> Iterator[str]:
    made = f"test-{uuid.uuid4().hex}"
    yield made
    drop_prefix(url, made)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    made = RedisServer(tmp_path)
    made.start()
    try:
        yield made
    finally:
        made.stop()


def server_time(client: redis.Redis) -> float:
    seconds, microseconds = client.time()
    return float(seconds) + float(microseconds) / 1e6


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "resilience.storage" and r.levelno >= logging.WARNING
    ]


# -- (2) more callers than connections: back-pressure, never an outage -------------------

RATE, PER, BURST = 50, 1.0, 30
SMALL_POOL = 8
THREADS, THREAD_CALLS = 150, 5
TASKS, TASK_CALLS = 500, 3


def crowd_limiter(store: RedisStore, mode: str) -> RateLimiter:
    return RateLimiter(
        f"crowd-{mode}",
        rate=RATE,
        per=PER,
        burst=BURST,
        store=store,
        on_store_failure=mode,  # type: ignore[arg-type]
    )


def allowed(elapsed: float) -> int:
    """What the bucket can grant in ``elapsed`` seconds of server time, starting full."""
    return math.floor(BURST + RATE / PER * elapsed + 1e-9)


#: The default pool, and one so small that the crowd surely waits for it.
POOLS = [None, SMALL_POOL]


@pytest.mark.parametrize("pool", POOLS, ids=["default-pool", "small-pool"])
@pytest.mark.parametrize("mode", MODES)
def test_more_threads_than_connections_never_over_grant(
    url: str, prefix: str, mode: str, pool: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="resilience.storage")
    store = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT, max_connections=pool)
    assert store.max_connections == (pool or DEFAULT_MAX_CONNECTIONS) < THREADS
    limiter = crowd_limiter(store, mode)
    client = redis.Redis.from_url(url)
    grants: list[bool] = []
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS + 1)

    def caller() -> None:
        start.wait()
        for _ in range(THREAD_CALLS):
            try:
                grants.append(limiter.try_acquire())
            except BaseException as error:  # every error is a finding
                errors.append(error)

    threads = [threading.Thread(target=caller) for _ in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        began = server_time(client)
        start.wait()
        for thread in threads:
            thread.join(60.0)
        elapsed = server_time(client) - began
        opened = len(store._client.connection_pool._connections)
    finally:
        client.close()
        store.close()
    granted, bound = sum(grants), allowed(elapsed)
    print(
        f"\n[pool] sync {mode}, pool {store.max_connections}: {granted} grants, bound {bound}"
        f" ({elapsed:.3f}s server time, {opened} connections)"
    )
    assert errors == []
    assert opened <= store.max_connections
    if pool == SMALL_POOL:
        assert opened == SMALL_POOL  # the crowd did wait for connections
    assert len(grants) == THREADS * THREAD_CALLS
    assert BURST <= granted <= bound
    assert outage_lines(caplog) == []


@pytest.mark.parametrize("pool", POOLS, ids=["default-pool", "small-pool"])
@pytest.mark.parametrize("mode", MODES)
async def test_more_tasks_than_connections_never_over_grant(
    url: str, prefix: str, mode: str, pool: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="resilience.storage")
    store = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT, max_connections=pool)
    assert store.max_connections == (pool or DEFAULT_MAX_CONNECTIONS) < TASKS
    limiter = crowd_limiter(store, mode)
    client = redis.Redis.from_url(url)

    async def caller() -> int:
        granted = 0
        for _ in range(TASK_CALLS):
            try:
                await limiter.aacquire(timeout=0)
                granted += 1
            except rs.RateLimitExceeded:
                pass
        return granted

    try:
        began = server_time(client)
        results = await asyncio.gather(*(caller() for _ in range(TASKS)), return_exceptions=True)
        elapsed = server_time(client) - began
        side = store._async_side()
        assert side is not None
        made = side.client.connection_pool
        opened = len(made._available_connections) + len(made._in_use_connections)
    finally:
        client.close()
        await store.aclose()
        store.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    granted = sum(r for r in results if isinstance(r, int))
    bound = allowed(elapsed)
    print(
        f"\n[pool] async {mode}, pool {store.max_connections}: {granted} grants, bound {bound}"
        f" ({elapsed:.3f}s server time, {opened} connections)"
    )
    assert errors == []
    assert opened <= store.max_connections
    if pool == SMALL_POOL:
        assert opened == SMALL_POOL  # the crowd did wait for connections
    assert BURST <= granted <= bound
    assert outage_lines(caplog) == []


def test_a_pool_that_refuses_is_what_the_crowd_tests_catch(url: str, prefix: str) -> None:
    """The control: the same crowd on a non-blocking pool of the same size (a
    ``client=`` of the user's) gets "Too many connections", an outage."""
    pool = redis.ConnectionPool.from_url(url, max_connections=SMALL_POOL)
    store = RedisStore(client=redis.Redis(connection_pool=pool), prefix=prefix)
    limiter = crowd_limiter(store, "fail_closed")
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def caller() -> None:
        start.wait()
        for _ in range(THREAD_CALLS):
            try:
                limiter.try_acquire()
            except rs.StoreUnavailable as error:
                errors.append(error)

    threads = [threading.Thread(target=caller) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60.0)
    pool.disconnect()
    assert errors and "Too many connections" in str(errors[0].__cause__)


def test_a_small_pool_makes_callers_wait_their_turn(url: str, prefix: str) -> None:
    store = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT, max_connections=2)
    limiter = RateLimiter("small-pool", rate=1, per=3600.0, burst=40, store=store)
    grants: list[bool] = []
    errors: list[BaseException] = []

    def caller() -> None:
        for _ in range(4):
            try:
                grants.append(limiter.try_acquire())
            except BaseException as error:
                errors.append(error)

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60.0)
    try:
        assert errors == [] and sum(grants) == 40
        assert len(store._client.connection_pool._connections) <= 2
    finally:
        store.close()


def test_no_connection_within_the_timeout_is_store_unavailable(url: str, prefix: str) -> None:
    store = RedisStore(url, prefix=prefix, timeout=0.2, max_connections=1)
    pool = store._client.connection_pool
    held = pool.get_connection()  # another caller holds the only connection
    try:
        started = time.monotonic()
        with pytest.raises(rs.StoreUnavailable) as caught:
            store.breaker_load("svc", 0.0)
        assert time.monotonic() - started < HANG_LIMIT
        assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
    finally:
        pool.release(held)
    try:
        assert store.breaker_load("svc", 0.0).version == 0  # free again: fine
    finally:
        store.close()


async def test_no_async_connection_within_the_timeout_is_store_unavailable(
    url: str, prefix: str
) -> None:
    store = RedisStore(url, prefix=prefix, timeout=0.2, max_connections=1)
    assert (await store.abreaker_load("svc", 0.0)).version == 0
    side = store._async_side()
    assert side is not None
    pool = side.client.connection_pool
    assert isinstance(pool, redis.asyncio.BlockingConnectionPool)
    held = await pool.get_connection()  # another task holds the only connection
    try:
        with pytest.raises(rs.StoreUnavailable) as caught:
            await asyncio.wait_for(store.abreaker_load("svc", 0.0), HANG_LIMIT)
        assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
    finally:
        await pool.release(held)
    try:
        assert (await store.abreaker_load("svc", 0.0)).version == 0
        # The pool holds to its size: 40 tasks, one connection, no error.
        results = await asyncio.gather(*(store.abreaker_load("svc", 0.0) for _ in range(40)))
        assert {snapshot.version for snapshot in results} == {0}
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 1
    finally:
        await store.aclose()
        store.close()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections": -3}, "max_connections"),
        ({"max_connections": True}, "max_connections"),
        ({"max_connections": 2.5}, "max_connections"),
        ({"max_connections": "8"}, "max_connections"),
        ({"timeout": "5"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": None}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": math.inf}, "timeout"),
        ({"breaker_staleness": False}, "breaker_staleness"),
        ({"expiry_margin": "1"}, "expiry_margin"),
        ({"probe_lease": 0}, "probe_lease"),
        ({"probe_lease": 0.0}, "probe_lease"),
        ({"probe_lease": math.inf}, "probe_lease"),
        ({"probe_lease": math.nan}, "probe_lease"),
        ({"probe_lease": True}, "probe_lease"),
    ],
)
def test_bad_numbers_are_configuration_errors(options: dict[str, Any], field: str) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        RedisStore("redis://127.0.0.1:6379/15", **options)
    assert caught.value.fields == (field,)


def test_the_pool_size_from_a_url(url: str) -> None:
    assert RedisStore.from_url(f"{url}?max_connections=7").max_connections == 7
    assert RedisStore(f"{url}?max_connections=7").max_connections == 7
    assert RedisStore.from_url(f"{url}?max_connections=7", max_connections=3).max_connections == 3
    assert store_from_url(f"{url}?max_connections=9").max_connections == 9  # type: ignore[attr-defined]
    with pytest.raises(rs.ConfigurationError) as caught:
        RedisStore.from_url(f"{url}?max_connections=0")
    assert caught.value.fields == ("max_connections",)
    with pytest.raises(rs.ConfigurationError) as caught:
        RedisStore.from_url(f"{url}?max_connections=lots")
    assert caught.value.fields == ("url.max_connections",)
    with pytest.raises(rs.ConfigurationError, match="own pool"):
        RedisStore(client=redis.Redis.from_url(url), max_connections=3)


# -- (11) pub/sub breakers follow the fleet through a data-losing restart --------------------

_FOLLOWER = """
import sys, time
import resilience as rs
from resilience.storage.redis import RedisStore

store = RedisStore(sys.argv[1], prefix=sys.argv[2], timeout=0.25, pubsub=True)
breaker = rs.CircuitBreaker(
    "svc", failure_threshold=2, break_duration=60.0, store=store, on_store_failure="fail_open"
)
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "calls":
        ran = 0
        for _ in range(20):
            try:
                breaker.call(lambda: None)
                ran += 1
            except rs.CircuitOpenError:
                pass
        print(f"ran {ran} {breaker.state.value}", flush=True)
"""


class Follower:
    """The other process: a pub/sub breaker on the same circuit, asked to make 20 calls."""

    def __init__(self, url: str, prefix: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _FOLLOWER, url, prefix],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.read() == "ready"

    def read(self) -> str:
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        return stdout.readline().strip()

    def calls(self) -> int:
        """How many of 20 calls its breaker let through."""
        stdin: IO[str] | None = self.process.stdin
        assert stdin is not None
        stdin.write("calls\n")
        stdin.flush()
        return int(self.read().split()[1])

    def until(self, ran: int) -> bool:
        """Ask again (bounded) until exactly ``ran`` of 20 calls got through."""
        deadline = time.monotonic() + HANG_LIMIT * 2
        while time.monotonic() < deadline:
            if self.calls() == ran:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def test_a_pubsub_breaker_follows_the_fleet_after_redis_loses_its_data(
    server: RedisServer,
) -> None:
    prefix = uuid.uuid4().hex
    store = RedisStore(server.url, prefix=prefix, timeout=0.25, pubsub=True)
    breaker = CircuitBreaker(
        "svc", failure_threshold=2, break_duration=60.0, store=store, on_store_failure="fail_open"
    )
    follower = Follower(server.url, prefix)

    def trip() -> None:
        for _ in range(2):
            with pytest.raises(ConnectionError):
                breaker.call(fail)

    def fail() -> None:
        raise ConnectionError("down")

    try:
        trip()
        assert breaker.state is CircuitState.OPEN
        assert follower.until(0)  # the other process obeys the open circuit
        breaker.reset()
        assert follower.until(20)  # and the reset: both now hold version 2
        server.kill()
        server.start()  # no persistence: the circuit is gone, Redis counts from 0 again
        trip()  # opened again by this process, after the restart
        assert breaker.state is CircuitState.OPEN
        assert store.breaker_load("svc", 0.0).state is CircuitState.OPEN
        assert follower.until(0), "the other process let calls through an open circuit"
        assert follower.calls() == 0  # 0 of 20, and it stays that way
    finally:
        follower.stop()
        store.close()


def test_a_transition_from_a_lost_epoch_is_not_lost(url: str, prefix: str) -> None:
    """Redis lost the circuit: the next move of a breaker that knew it applies (a
    trip must not be lost), and is reported as newer than anything seen before."""
    store = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT)
    other = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT)  # another process
    client = redis.Redis.from_url(url)
    try:
        store.breaker_transition(
            "c",
            Transition(
                expected_version=0,
                state=CircuitState.OPEN,
                reason="x",
                trips=1,
                break_duration=60.0,
                now=0.0,
            ),
        )
        won, closed = store.breaker_transition(
            "c",
            Transition(
                expected_version=1,
                state=CircuitState.CLOSED,
                reason="ok",
                trips=0,
                break_duration=0.0,
                now=0.0,
            ),
        )
        assert won and closed.version == 2
        assert other.breaker_load("c", 0.0).version == 2
        client.delete(store.circuit_key("c"))  # the data loss
        won, opened = store.breaker_transition(
            "c",
            Transition(
                expected_version=2,
                state=CircuitState.OPEN,
                reason="again",
                trips=1,
                break_duration=60.0,
                now=0.0,
            ),
        )
        assert won and opened.state is CircuitState.OPEN and opened.version > 2
        seen = other.breaker_load("c", 0.0)
        assert seen.state is CircuitState.OPEN and seen.version > 2  # newer for it too
        # A stale version of the new epoch still loses, as always.
        lost, current = other.breaker_transition(
            "c",
            Transition(
                expected_version=2,
                state=CircuitState.CLOSED,
                reason="no",
                trips=0,
                break_duration=0.0,
                now=0.0,
            ),
        )
        assert not lost and (current.state, current.version) == (seen.state, seen.version)
        # Loading after a loss reports the empty circuit as newer, then goes on from there.
        client.delete(store.circuit_key("c"))
        empty = other.breaker_load("c", 0.0)
        assert empty.state is CircuitState.CLOSED and empty.version > seen.version
        won, again = other.breaker_transition(
            "c",
            Transition(
                expected_version=empty.version,
                state=CircuitState.OPEN,
                reason="3rd",
                trips=1,
                break_duration=60.0,
                now=0.0,
            ),
        )
        assert won and again.version == empty.version + 1
    finally:
        client.close()
        store.close()
        other.close()


def shifted(epoch: str, seconds: int) -> str:
    """An epoch (``seconds.micros``, as the scripts write it) moved by ``seconds``."""
    whole, _, micros = epoch.partition(".")
    return f"{int(whole) + seconds}.{micros}"


def test_a_late_message_from_a_lost_epoch_is_ignored_and_wedges_nothing(
    url: str, prefix: str
) -> None:
    """A pushed snapshot from a circuit Redis lost before the current one (delivered
    late) is dropped; every version the store reports can still move the circuit."""
    store = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT, pubsub=True)
    client = redis.Redis.from_url(url)
    seen: list[CircuitSnapshot] = []

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + HANG_LIMIT
        while len(seen) < count:
            assert time.monotonic() < deadline, seen
            time.sleep(0.01)

    try:
        won, opened = store.breaker_transition(
            "c",
            Transition(
                expected_version=0,
                state=CircuitState.OPEN,
                reason="x",
                trips=1,
                break_duration=60.0,
                now=0.0,
            ),
        )
        assert won
        epoch = (client.hget(store.circuit_key("c"), "e") or b"").decode()
        store.breaker_watch("c", seen.append)
        wait_for(1)  # subscribed and resynced
        older = shifted(epoch, -10)  # a circuit made 10 s earlier, lost since
        stale = ["closed", 7, 0, "stale", "0", older, older]
        client.publish(store._channel("c"), json.dumps(stale))
        client.publish(store._channel("c"), json.dumps(stale))
        # Then the current circuit again (messages arrive in order): once it is in, the
        # stale ones were handled, and dropped.
        client.publish(store._channel("c"), json.dumps(["open", 1, 1, "x", "60", epoch, epoch]))
        wait_for(2)
        assert [(s.state, s.version) for s in seen[1:]] == [(opened.state, opened.version)]
        won, closed = store.breaker_transition(
            "c",
            Transition(
                expected_version=opened.version,
                state=CircuitState.CLOSED,
                reason="ok",
                trips=0,
                break_duration=0.0,
                now=0.0,
            ),
        )
        assert won  # the version breakers hold still moves the circuit
        wait_for(3)
        assert (seen[2].state, seen[2].version) == (closed.state, closed.version)
    finally:
        client.close()
        store.close()


def test_a_circuit_found_with_an_older_epoch_can_still_move(url: str, prefix: str) -> None:
    """A circuit whose epoch is older than one this store saw (Redis restarted on a
    clock behind): its answers start a segment of their own, so it moves as any."""
    store = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT)
    client = redis.Redis.from_url(url)
    key = store.circuit_key("c")
    try:
        missing = store.breaker_load("c", 0.0)  # seen missing first
        won, opened = store.breaker_transition(
            "c",
            Transition(
                expected_version=missing.version,
                state=CircuitState.OPEN,
                reason="x",
                trips=1,
                break_duration=60.0,
                now=0.0,
            ),
        )
        assert won
        epoch = (client.hget(key, "e") or b"").decode()
        for _ in range(2):  # twice: from a circuit, then from a missing one
            client.delete(key)
            client.hset(
                key,
                mapping={
                    "s": "open",
                    "v": "3",
                    "t": "1",
                    "r": "x",
                    "u": "0",
                    "e": shifted(epoch, -60),
                },
            )
            found = store.breaker_load("c", 0.0)
            assert found.version > opened.version  # newer to every breaker
            won, closed = store.breaker_transition(
                "c",
                Transition(
                    expected_version=found.version,
                    state=CircuitState.CLOSED,
                    reason="ok",
                    trips=0,
                    break_duration=0.0,
                    now=0.0,
                ),
            )
            assert won and closed.version == found.version + 1
            # A version of an earlier segment loses, with the circuit as it is.
            lost, current = store.breaker_transition(
                "c",
                Transition(
                    expected_version=opened.version,
                    state=CircuitState.OPEN,
                    reason="old",
                    trips=1,
                    break_duration=60.0,
                    now=0.0,
                ),
            )
            assert not lost and (current.state, current.version) == (closed.state, closed.version)
            client.delete(key)
            opened = store.breaker_load("c", 0.0)  # missing again
            epoch = shifted(epoch, -60)
    finally:
        client.close()
        store.close()


# -- (3) a probe permit held by a killed process lapses ---------------------------------------

_PROBER = """
import sys, time
import resilience as rs
from resilience.storage.redis import RedisStore

store = RedisStore(sys.argv[1], prefix=sys.argv[2], timeout=5.0, probe_lease=float(sys.argv[3]))
breaker = rs.CircuitBreaker("svc", failure_threshold=1, half_open_calls=1, store=store)

def hold():
    print("probing", flush=True)
    time.sleep(3600)  # never returns: the process is killed here

breaker.call(hold)
"""


def test_a_permit_held_by_a_killed_process_lapses_after_the_lease(url: str, prefix: str) -> None:
    lease = 0.5
    store = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT, probe_lease=lease)
    client = redis.Redis.from_url(url)
    won, _ = store.breaker_transition(
        "svc",
        Transition(
            expected_version=0,
            state=CircuitState.HALF_OPEN,
            reason="x",
            trips=1,
            break_duration=0.0,
            now=0.0,
        ),
    )
    assert won
    child = subprocess.Popen(
        [sys.executable, "-c", _PROBER, url, prefix, str(lease)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "probing"
        os.kill(child.pid, signal.SIGKILL)  # dies holding the only permit
        child.wait(timeout=10)
        lapse_at = float(client.hget(store.circuit_key("svc"), "d") or 0)
        assert lapse_at > 0
        breaker = CircuitBreaker(
            "svc", failure_threshold=1, half_open_calls=1, store=store, probe_lease=lease
        )
        if server_time(client) < lapse_at:
            with pytest.raises(rs.CircuitOpenError):
                breaker.call(lambda: None)  # the permit is still out
        deadline = time.monotonic() + HANG_LIMIT * 2
        while True:
            try:
                assert breaker.call(lambda: "probe") == "probe"  # a later probe is admitted
                break
            except rs.CircuitOpenError:
                assert time.monotonic() < deadline, "the dead process's permit never lapsed"
                time.sleep(lease / 5)
        assert server_time(client) >= lapse_at  # ... only once the lease was over
        assert breaker.state is CircuitState.CLOSED
        assert store.breaker_load("svc", 0.0).state is CircuitState.CLOSED
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        client.close()
        store.close()


def test_a_lease_given_per_call_wins_over_the_stores(url: str, prefix: str) -> None:
    store = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT)  # probe_lease 60 s
    client = redis.Redis.from_url(url)
    try:
        store.breaker_transition(
            "c",
            Transition(
                expected_version=0,
                state=CircuitState.HALF_OPEN,
                reason="x",
                trips=1,
                break_duration=0.0,
                now=0.0,
            ),
        )
        began = server_time(client)
        assert store.breaker_acquire_probe("c", 1, 1, 0.2, 0.0)
        lapse_at = float(client.hget(store.circuit_key("c"), "d") or 0)
        assert began + 0.2 <= lapse_at < began + 0.2 + HANG_LIMIT
        assert not store.breaker_acquire_probe("c", 1, 1, None, 0.0)
        deadline = time.monotonic() + HANG_LIMIT
        while not store.breaker_acquire_probe("c", 1, 1, None, 0.0):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert server_time(client) >= lapse_at
        # That one took the store's own lease (60 s).
        assert float(client.hget(store.circuit_key("c"), "d") or 0) > lapse_at + 50
        # A lease that is no lease (never ending, or none at all) means the store's, as
        # on SQLite: each half-open version below hands out one permit, leased 60 s.
        version = 1
        for bad in (0.0, -1.0, math.nan, math.inf):
            won, snapshot = store.breaker_transition(
                "c",
                Transition(
                    expected_version=version,
                    state=CircuitState.HALF_OPEN,
                    reason="x",
                    trips=1,
                    break_duration=0.0,
                    now=0.0,
                ),
            )
            assert won
            version = snapshot.version
            began = server_time(client)
            assert store.breaker_acquire_probe("c", version, 1, bad, 0.0)
            lapse_at = float(client.hget(store.circuit_key("c"), "d") or 0)
            assert began + 60.0 <= lapse_at < began + 60.0 + HANG_LIMIT, bad
            assert not store.breaker_acquire_probe("c", version, 1, None, 0.0)
        assert store.probe_lease == 60.0
        assert RedisStore(url, probe_lease=7).probe_lease == 7.0
    finally:
        client.close()
        store.close()


# -- (4) any str is a key like any other; a bad one is never an outage ----------------------

KEYS = [
    "a\x00b",
    "x" * 1_000_000,
    "x" * 999_999 + "y",
    "\ud800",
    "\udfff",
    "a\ud800b",
    "'",
    '"',
    "'; DROP TABLE x; --",
    "{}",
    "{x}",
    "",
    "é",
    "\U0001f600",
]


@pytest.mark.parametrize("mode", MODES)
def test_any_str_key_works_as_on_the_memory_store(
    url: str, prefix: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="resilience.storage")
    store = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT)
    memory = MemoryStore()

    def limiter(on: Any) -> RateLimiter:
        return RateLimiter(
            "keys",
            rate=1,
            per=3600.0,
            burst=2,
            store=on,
            on_store_failure=mode,  # type: ignore[arg-type]
        )

    on_redis, on_memory = limiter(store), limiter(memory)
    try:
        for key in KEYS:
            got = [on_redis.try_acquire(key) for _ in range(3)]
            assert got == [on_memory.try_acquire(key) for _ in range(3)] == [True, True, False]
        # Each was a bucket of its own (no two keys collided), and the honest user next
        # to them is limited as ever: nothing tripped the outage guard.
        assert [on_redis.try_acquire("honest") for _ in range(4)] == [True, True, False, False]
        assert outage_lines(caplog) == []
        # A long key is stored under a short name.
        assert len(store.bucket_key("keys", "x" * 1_000_000)) < 200
        assert store.bucket_key("keys", "a\ud800b").endswith(":k:a\ud800b")
    finally:
        store.close()


def test_names_are_any_str_too(url: str, prefix: str) -> None:
    def fail() -> None:
        raise ConnectionError("down")

    store = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT, pubsub=True)
    try:
        for name in ("'; DROP TABLE x; --", "é", 'say "hi"', "\U0001f600"):
            breaker = CircuitBreaker(name, failure_threshold=1, store=store)
            with pytest.raises(ConnectionError):
                breaker.call(fail)
            assert store.breaker_load(name, 0.0).state is CircuitState.OPEN
        # Breakers refuse names with control characters or lone surrogates; the store
        # takes them all the same.
        for name in ("a\x00b", "\ud800", "a\x00b\udfff"):
            won, snapshot = store.breaker_transition(
                name,
                Transition(
                    expected_version=0,
                    state=CircuitState.OPEN,
                    reason="reason \ud800\x00",
                    trips=1,
                    break_duration=60.0,
                    now=0.0,
                ),
            )
            assert won and snapshot.reason == "reason \ud800\x00"
            assert store.breaker_load(name, 0.0).reason == "reason \ud800\x00"
    finally:
        store.close()


def test_a_key_that_is_not_a_str_is_that_calls_error(url: str, prefix: str) -> None:
    from resilience.storage.buckets import BucketRequest

    store = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT)
    spec = rs.RateLimiter("x", rate=1, per=1.0)._spec
    try:
        with pytest.raises(TypeError):
            store.bucket_take([BucketRequest("x", 42, 1, spec)])  # type: ignore[arg-type]
        assert store.bucket_take([BucketRequest("x", "42", 1, spec)]).granted
    finally:
        store.close()


# -- (17) bad URLs: a ConfigurationError naming the field, no secret shown ------------------

BAD_URLS = [
    ("redis://host:notaport/0", "url"),
    ("redis://host:99999/0", "url"),
    ("redis://host:/0", "url"),
    ("redis:/host", "url"),
    ("redis:host", "url"),
    ("REDIS:/host", "url"),
    ("http://host/0", "url"),
    ("redis://host/notadb", "url.db"),
    ("redis://[::1/0", "url"),
    ("unix://", "url"),
    ("redis://host/0?db=x", "url.db"),
    ("redis://host/0?socket_timeout=abc", "url.socket_timeout"),
    ("redis://host/0?socket_timeout=-1", "url.socket_timeout"),
    ("redis://host/0?socket_timeout=nan", "url.socket_timeout"),
    ("redis://host/0?socket_connect_timeout=abc", "url.socket_connect_timeout"),
    ("redis://host/0?socket_read_size=abc", "url.socket_read_size"),
    ("redis://host/0?health_check_interval=abc", "url.health_check_interval"),
    ("redis://host/0?protocol=abc", "url.protocol"),
    ("redis://host/0?ssl_min_version=abc", "url.ssl_min_version"),
    ("redis://host/0?timeout=abc", "url.timeout"),
    ("redis://host/0?breaker_staleness=abc", "url.breaker_staleness"),
    ("redis://host/0?probe_lease=abc", "url.probe_lease"),
    ("redis://host/0?expiry_margin=abc", "url.expiry_margin"),
    ("redis://host/0?max_connections=abc", "url.max_connections"),
    ("redis://host/0?probe_lease=0", "probe_lease"),
    ("redis://host/0?timeout=inf", "timeout"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_URLS)
def test_a_bad_url_is_a_configuration_error_naming_the_field(bad: str, field: str) -> None:
    secret = bad.replace("://", "://:pa55w0rd@", 1) if "://" in bad else bad
    # store_from_url routes redis* schemes to RedisStore.from_url; the others are its own.
    routed = bad.startswith("redis://") and "[" not in bad  # (its own urlsplit raises on '[')
    builds = [RedisStore.from_url] + ([store_from_url] if routed else [])
    for build in builds:
        with pytest.raises(rs.ConfigurationError) as caught:
            build(secret)
        assert caught.value.fields == (field,), caught.value
        assert "pa55w0rd" not in str(caught.value)


def test_a_store_option_in_the_url_without_from_url_names_the_url() -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        RedisStore("redis://:pa55w0rd@host/0?prefix=x")
    assert caught.value.fields == ("url",) and "pa55w0rd" not in str(caught.value)
    with pytest.raises(rs.ConfigurationError) as caught:
        RedisStore("redis://host/0?password=pa55w0rd&prefix=x")  # redis-py's own option
    assert caught.value.fields == ("url",) and "pa55w0rd" not in str(caught.value)
    with pytest.raises(rs.ConfigurationError) as caught:
        RedisStore.from_url("redis://host:x/0?password=pa55w0rd")
    assert caught.value.fields == ("url",) and "pa55w0rd" not in str(caught.value)
    with pytest.raises(rs.ConfigurationError) as caught:
        RedisStore(12345)  # type: ignore[arg-type]
    assert caught.value.fields == ("url",)


def test_passwords_never_show(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()  # nothing listens there
    for url in (
        f"redis://:pa55w0rd@127.0.0.1:{port}/0",
        f"redis://user:pa55w0rd@127.0.0.1:{port}/0",
        f"redis://:pa%35%35w0rd@127.0.0.1:{port}/0",
        f"redis://127.0.0.1:{port}/0?password=pa55w0rd",
    ):
        store = RedisStore(url, timeout=0.1, pubsub=True)
        try:
            shown = [store.name, repr(store)]
            with pytest.raises(rs.StoreUnavailable) as caught:
                store.breaker_load("svc", 0.0)
            shown.append(str(caught.value))
            limiter = RateLimiter("x", rate=1, store=store, on_store_failure="fail_open")
            assert limiter.try_acquire()  # logs the outage
            breaker = CircuitBreaker("svc", store=store)  # starts the watcher: it retries
            time.sleep(0.3)  # let the watcher fail and log a few times (nothing is timed)
            del breaker
            shown += [record.getMessage() for record in caplog.records]
            assert any("unavailable" in line for line in shown)
            for line in shown:
                assert "pa55w0rd" not in line and "pa%35%35w0rd" not in line, line
        finally:
            store.close()
        caplog.clear()


def test_the_local_fallback_leases_permits_as_the_store_would() -> None:
    from resilience.storage._guard import GuardedBreakerStore

    # Nothing listens there: the guard answers from its local circuits, whose permits
    # lapse after the Redis store's lease (it reads the public attribute).
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.1, probe_lease=7.5)
    try:
        clock = FakeClock(1e6)
        guard = GuardedBreakerStore(store, "local", clock, "breaker 'svc'")
        half_open = Transition(
            expected_version=0,
            state=CircuitState.HALF_OPEN,
            reason="probe",
            trips=1,
            break_duration=0.0,
            now=1e6,
        )
        assert guard.breaker_transition("svc", half_open)[0]
        assert guard.local is not None and guard.probe_lease == 7.5
        assert guard.breaker_acquire_probe("svc", 1, 1, None, 1e6)
        assert not guard.breaker_acquire_probe("svc", 1, 1, None, 1e6 + 7.0)
        assert guard.breaker_acquire_probe("svc", 1, 1, None, 1e6 + 7.5)  # lapsed
    finally:
        store.close()

"""RedisStore on a real Redis Cluster: three nodes of our own, on free loopback ports."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import resilience as rs
from resilience._core.bucket import BucketSpec
from resilience.breaker import CircuitBreaker, CircuitState
from resilience.ratelimit import RateLimiter
from resilience.storage.breakers import Transition
from resilience.storage.buckets import BucketRequest
from resilience.storage.redis import RedisStore

from .backends import REQUIRED
from .test_store_redis_faults import free_port

SPEC = BucketSpec.of(rate=1, per=100.0, burst=2)


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        message = "cluster tests need redis-server and redis-cli on PATH"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("cluster")
    ports = [free_port() for _ in range(3)]
    processes = []
    try:
        for port in ports:
            directory = Path(root, str(port))
            directory.mkdir()
            arguments = [server, "--port", str(port), "--bind", "127.0.0.1"]
            arguments += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            # The bus port defaults to port + 10000, which may not exist: choose one.
            arguments += ["--cluster-port", str(free_port())]
            arguments += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
            processes.append(
                subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        for port in ports:
            wait_for(lambda port=port: redis.Redis(port=port).ping())
        nodes = [f"127.0.0.1:{port}" for port in ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        for port in ports:
            wait_for(lambda port=port: cluster_ok(port))
        yield f"redis+cluster://127.0.0.1:{ports[0]}/0"
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)


def cluster_ok(port: int) -> bool:
    client = redis.Redis(port=port)
    try:
        info = client.execute_command("CLUSTER INFO")
    finally:
        client.close()
    text = str(info)
    return "cluster_state:ok" in text or "'cluster_state': 'ok'" in text


def wait_for(check: object) -> None:
    deadline = time.monotonic() + 15.0
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except redis.exceptions.RedisError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the test cluster did not come up")
        time.sleep(0.05)


@pytest.fixture
def store(cluster_url: str) -> Iterator[RedisStore]:
    made = RedisStore.from_url(
        cluster_url, prefix=f"t-{uuid.uuid4().hex}", hash_tag={"global": "mail", "per-rcpt": "mail"}
    )
    yield made
    made.close()


def test_policies_spread_over_the_nodes(store: RedisStore) -> None:
    assert store.name.startswith("redis-cluster://127.0.0.1:")
    # Enough names to land on every node; each name's keys share one slot.
    for index in range(12):
        limiter = RateLimiter(f"limit-{index}", rate=1, per=100.0, burst=1, store=store)
        assert limiter.try_acquire() and limiter.try_acquire("key")
        assert not limiter.try_acquire()
    breaker = CircuitBreaker("svc", failure_threshold=1, store=store)

    def down() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        breaker.call(down)
    assert store.breaker_load("svc", 0.0).state is CircuitState.OPEN


def test_composites_need_one_hash_tag(store: RedisStore) -> None:
    same_tag = [BucketRequest("global", None, 1, SPEC), BucketRequest("per-rcpt", "bob", 2, SPEC)]
    assert store.bucket_take(same_tag).granted
    assert not store.bucket_take(same_tag).granted  # all or nothing, in one slot
    assert store.bucket_tokens("global", None, SPEC) > 0.99
    with pytest.raises(rs.ConfigurationError, match="hash_tag"):
        store.bucket_take(
            [BucketRequest("global", None, 1, SPEC), BucketRequest("x", None, 1, SPEC)]
        )


async def test_async_on_the_cluster(store: RedisStore) -> None:
    assert (await store.abucket_take([BucketRequest("async", None, 2, SPEC)])).granted
    decision = await store.abucket_take([BucketRequest("async", None, 1, SPEC)], max_wait=1000.0)
    assert decision.granted and decision.wait > 99.0
    won, _ = await store.abreaker_transition(
        "svc",
        Transition(
            expected_version=0,
            state=CircuitState.HALF_OPEN,
            reason="p",
            trips=1,
            break_duration=0.0,
            now=0.0,
        ),
    )
    assert won and await store.abreaker_acquire_probe("svc", 1, 1, None, 0.0)
    await store.aclose()


def test_more_callers_than_connections_wait_their_turn_on_the_cluster(cluster_url: str) -> None:
    """Each node's pool blocks (sync), and a gate holds asyncio calls to the pool's
    size: more callers than connections are back-pressure, never an outage."""
    store = RedisStore.from_url(
        cluster_url, prefix=f"t-{uuid.uuid4().hex}", timeout=5.0, max_connections=3
    )
    limiter = RateLimiter("crowd", rate=1, per=3600.0, burst=25, store=store)
    grants: list[bool] = []
    errors: list[BaseException] = []

    def caller() -> None:
        for _ in range(3):
            try:
                grants.append(limiter.try_acquire())
            except BaseException as error:  # every error is a finding
                errors.append(error)

    threads = [threading.Thread(target=caller) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60.0)

    async def crowd() -> list[Any]:
        other = RateLimiter("crowd-async", rate=1, per=3600.0, burst=25, store=store)
        calls = [other.aacquire(timeout=0) for _ in range(100)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await store.aclose()
        return results

    try:
        assert errors == [] and len(grants) == 90 and sum(grants) == 25
        results = asyncio.run(crowd())
        refused = [r for r in results if isinstance(r, rs.RateLimitExceeded)]
        assert len(refused) == 75 and results.count(None) == 25, {type(r) for r in results}
    finally:
        store.close()

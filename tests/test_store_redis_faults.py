"""Fault tests: a Redis of our own, killed, frozen and restarted mid-run.

Each test starts its own ``redis-server`` on a free loopback port (no
persistence, in a temporary directory), so killing it disturbs nobody. The
store must raise :class:`~resilience.StoreUnavailable` (never a raw driver
exception) within a bounded time, never hang, and work again once the server
is back. The only time assertions are generous "did not hang" upper bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import resilience as rs
from resilience._core.bucket import BucketSpec
from resilience.breaker import CircuitBreaker, CircuitState
from resilience.ratelimit import RateLimiter
from resilience.storage.breakers import CircuitSnapshot, Transition
from resilience.storage.redis import RedisStore
from resilience.testing import FakeClock

from .backends import REQUIRED

HANG_LIMIT = 5.0  # seconds; the store's timeout is 0.25 s
SPEC = BucketSpec.of(rate=1000, per=1.0, burst=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throwaway ``redis-server`` on a free loopback port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            message = "fault tests need a redis-server binary on PATH"
            if REQUIRED:
                pytest.fail(message)
            pytest.skip(message)
        arguments = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        arguments += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        arguments += ["--dir", str(self.directory)]
        self.process = subprocess.Popen(
            arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10.0
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.RedisError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.thaw()
            self.kill()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    made = RedisServer(tmp_path)
    made.start()
    try:
        yield made
    finally:
        made.stop()


def every_operation(store: RedisStore) -> list[Callable[[], object]]:
    one = [rs.storage.buckets.BucketRequest("api", None, 1, SPEC)]
    return [
        lambda: store.bucket_take(one),
        lambda: store.bucket_refund(one, [(0.0, 1.0)]),
        lambda: store.bucket_penalize("api", None, SPEC, 1.0),
        lambda: store.bucket_tokens("api", None, SPEC),
        lambda: store.breaker_load("svc", 0.0),
        lambda: store.breaker_transition(
            "svc",
            Transition(
                expected_version=99,
                state=CircuitState.OPEN,
                reason="x",
                trips=1,
                break_duration=1.0,
                now=0.0,
            ),
        ),
        lambda: store.breaker_acquire_probe("svc", 1, 1, None, 0.0),
        lambda: store.breaker_release_probe("svc", 1, True),
    ]


def every_async_operation(store: RedisStore) -> list[Callable[[], Awaitable[object]]]:
    one = [rs.storage.buckets.BucketRequest("api", None, 1, SPEC)]
    return [
        lambda: store.abucket_take(one),
        lambda: store.abucket_refund(one, [(0.0, 1.0)]),
        lambda: store.abucket_penalize("api", None, SPEC, 1.0),
        lambda: store.abucket_tokens("api", None, SPEC),
        lambda: store.abreaker_load("svc", 0.0),
        lambda: store.abreaker_transition(
            "svc",
            Transition(
                expected_version=99,
                state=CircuitState.OPEN,
                reason="x",
                trips=1,
                break_duration=1.0,
                now=0.0,
            ),
        ),
        lambda: store.abreaker_acquire_probe("svc", 1, 1, None, 0.0),
        lambda: store.abreaker_release_probe("svc", 1, True),
    ]


def assert_unavailable(store: RedisStore, call: Callable[[], object]) -> None:
    started = time.monotonic()
    with pytest.raises(rs.StoreUnavailable) as caught:
        call()
    assert time.monotonic() - started < HANG_LIMIT
    assert caught.value.store == store.name
    assert isinstance(caught.value.__cause__, redis.exceptions.RedisError | OSError)
    assert "127.0.0.1" in str(caught.value)


async def aassert_unavailable(store: RedisStore, call: Callable[[], Awaitable[object]]) -> None:
    started = time.monotonic()
    with pytest.raises(rs.StoreUnavailable) as caught:
        await asyncio.wait_for(call(), HANG_LIMIT * 2)  # a hang fails as TimeoutError
    assert time.monotonic() - started < HANG_LIMIT
    assert isinstance(caught.value.__cause__, redis.exceptions.RedisError | OSError)


def test_killed_server_raises_store_unavailable_then_recovers(server: RedisServer) -> None:
    store = RedisStore(server.url, prefix=uuid.uuid4().hex, timeout=0.25)
    try:
        for call in every_operation(store):
            call()  # all fine, and the pool now holds a connection
        server.kill()
        for call in every_operation(store):
            assert_unavailable(store, call)
        server.start()  # same port, empty data
        # The pooled connection is stale: the store reconnects on its own.
        for call in every_operation(store):
            call()
        fresh = [rs.storage.buckets.BucketRequest("fresh", None, 1, SPEC)]
        assert store.bucket_take(fresh).granted
    finally:
        store.close()


def test_frozen_server_times_out_then_recovers(server: RedisServer) -> None:
    store = RedisStore(server.url, prefix=uuid.uuid4().hex, timeout=0.25)
    try:
        assert store.breaker_load("svc", 0.0).version == 0
        server.freeze()  # accepts nothing, answers nothing: only the timeout helps
        for call in every_operation(store)[:3]:
            assert_unavailable(store, call)
        server.thaw()
        for call in every_operation(store):
            call()
    finally:
        store.close()


async def test_async_killed_and_frozen_server(server: RedisServer) -> None:
    store = RedisStore(server.url, prefix=uuid.uuid4().hex, timeout=0.25)
    try:
        for acall in every_async_operation(store):
            await acall()
        server.kill()
        for acall in every_async_operation(store):
            await aassert_unavailable(store, acall)
        server.start()
        for acall in every_async_operation(store):
            await acall()
        server.freeze()
        for acall in every_async_operation(store)[:2]:
            await aassert_unavailable(store, acall)
        server.thaw()
        for acall in every_async_operation(store):
            await acall()
    finally:
        await store.aclose()
        store.close()


def test_kill_mid_run_under_load(server: RedisServer) -> None:
    """Threads hammer a limiter and a circuit while the server dies and comes back:
    every failure is StoreUnavailable, nothing hangs, and all threads recover."""
    store = RedisStore(server.url, prefix=uuid.uuid4().hex, timeout=0.25)
    limiter = RateLimiter("api", rate=1_000_000, per=1.0, burst=1000, store=store)
    stop = threading.Event()
    outcomes: list[dict[str, Any]] = []

    def worker() -> None:
        seen: dict[str, Any] = {"ok": 0, "unavailable": 0, "other": [], "ok_after": 0}
        outcomes.append(seen)
        while not stop.is_set():
            started = time.monotonic()
            try:
                limiter.try_acquire()
                store.breaker_load("svc", 0.0)
                seen["ok"] += 1
                if restarted.is_set():
                    seen["ok_after"] += 1
            except rs.StoreUnavailable:
                seen["unavailable"] += 1
            except Exception as error:  # pragma: no cover - the failure the test is about
                seen["other"].append(error)
            seen["longest"] = max(seen.get("longest", 0.0), time.monotonic() - started)

    restarted = threading.Event()
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.2)
        server.kill()
        time.sleep(0.5)
        server.start()
        restarted.set()
        deadline = time.monotonic() + HANG_LIMIT
        while time.monotonic() < deadline and not all(o["ok_after"] > 10 for o in outcomes):
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=HANG_LIMIT * 2)
        store.close()
    assert not any(thread.is_alive() for thread in threads)
    for seen in outcomes:
        assert seen["other"] == []
        assert seen["unavailable"] > 0
        assert seen["ok_after"] > 10
        assert seen["longest"] < HANG_LIMIT


def test_unreachable_server_at_construction_is_not_an_error() -> None:
    # Construction makes no connection: the store is usable once Redis is up.
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.25)
    assert_unavailable(store, lambda: store.breaker_load("svc", 0.0))
    store.close()


def test_pubsub_watcher_reconnects_and_resyncs(server: RedisServer) -> None:
    store = RedisStore(server.url, prefix=uuid.uuid4().hex, timeout=0.25, pubsub=True)
    seen: list[CircuitSnapshot] = []

    def wait_for(check: Callable[[CircuitSnapshot], bool]) -> CircuitSnapshot | None:
        deadline = time.monotonic() + HANG_LIMIT
        while time.monotonic() < deadline:
            for snapshot in list(seen):
                if check(snapshot):
                    return snapshot
            time.sleep(0.01)
        return None

    try:
        store.breaker_watch("svc", seen.append)
        assert wait_for(lambda s: s.version == 0)  # subscribed: the current circuit was delivered
        store.breaker_transition(
            "svc",
            Transition(
                expected_version=0,
                state=CircuitState.OPEN,
                reason="down",
                trips=1,
                break_duration=5.0,
                now=0.0,
            ),
        )
        assert wait_for(lambda s: s.version == 1)
        server.kill()
        time.sleep(0.3)  # the watcher notices and retries in the background
        server.start()  # empty: Redis counts the circuit's versions from 0 again
        seen.clear()
        # Resubscribed and resynced: the lost circuit is reported as a newer one, so a
        # breaker holding version 1 takes it.
        resynced = wait_for(lambda s: s.state is CircuitState.CLOSED)
        assert resynced is not None and resynced.version > 1
        # A transition made once it is back is pushed again, newer still.
        won, opened = store.breaker_transition(
            "svc",
            Transition(
                expected_version=resynced.version,
                state=CircuitState.OPEN,
                reason="down again",
                trips=1,
                break_duration=5.0,
                now=0.0,
            ),
        )
        assert won and opened.version > resynced.version
        assert wait_for(lambda s: s.version == opened.version and s.state is CircuitState.OPEN)
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed", "local"])
def test_policies_follow_on_store_failure_through_a_restart(server: RedisServer, mode: str) -> None:
    """The policies' configured behaviour while our Redis is down, and recovery after.

    (The failure modes are the policies' own; this checks them end to end over a
    real Redis that dies.) The policies' clock is fake: the guard's back-off between
    two attempts to reach the store is stepped over, not waited for.
    """
    store = RedisStore(server.url, prefix=uuid.uuid4().hex, timeout=0.25)
    clock = FakeClock()
    limiter = RateLimiter(
        "api", rate=1, per=100.0, burst=2, store=store, clock=clock, on_store_failure=mode
    )
    breaker = CircuitBreaker(
        "svc", failure_threshold=1, store=store, clock=clock, on_store_failure=mode
    )
    try:
        assert limiter.try_acquire()
        assert breaker.call(lambda: "ok") == "ok"
        server.kill()
        clock.advance(5.0)  # past the breaker's staleness: it must look at the store
        started = time.monotonic()
        if mode == "fail_closed":
            with pytest.raises(rs.StoreUnavailable):
                limiter.try_acquire()
        elif mode == "fail_open":
            assert limiter.try_acquire() and limiter.try_acquire()  # no limit while down
        else:
            assert limiter.try_acquire()  # a local bucket (full) takes over
            assert limiter.try_acquire()
            assert not limiter.try_acquire()
        try:
            breaker.call(lambda: "ok")
        except rs.StoreUnavailable:
            assert mode == "fail_closed"
        assert time.monotonic() - started < HANG_LIMIT
        server.start()  # empty: the shared bucket is full again
        clock.advance(5.0)  # past the guard's back-off
        assert limiter.try_acquire()  # the shared store again
        assert store.bucket_tokens("api", None, limiter._spec) < 2.0
        assert breaker.call(lambda: "ok") == "ok"
    finally:
        store.close()

"""Several processes share one rate limit and one breaker through SQLite and PostgreSQL.

Processes are spawned (a fresh interpreter each, as a worker pool would be) and
receive the store pickled: its settings travel, never a connection. They start
together on a barrier, then hammer the shared state with real time passing;
the assertions are invariants that hold whatever the scheduling:

* a rate limit grants at most ``burst + rate * elapsed`` in total;
* a half-open breaker admits at most ``half_open_calls`` probes in total.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import resilience as rs
from resilience._core.breaker import CircuitState
from resilience.storage.breakers import Transition

from .backends import require_postgres

PROCESSES = 4
RATE = 50.0  # tokens per second: low enough that even a loaded machine hits the limit
BURST = 20
HAMMER = 1.5  # seconds each process hammers for
HALF_OPEN_CALLS = 2

pytestmark = pytest.mark.backend


def _sqlite_store(tmp_path: Path) -> Any:
    from resilience.storage.sqlite import SQLiteStore

    return SQLiteStore(tmp_path / "shared.db", breaker_staleness=0.02)


def _postgres_store(tmp_path: Path) -> Any:
    from resilience.storage.postgres import PostgresStore

    return PostgresStore(require_postgres(), table="resilience_test", breaker_staleness=0.02)


STORES: dict[str, Callable[[Path], Any]] = {"sqlite": _sqlite_store, "postgres": _postgres_store}


def _run(target: Callable[..., None], *args: Any) -> list[Any]:
    """Run ``target(barrier, results, index, *args)`` in PROCESSES spawned processes."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    processes = [
        context.Process(target=target, args=(barrier, results, index, *args))
        for index in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    collected = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    failures = [item for item in collected if isinstance(item, str)]
    assert not failures, failures
    return collected


def _hammer_limit(barrier: Any, index: int, store: Any, name: str) -> tuple[float, float, int, int]:
    limiter = rs.RateLimiter(name, rate=RATE, per=1.0, burst=BURST, store=store)
    limiter.tokens()  # connect before the start line
    barrier.wait()
    start = time.time()
    granted = refused = 0
    while time.time() - start < HAMMER:
        if index == 0:  # one process reserves ahead (acquire waits up to 20 ms)
            try:
                limiter.acquire(timeout=0.02)
                granted += 1
            except rs.RateLimitExceeded:
                refused += 1
        elif limiter.try_acquire():
            granted += 1
        else:
            refused += 1
    return start, time.time(), granted, refused


def _probe(barrier: Any, store: Any, name: str) -> tuple[int, int]:
    breaker = rs.CircuitBreaker(
        name,
        failure_threshold=1,
        break_duration=60.0,
        half_open_calls=HALF_OPEN_CALLS,
        store=store,
    )
    admitted = rejected = 0

    def probe() -> None:
        nonlocal admitted
        admitted += 1
        time.sleep(0.3)  # long enough for every process to try meanwhile
        raise ConnectionError("still down")

    barrier.wait()
    deadline = time.time() + HAMMER
    while time.time() < deadline:
        try:
            breaker.call(probe)
        except rs.CircuitOpenError:
            rejected += 1
        except ConnectionError:
            pass
        time.sleep(0.002)
    return admitted, rejected


def _worker(
    barrier: Any, results: Any, index: int, store: Any, limit_name: str, circuit_name: str
) -> None:
    """Both scenarios in one process (spawning is the slow part of these tests)."""
    try:
        limit = _hammer_limit(barrier, index, store, limit_name)
        probes = _probe(barrier, store, circuit_name)
        results.put((limit, probes))
    except Exception as error:  # pragma: no cover - reported to the parent
        results.put(f"process {index}: {error!r}")


@pytest.fixture(scope="module", params=list(STORES))
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One run of PROCESSES processes per backend: (store, circuit name, results)."""
    store = STORES[request.param](tmp_path_factory.mktemp("mp"))
    limit_name, circuit_name = f"mp-{uuid.uuid4().hex}", f"mp-{uuid.uuid4().hex}"
    # The circuit is open; its break (on the store's clock) is over before the
    # processes get to it, after the rate-limit scenario.
    won, _ = store.breaker_transition(
        circuit_name,
        Transition(
            expected_version=0,
            state=CircuitState.OPEN,
            reason="test",
            trips=1,
            break_duration=0.5,
            now=time.monotonic(),
        ),
    )
    assert won
    return store, circuit_name, _run(_worker, store, limit_name, circuit_name)


def test_processes_never_exceed_the_rate_limit(run: Any) -> None:
    _, _, results = run
    starts, ends, granted, refused = zip(*(limit for limit, _ in results), strict=True)
    elapsed = max(ends) - min(starts)
    total = sum(granted)
    limit = BURST + RATE * (elapsed + 0.02)  # + the reservation horizon
    assert total <= limit + 1e-6, (total, limit)
    # And the limit was the bottleneck: the processes were refused, not merely slow.
    assert sum(refused) > 0, (granted, refused)
    assert total >= BURST, (total, granted)


def test_processes_admit_no_more_than_the_half_open_probes(run: Any) -> None:
    store, name, results = run
    probes = [p for _, p in results]
    admitted = sum(a for a, _ in probes)
    assert 1 <= admitted <= HALF_OPEN_CALLS, probes
    assert sum(r for _, r in probes) > 0
    # The failed probes re-opened the circuit, once, for the long break.
    final = store.breaker_load(name, time.monotonic())
    assert final.state is CircuitState.OPEN and final.break_remaining > 30

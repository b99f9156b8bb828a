"""PostgreSQL under real faults: a frozen backend, a killed probe holder, a cancelled task.

* Item 10 of issue 11: a server that stops answering while its host still
  acknowledges packets (here: its backend process stopped with ``SIGSTOP``)
  must not block a call past the store's timeout.
* Item 3: a half-open probe permit whose holder died (``SIGKILL``) or was
  cancelled before it could hand the permit back lapses after the lease, on
  the server's clock.

These tests wait in real time because the server's clock or a real freeze is
what they are about; each wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

import resilience as rs
from resilience._core.breaker import CircuitState
from resilience.storage.breakers import Transition
from resilience.storage.postgres import PostgresStore

from .backends import drop_postgres_tables, require_postgres

pytestmark = [
    pytest.mark.backend,
    pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals"),
]

TIMEOUT = 0.5
MARGIN = 1.0  # the client-side deadline is TIMEOUT plus at most this


@pytest.fixture
def dsn() -> str:
    return require_postgres()


def fresh() -> str:
    return f"fault-{uuid.uuid4().hex}"


@contextlib.contextmanager
def frozen(pids: list[int], thaw_after: float) -> Iterator[None]:
    """The backends stopped (SIGSTOP) until the block ends, or ``thaw_after`` seconds
    at most (so that code which would wait for the thaw cannot hang the suite)."""
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)

    def thaw() -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    timer = threading.Timer(thaw_after, thaw)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        thaw()


def test_a_sync_call_to_a_frozen_backend_fails_within_the_timeout(dsn: str) -> None:
    store = PostgresStore(dsn, table="resilience_test", timeout=TIMEOUT)
    name = fresh()
    try:
        assert store.breaker_load(name, 0.0).version == 0  # connected
        with frozen(store.backend_pids(), thaw_after=TIMEOUT + MARGIN + 3.0):
            began = time.monotonic()
            with pytest.raises(rs.StoreUnavailable) as caught:
                store.breaker_load(name, 0.0)
            took = time.monotonic() - began
        assert TIMEOUT <= took < TIMEOUT + MARGIN, took
        assert "no answer" in caught.value.reason
        # The cut connection was discarded: the next call gets a good one.
        assert store.breaker_load(name, 0.0).version == 0
    finally:
        store.close()


async def test_an_async_call_to_a_frozen_backend_fails_within_the_timeout(dsn: str) -> None:
    store = PostgresStore(dsn, table="resilience_test", timeout=TIMEOUT)
    name = fresh()
    try:
        assert (await store.abreaker_load(name, 0.0)).version == 0
        with frozen(store.backend_pids(), thaw_after=TIMEOUT + MARGIN + 3.0):
            began = time.monotonic()
            with pytest.raises(rs.StoreUnavailable) as caught:
                await store.abreaker_load(name, 0.0)
            took = time.monotonic() - began
        assert TIMEOUT <= took < TIMEOUT + MARGIN, took
        assert "no answer" in caught.value.reason
        assert (await store.abreaker_load(name, 0.0)).version == 0  # not the cut one
    finally:
        await store.aclose()


def test_a_limiter_on_a_frozen_backend_applies_its_failure_mode_in_time(dsn: str) -> None:
    store = PostgresStore(dsn, table="resilience_test", timeout=TIMEOUT)
    limiter = rs.RateLimiter(
        fresh(), rate=1, per=60.0, burst=2, store=store, on_store_failure="local"
    )
    try:
        assert limiter.try_acquire()
        with frozen(store.backend_pids(), thaw_after=TIMEOUT + MARGIN + 3.0):
            began = time.monotonic()
            assert limiter.try_acquire()  # answered from a local bucket (full: 2 tokens)
            assert time.monotonic() - began < TIMEOUT + MARGIN
            assert [limiter.try_acquire() for _ in range(2)] == [True, False]  # limited
    finally:
        store.close()


# -- probe permits lapse (item 3) ----------------------------------------------------------------

LEASE = 1.0


def _half_open(store: PostgresStore, name: str) -> int:
    """Put ``name``'s circuit in HALF_OPEN on the server; returns its version."""
    won, _ = store.breaker_transition(
        name,
        Transition(
            expected_version=0,
            state=CircuitState.OPEN,
            reason="boom",
            trips=1,
            break_duration=1.0,
            now=0.0,
        ),
    )
    assert won
    won, snapshot = store.breaker_transition(
        name,
        Transition(
            expected_version=1,
            state=CircuitState.HALF_OPEN,
            reason="probe",
            trips=1,
            break_duration=0.0,
            now=0.0,
        ),
    )
    assert won and snapshot.version == 2
    return snapshot.version


_HOLDER = """
import sys, time
from resilience.storage.postgres import PostgresStore

store = PostgresStore(sys.argv[1], table="resilience_test", probe_lease=float(sys.argv[3]))
print(store.breaker_acquire_probe(sys.argv[2], 2, 1, None, 0.0), flush=True)
time.sleep(600)
"""


def test_a_permit_held_by_a_killed_process_lapses(dsn: str) -> None:
    store = PostgresStore(dsn, table="resilience_test", probe_lease=LEASE)
    name = fresh()
    _half_open(store, name)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, dsn, name, str(LEASE)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "True"  # it holds the only permit
        granted_at = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        breaker = rs.CircuitBreaker(name, store=store, half_open_calls=1)
        with pytest.raises(rs.CircuitOpenError):
            breaker.call(int)  # the dead process's permit is still out
        while True:
            try:
                breaker.call(int)
                break
            except rs.CircuitOpenError:
                assert time.monotonic() - granted_at < LEASE + 5.0, "the permit never lapsed"
                time.sleep(LEASE / 10)
        assert time.monotonic() - granted_at >= LEASE * 0.9  # not before the lease
        assert breaker.state is rs.CircuitState.CLOSED  # the probe ran and closed it
    finally:
        if holder.poll() is None:
            holder.kill()
        store.close()


async def test_a_permit_taken_by_a_task_cancelled_mid_call_lapses(dsn: str) -> None:
    """The server grants the permit; the task is cancelled before it reads the answer."""
    store = PostgresStore(dsn, table="resilience_test", probe_lease=LEASE)
    name = fresh()
    version = _half_open(store, name)
    try:
        assert (await store.abreaker_load(name, 0.0)).version == version  # connected
        with psycopg.connect(dsn) as blocker:  # hold the circuit's row: the UPDATE waits
            blocker.execute(
                "SELECT 1 FROM resilience_test_circuits WHERE name = %s FOR UPDATE", (name,)
            )
            task = asyncio.create_task(store.abreaker_acquire_probe(name, version, 1, None, 0.0))
            while not _waiting_on_a_lock(dsn):  # noqa: ASYNC110 - the server's state
                await asyncio.sleep(0.005)
            # From here on the event loop is blocked: the task cannot read its answer.
            blocker.commit()
            while _probes_out(dsn, name) != 1:  # the server granted the permit
                time.sleep(0.005)  # noqa: ASYNC251 - blocking the loop is the point
            granted_at = time.monotonic()
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not await store.abreaker_acquire_probe(name, version, 1, None, 0.0)
        while not await store.abreaker_acquire_probe(name, version, 1, None, 0.0):
            assert time.monotonic() - granted_at < LEASE + 5.0, "the permit never lapsed"
            await asyncio.sleep(LEASE / 10)
        assert time.monotonic() - granted_at >= LEASE * 0.9
    finally:
        await store.aclose()


def _waiting_on_a_lock(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as watcher:
        row = watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'resilience' "
            "AND wait_event_type = 'Lock'"
        ).fetchone()
        return row is not None and row[0] > 0


def _probes_out(dsn: str, name: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as watcher:
        row = watcher.execute(
            "SELECT probes_out FROM resilience_test_circuits WHERE name = %s", (name,)
        ).fetchone()
        return -1 if row is None else int(row[0])


def test_a_breaker_lease_overrides_the_stores(dsn: str) -> None:
    store = PostgresStore(dsn, table="resilience_test", probe_lease=600.0)
    name = fresh()
    version = _half_open(store, name)
    try:
        assert store.breaker_acquire_probe(name, version, 1, 0.2, 0.0)
        assert not store.breaker_acquire_probe(name, version, 1, None, 0.0)
        time.sleep(0.3)  # the server's clock must pass the 0.2 s lease
        assert store.breaker_acquire_probe(name, version, 1, None, 0.0)  # lapsed: granted
        assert not store.breaker_acquire_probe(name, version, 1, 0.2, 0.0)  # 600 s now
    finally:
        store.close()


@pytest.mark.parametrize("lease", [0, -1.0, float("inf"), float("nan"), "5", True, None])
def test_probe_lease_is_validated(lease: object) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        PostgresStore("postgresql://app@db.invalid/app", probe_lease=lease)  # type: ignore[arg-type]
    assert caught.value.fields == ("probe_lease",)


def test_an_existing_table_gains_the_lease_column(dsn: str) -> None:
    """A table made by an earlier version (no probes_lapse_at) is migrated in place."""
    table = f"resilience_mig_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            psycopg.sql.SQL(
                "CREATE TABLE {} (name text PRIMARY KEY, state text NOT NULL, "
                "version bigint NOT NULL, trips integer NOT NULL, reason text NOT NULL, "
                "open_until double precision NOT NULL, probes_out integer NOT NULL, "
                "probe_successes integer NOT NULL)"
            ).format(psycopg.sql.Identifier(f"{table}_circuits"))
        )
        admin.execute(
            psycopg.sql.SQL(
                "INSERT INTO {} VALUES ('old', 'half_open', 7, 1, 'from before', 0, 1, 0)"
            ).format(psycopg.sql.Identifier(f"{table}_circuits"))
        )
    store = PostgresStore(dsn, table=table, probe_lease=LEASE)
    try:
        snapshot = store.breaker_load("old", 0.0)
        assert (snapshot.state, snapshot.version, snapshot.reason) == (
            CircuitState.HALF_OPEN,
            7,
            "from before",
        )
        # The permit out from before has no lease on record: it has lapsed.
        assert store.breaker_acquire_probe("old", 7, 1, None, 0.0)
        assert not store.breaker_acquire_probe("old", 7, 1, None, 0.0)
    finally:
        store.close()
        drop_postgres_tables(dsn, table)

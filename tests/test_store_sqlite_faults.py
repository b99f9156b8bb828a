"""SQLite under faults from outside: another process's lock, a killed process, a deleted file.

Every test drives a real second process (or the file system) against a store
whose own clock is a :class:`FakeClock` far from zero.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import resilience as rs
from resilience._core.breaker import CircuitState
from resilience._core.bucket import BucketSpec
from resilience.storage import sqlite as sqlite_module
from resilience.storage.breakers import Transition
from resilience.storage.buckets import BucketRequest
from resilience.storage.sqlite import SQLiteStore
from resilience.testing import FakeClock

FAR = 1_000_000.0
SPEC = BucketSpec.of(rate=1, per=1.0, burst=2)
BIG = BucketSpec.of(rate=1, per=1.0, burst=100)

# Holds SQLite's write lock on the file until killed.
LOCKER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""

# Takes the only probe permit of circuit "c" (half-open at version 2), then hangs.
HOLDER = """
import sys, time
from resilience.storage.sqlite import SQLiteStore
from resilience.testing import FakeClock
store = SQLiteStore(sys.argv[1], clock=FakeClock(float(sys.argv[2])), probe_lease=30.0)
print(store.breaker_acquire_probe("c", 2, 1, None, 0.0), flush=True)
time.sleep(120)
"""


@contextmanager
def another_process(code: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


# -- (9) another process holds the file lock ----------------------------------------------


async def test_async_calls_end_at_the_timeout_and_leave_to_thread_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path, timeout=0.5, clock=FakeClock(FAR))
    one = [BucketRequest("l", None, 1, BIG)]
    store.bucket_count()  # the file exists, in WAL mode

    async def timed() -> tuple[float, BaseException | None]:
        started = time.monotonic()
        try:
            await store.abucket_take(one)
        except rs.StoreUnavailable as error:
            return time.monotonic() - started, error
        return time.monotonic() - started, None

    with another_process(LOCKER, str(path)) as locker:
        assert first_line(locker) == "locked"
        # More callers than the default executor has threads, all stuck on the lock.
        calls = [asyncio.ensure_future(timed()) for _ in range(40)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        assert await asyncio.to_thread(lambda: 1) == 1
        lag = time.monotonic() - started
        results = await asyncio.gather(*calls)
    assert lag < 0.25, lag  # the application's own to_thread work is not starved
    assert all(isinstance(error, rs.StoreUnavailable) for _, error in results), results
    durations = sorted(duration for duration, _ in results)
    assert durations[-1] < 1.5, durations  # the whole call, queue included, ends by the timeout
    assert durations[0] > 0.4, durations
    # Calls dropped unrun never ran later: nothing was taken, and the store works again.
    await asyncio.sleep(0.1)
    assert store.bucket_tokens("l", None, BIG) == 100.0
    assert (await store.abucket_take(one)).granted
    assert store.bucket_tokens("l", None, BIG) == 99.0
    store.close()


def test_sync_calls_share_one_deadline_for_both_locks(tmp_path: Path) -> None:
    """A thread that waited for the store's lock has only the rest of its timeout
    left for SQLite's busy wait."""
    import threading

    path = tmp_path / "s.db"
    store = SQLiteStore(path, timeout=0.6, clock=FakeClock(FAR))
    one = [BucketRequest("l", None, 1, BIG)]
    store.bucket_count()
    durations: list[float] = []

    def call() -> None:
        started = time.monotonic()
        with pytest.raises(rs.StoreUnavailable):
            store.bucket_take(one)
        durations.append(time.monotonic() - started)

    with another_process(LOCKER, str(path)) as locker:
        assert first_line(locker) == "locked"
        first = threading.Thread(target=call)
        first.start()
        time.sleep(0.1)  # the first thread is in SQLite's busy wait, holding the store lock
        second = threading.Thread(target=call)
        second.start()
        first.join()
        second.join()
    # Not 0.5 s for the store lock and then 0.6 s more for the file lock.
    assert max(durations) < 0.6 + 0.25, durations
    store.close()


async def test_async_twins_run_on_the_stores_own_worker(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", clock=FakeClock(FAR))
    names: set[str] = set()

    def spy(connection: sqlite3.Connection, now: float) -> int:
        import threading

        names.add(threading.current_thread().name)
        return 1

    assert await store._arun(store._read, spy) == 1
    assert await store.abucket_tokens("l", None, SPEC) == 2.0
    assert names and all(name.startswith("resilience-sqlite") for name in names)
    store.close()  # the worker goes with the connection; the next call starts another
    assert (await store.abucket_take([BucketRequest("l", None, 1, SPEC)])).granted
    store.close()


# -- (3) a process killed while it holds the only probe permit ------------------------------


def test_a_permit_held_by_a_killed_process_lapses(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    clock = FakeClock(FAR)
    store = SQLiteStore(path, clock=clock, probe_lease=30.0, breaker_staleness=0.0)
    store.breaker_transition(
        "c",
        Transition(
            expected_version=0,
            state=CircuitState.OPEN,
            reason="down",
            trips=1,
            break_duration=5.0,
            now=0.0,
        ),
    )
    store.breaker_transition(
        "c",
        Transition(
            expected_version=1,
            state=CircuitState.HALF_OPEN,
            reason="probe",
            trips=1,
            break_duration=0.0,
            now=0.0,
        ),
    )
    with another_process(HOLDER, str(path), repr(clock.now())) as holder:
        assert first_line(holder) == "True"  # it holds the only permit
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    assert holder.returncode == -signal.SIGKILL
    breaker = rs.CircuitBreaker(
        "c", failure_threshold=1, half_open_calls=1, store=store, clock=clock
    )
    with pytest.raises(rs.CircuitOpenError):
        breaker.call(int)  # the dead process's permit is still out
    clock.advance(29.0)
    assert not store.breaker_acquire_probe("c", 2, 1, None, 0.0)
    clock.advance(1.0)  # the lease is over
    assert breaker.call(lambda: "up") == "up"  # admitted as the probe, and it closes
    assert breaker.state is rs.CircuitState.CLOSED
    assert store.breaker_load("c", 0.0).state is CircuitState.CLOSED
    store.close()


# -- (14) the file is deleted or replaced while in use ---------------------------------------


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def test_a_deleted_file_fails_loudly_instead_of_splitting_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    clock = FakeClock(FAR)
    old, twin = SQLiteStore(path, clock=clock), SQLiteStore(path, clock=clock)
    one = [BucketRequest("l", None, 1, SPEC)]
    assert old.bucket_take(one).granted and twin.bucket_take(one).granted  # burst spent
    _remove_database(path)
    with pytest.raises(rs.StoreUnavailable) as caught:
        old.bucket_take(one)  # not a silent write to the unlinked file
    assert "deleted" in caught.value.reason and str(path) in caught.value.reason
    fresh = SQLiteStore(path, clock=clock)
    assert fresh.bucket_take(one).granted  # a new store starts a new file...
    with pytest.raises(rs.StoreUnavailable) as caught:
        twin.bucket_take(one)  # ...and the other old store says its file was replaced
    assert "replaced" in caught.value.reason
    # Each old store then opens the file now at the path: one shared limit again.
    assert old.bucket_take(one).granted
    assert not twin.bucket_take(one).granted
    assert not fresh.bucket_take(one).granted
    for store in (old, twin, fresh):
        store.close()


def test_a_replaced_file_is_noticed_by_policies_and_readers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "FILE_CHECK_INTERVAL", 0.0)
    path = tmp_path / "s.db"
    clock = FakeClock(FAR)
    store = SQLiteStore(path, clock=clock)

    def replace() -> None:
        other = tmp_path / "other.db"
        maker = SQLiteStore(other, clock=clock)
        maker.bucket_count()  # another database file...
        maker.close()
        _remove_database(path)
        os.replace(other, path)  # ...moved over the path

    limiter = rs.RateLimiter("l", rate=1, burst=2, store=store, clock=clock)
    assert limiter.try_acquire()
    replace()
    with pytest.raises(rs.StoreUnavailable, match="replaced"):
        limiter.try_acquire()  # an outage like any other, here fail_closed
    assert store.breaker_load("c", 0.0).version == 0  # the file now at the path
    replace()
    with pytest.raises(rs.StoreUnavailable, match="replaced"):
        store.breaker_load("c", 0.0)  # reads notice too
    store.close()


def test_the_file_check_is_cheap_on_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = sqlite_module._identity_of

    def counted(file: str) -> tuple[int, int] | None:
        calls.append(file)
        return real(file)

    monkeypatch.setattr(sqlite_module, "_identity_of", counted)
    store = SQLiteStore(tmp_path / "s.db", clock=FakeClock(FAR))
    store.bucket_count()
    opened = len(calls)
    for _ in range(50):
        store.bucket_tokens("l", None, SPEC)
    assert len(calls) - opened <= 1  # reads check at most every FILE_CHECK_INTERVAL
    store.bucket_take([BucketRequest("l", None, 1, SPEC)])
    assert len(calls) - opened >= 1  # every write checks
    store.close()

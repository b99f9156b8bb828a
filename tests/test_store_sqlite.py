"""SQLite specifics: WAL, lock timeouts, idle-row sweeping, pickling, fork safety."""

from __future__ import annotations

import pickle
import sqlite3
import time
from pathlib import Path

import pytest

import resilience as rs
from resilience._bucket import BucketSpec
from resilience.storage import sqlite as sqlite_module
from resilience.storage.buckets import BucketRequest
from resilience.storage.sqlite import SQLiteStore
from resilience.testing import FakeClock

SPEC = BucketSpec.of(rate=1, per=1.0, burst=2)


def test_the_file_uses_wal_and_tables_appear_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    assert not path.exists()  # nothing happens before the first call
    assert store.bucket_count() == 0
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
    assert {"resilience_buckets", "resilience_circuits"} <= tables
    store.close()


def test_a_locked_file_is_unavailable_within_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path, timeout=0.2)
    store.bucket_count()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    started = time.monotonic()
    with pytest.raises(rs.StoreUnavailable) as caught:
        store.bucket_take([BucketRequest("l", None, 1, SPEC)])
    assert time.monotonic() - started < 2.0
    assert "locked" in caught.value.reason
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    blocker.execute("ROLLBACK")
    assert store.bucket_take([BucketRequest("l", None, 1, SPEC)]).granted  # and it recovers
    assert store.bucket_tokens("l", None, SPEC) > 0.99  # reads never wait for writers
    blocker.close()
    store.close()


def test_idle_buckets_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "SWEEP_EVERY", 8)
    monkeypatch.setattr(sqlite_module, "SWEEP_ROWS", 64)
    clock = FakeClock()
    store = SQLiteStore(tmp_path / "s.db", clock=clock)
    for key in range(100):
        store.bucket_take([BucketRequest("l", str(key), 1, SPEC)])
    assert store.bucket_count("l") == 100
    clock.advance(10.0)  # every bucket is full again
    for key in range(100, 140):
        store.bucket_take([BucketRequest("l", str(key), 1, SPEC)])
    assert store.bucket_count("l") < 100  # the old ones went as new ones came
    assert store.bucket_tokens("l", "3", SPEC) == 2.0  # a swept bucket is full
    store.close()


def test_a_store_pickles_without_its_connection(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", timeout=1.5, breaker_staleness=0.25)
    assert store.bucket_take([BucketRequest("l", None, 1, SPEC)]).granted
    copy = pickle.loads(pickle.dumps(store))
    assert (copy.path, copy.timeout, copy.breaker_staleness) == (store.path, 1.5, 0.25)
    assert copy.bucket_tokens("l", None, SPEC) < 2.0  # the same file
    assert "s.db" in repr(copy)
    copy.close()
    store.close()


def test_a_breaker_polls_the_file(tmp_path: Path) -> None:
    clock = FakeClock()
    here = rs.CircuitBreaker(
        "c", failure_threshold=1, store=SQLiteStore(tmp_path / "s.db", clock=clock), clock=clock
    )
    there = rs.CircuitBreaker(
        "c", failure_threshold=1, store=SQLiteStore(tmp_path / "s.db", clock=clock), clock=clock
    )
    there.isolate()
    assert here.call(int) == 0  # its cached copy is fresh enough
    clock.advance(1.0)  # the default staleness
    with pytest.raises(rs.CircuitOpenError):
        here.call(int)
